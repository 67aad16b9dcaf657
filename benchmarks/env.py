"""What a benchmark number was measured on: machine, versions, git commit.

Every result file embeds :func:`environment` so a table assembled from files
written at different times (``--resume``) can show when they disagree.
"""
import datetime
import os
import os.path as osp
import platform
import subprocess
import sys
from typing import Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from mmprune.costs.latency_backends import cpu_name  # noqa: E402

#: distributions whose versions decide the numbers (None when not installed;
#: read from the installed metadata: torch_pruning 1.6.1's ``__version__``
#: still says 1.6.0)
PACKAGES = ('torch', 'mmengine', 'mmcv', 'mmdet', 'mmprune', 'torch-pruning',
            'onnx', 'onnxruntime', 'numpy', 'matplotlib')


def _git(*args: str) -> Optional[str]:
    """Output of a read-only git command in the repository, or None."""
    try:
        out = subprocess.run(['git', *args],
                             cwd=ROOT,
                             capture_output=True,
                             text=True,
                             timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info() -> dict:
    """``commit`` (HEAD), ``dirty`` (uncommitted changes to tracked files:
    the numbers may not be reproducible from the commit alone)."""
    status = _git('status', '--porcelain', '--untracked-files=no')
    return dict(
        commit=_git('rev-parse', 'HEAD'),
        dirty=None if status is None else bool(status))


def _memory_gib() -> Optional[float]:
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemTotal:'):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {'python': sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine(device: str = 'cpu') -> dict:
    import torch
    rec = dict(
        platform=platform.platform(),
        cpu=cpu_name(),
        cpus=os.cpu_count(),
        memory_gib=_memory_gib(),
        hostname=platform.node(),
        device=device,
        gpu=None)
    if device == 'cuda' and torch.cuda.is_available():
        rec['gpu'] = torch.cuda.get_device_name(0)
        rec['cuda'] = torch.version.cuda
    return rec


def environment(device: str = 'cpu') -> dict:
    """Machine, versions, git commit and the time, JSON-safe."""
    return dict(
        machine=machine(device),
        versions=versions(),
        git=git_info(),
        time=datetime.datetime.now().astimezone().isoformat(
            timespec='seconds'))
