# mmprune developer entry points. On a fresh machine `make demo` / `make test` do
# everything: `setup` builds .venv from requirements/pins.txt (the first run compiles
# mmcv once, ~15 min on 2 cores; the wheel is cached in ~/.cache/mmprune).

VENV        ?= .venv
PYTHON      ?= $(VENV)/bin/python
PYTEST_ARGS ?= -q -x --durations=15

.PHONY: setup lint test demo bench clean distclean

setup:
	bash tools/setup_env.sh

# One intra-op thread: the test models are small, and on a busy 2-core machine
# torch's second thread spins against other processes (measured: a YOLOX-tiny
# training test took 76 s with 2 threads under load, 10 s with one).
# flake8 + isort + yapf with OpenMMLab's conventions (setup.cfg); `make test`
# runs it first. Fix formatting with: isort $(LINT_PATHS) && yapf -r -i $(LINT_PATHS)
LINT_PATHS  ?= mmprune tools tests benchmarks configs setup.py
lint: setup
	$(PYTHON) -m flake8 $(LINT_PATHS)
	$(PYTHON) -m isort --check-only --diff $(LINT_PATHS)
	$(PYTHON) -m yapf -r --diff $(LINT_PATHS)

test: setup lint
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest tests $(PYTEST_ARGS)

demo: setup
	$(PYTHON) tools/demo.py

# The benchmark (benchmarks/run.py): by default the `session` preset, the
# committed accuracy numbers (trained references + protocol 'trained', 3 seeds
# at 50 % FLOPs; ~2.5 h on 2 cores, plan printed at the start). Bench-only
# dependencies (requirements/bench.txt: Torch-Pruning for the peers) are
# installed into the venv first, with --no-deps so they never pull another
# torch. Pass options through BENCH_ARGS, e.g. BENCH_ARGS="--resume" after an
# interruption, BENCH_ARGS="--preset quick" (from scratch + speed + tools) or
# BENCH_ARGS="--preset full --device cuda".
bench:
	@if [ -f benchmarks/run.py ]; then \
		$(MAKE) --no-print-directory setup && \
		$(PYTHON) -m pip install --no-deps --quiet -r requirements/bench.txt && \
			$(PYTHON) benchmarks/run.py $(BENCH_ARGS); \
	else \
		echo "bench: benchmarks/run.py is not there yet; nothing to run."; \
	fi

# Build outputs and caches; keeps .venv and the generated data.
clean:
	rm -rf work_dirs .pytest_cache build *.egg-info .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Also the environment and the generated synthetic dataset (the mmcv wheel cache in
# ~/.cache/mmprune is kept, so the next `make setup` takes a couple of minutes).
distclean: clean
	rm -rf $(VENV) data/synth
