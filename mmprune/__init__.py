"""mmprune: detection-focused channel pruning for MMDetection 3.x.

``import mmprune`` (or ``custom_imports = dict(imports=['mmprune'])`` in a
config) registers every hook, model and component into mmdet's registries and
makes mmengine checkpoints loadable under torch>=2.6 (see
:mod:`mmprune.compat`).
"""
from . import compat  # noqa: F401  (registers torch.load safe globals)
from . import methods  # noqa: F401  (the four presets)
from . import (  # noqa: F401  (register); noqa: F401  (mmdet registries)
    allocators, criteria, hooks, models, regularizers, runtime)
from .version import __version__

__all__ = ['__version__']
