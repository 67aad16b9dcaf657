"""The pruned structure as versioned, JSON-safe data.

It travels in two places, written together:

* ``checkpoint['meta']['mmprune']`` (what mmengine's runner sees: resume,
  ``load_from``, ``tools/test.py``);
* a persistent uint8 buffer ``mmprune_structure`` on the detector, so the
  state dict alone carries it (``DetInferencer`` loads only the state dict;
  :mod:`mmprune.models.prunable_detector` replays it from there).

Both hold ``{'version', 'trace_size', 'plans': [PruningPlan.to_dict()...]}``
plus, in the checkpoint meta only, the hook's training ``state``. Nothing is
unpickled: the record is parsed from JSON and schema-checked here.
"""
import json
from typing import List, Tuple

import torch

from .pruning_plan import PruningPlan

META_KEY = 'mmprune'
META_VERSION = 1
BUFFER = 'mmprune_structure'


class StructureError(ValueError):
    """A structure record is malformed or does not fit the model."""


def make_meta(plans: List[PruningPlan],
              trace_size: Tuple[int, int],
              state: dict = None) -> dict:
    meta = dict(
        version=META_VERSION,
        trace_size=[int(s) for s in trace_size],
        plans=[p.to_dict() for p in plans])
    if state is not None:
        json.dumps(state)  # must be JSON-safe: fail at save time, not load
        meta['state'] = state
    return meta


def read_meta(meta) -> Tuple[List[PruningPlan], Tuple[int, int], dict]:
    """Validate a record; return (plans, trace size, training state)."""
    if not isinstance(meta, dict):
        raise StructureError(f'mmprune structure record must be a dict, got '
                             f'{type(meta).__name__}')
    if meta.get('version') != META_VERSION:
        raise StructureError(f'unsupported mmprune structure version '
                             f'{meta.get("version")!r} (this mmprune reads '
                             f'version {META_VERSION})')
    size = meta.get('trace_size')
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(s, int) and 32 <= s <= 4096 for s in size)):
        raise StructureError(f'mmprune structure: bad trace_size {size!r}')
    plans = meta.get('plans')
    if not isinstance(plans, list):
        raise StructureError('mmprune structure: "plans" must be a list')
    try:
        parsed = [PruningPlan.from_dict(p) for p in plans]
    except ValueError as e:
        raise StructureError(f'mmprune structure: {e}') from None
    state = meta.get('state', {})
    if not isinstance(state, dict):
        raise StructureError('mmprune structure: "state" must be a dict')
    return parsed, (size[0], size[1]), state


def encode(meta: dict) -> torch.Tensor:
    """(L,) uint8 tensor of the record's JSON (without training state)."""
    meta = {k: v for k, v in meta.items() if k != 'state'}
    data = json.dumps(meta, sort_keys=True).encode('utf-8')
    return torch.tensor(list(data), dtype=torch.uint8)


def decode(t: torch.Tensor) -> dict:
    try:
        return json.loads(
            bytes(t.detach().cpu().to(torch.uint8).tolist()).decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StructureError(f'{BUFFER} buffer is not valid JSON: {e}') \
            from None
