"""The four methods as named presets: ``get_method('acp_tp')``.

Each preset (:class:`~mmprune.methods.preset.MethodPreset`) is plain data
a hook consumes; see each module's docstring for the paper and the
decisions marked "our choice".
"""
from .. import allocators, criteria, regularizers  # noqa: F401 (register)
from .acp_tp import ACPTP
from .bpc import BPC
from .fcp import FCP
from .gcp_frs import GCPFRS
from .preset import MethodPreset, filter_groups

METHODS = {p.name: p for p in (ACPTP, BPC, FCP, GCPFRS)}


def get_method(name: str, family: str = None) -> MethodPreset:
    """The preset called ``name`` (case, ``-`` and ``_`` ignored:
    ``'ACP-TP'``, ``'acp_tp'`` and ``'acptp'`` all work), optionally with
    the schedule of ``family``. Returns an independent copy."""
    import copy
    if not isinstance(name, str):
        raise ValueError(f'method name must be a str, got {name!r}')
    key = name.lower().replace('-', '').replace('_', '')
    for preset in METHODS.values():
        if preset.name.replace('_', '') == key:
            preset = copy.deepcopy(preset)
            return preset.for_family(family) if family else preset
    raise ValueError(f'unknown pruning method {name!r}; valid names: '
                     f'{sorted(METHODS)}')


__all__ = [
    'MethodPreset', 'filter_groups', 'get_method', 'METHODS', 'ACPTP', 'BPC',
    'FCP', 'GCPFRS'
]
