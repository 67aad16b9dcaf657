#!/usr/bin/env bash
# Create/refresh the project's .venv from requirements/pins.txt (the one place the
# stack is pinned). Idempotent: a stamp holding the pins' hash skips a finished set-up.
#
#   bash tools/setup_env.sh            # CPU (default)
#   MMPRUNE_CACHE=/some/dir bash ...   # where the built mmcv wheel is cached
#
# The mmcv 2.1.0 sdist is compiled once with ops (~15 min on 2 cores) and the wheel is
# cached outside the checkout, so a second set-up on the same machine takes < 2 min.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PINS="$ROOT/requirements/pins.txt"
VENV="${MMPRUNE_VENV:-$ROOT/.venv}"
CACHE="${MMPRUNE_CACHE:-$HOME/.cache/mmprune}"
PY_BASE="${PYTHON:-python3}"

pin() {  # pin NAME -> NAME==VERSION from the pins file
  local line
  line="$(grep -iE "^$1==" "$PINS" | head -n1)"
  [ -n "$line" ] || { echo "setup_env: no pin for '$1' in $PINS" >&2; exit 2; }
  echo "$line"
}

HASH="$( (cat "$PINS"; cat "$ROOT/setup.py") | sha256sum | cut -c1-16)"
STAMP="$VENV/.mmprune-setup-$HASH"
if [ -f "$STAMP" ]; then
  exit 0
fi

echo "[setup_env] creating/refreshing $VENV"
[ -x "$VENV/bin/python" ] || "$PY_BASE" -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# 1. torch first and alone, from the local CPU wheel, so nothing later resolves another.
"${PIP[@]}" "$(pin torch)" "$(pin numpy)"
"${PIP[@]}" "setuptools<70" wheel ninja packaging

# 2. mmcv with ops: build once, cache the wheel.
MMCV_PIN="$(pin mmcv)"
MMCV_VER="${MMCV_PIN#*==}"
TORCH_TAG="$("$PY" -c 'import torch;print(torch.__version__.replace("+","_"))')"
WHEELS="$CACHE/wheels/torch-$TORCH_TAG"
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/mmcv-"$MMCV_VER"-*.whl >/dev/null 2>&1; then
  echo "[setup_env] building mmcv $MMCV_VER with ops (about 15 minutes on 2 cores)"
  TMPW="$(mktemp -d "$CACHE/build.XXXXXX")"
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PY" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps \
    -w "$TMPW" "$MMCV_PIN"
  # atomic publish: a half-built wheel never lands in the cache
  mv "$TMPW"/mmcv-*.whl "$WHEELS"/
  rm -rf "$TMPW"
fi
"${PIP[@]}" "$(pin opencv-python)" "$(pin mmengine)" addict yapf Pillow pyyaml
"${PIP[@]}" --no-deps "$WHEELS"/mmcv-"$MMCV_VER"-*.whl

# 3. mmdet and the rest. The torch pin is repeated so the resolver can never swap it.
"${PIP[@]}" "$(pin torch)" "$(pin numpy)" "$(pin mmdet)" "$(pin pycocotools)" \
  "$(pin pytest)" "$(pin hypothesis)" "$(pin onnx)" "$(pin onnxruntime)" \
  "$(pin matplotlib)" "$(pin tensorboard)" scipy shapely terminaltables tqdm \
  "$(pin flake8)" "$(pin isort)" "$(pin yapf)" \
  "$(pin setuptools)"
"${PIP[@]}" --no-deps -e "$ROOT"

if "$PY" -m pip show torchvision >/dev/null 2>&1; then
  echo "setup_env: torchvision got installed; it breaks imports here. Remove it." >&2
  exit 3
fi
"$PY" -c "import torch, mmcv, mmcv.ops, mmdet, mmengine, mmprune; print('[setup_env] ok: torch', torch.__version__, 'mmcv', mmcv.__version__, 'mmdet', mmdet.__version__)"
rm -f "$VENV"/.mmprune-setup-*
touch "$STAMP"
