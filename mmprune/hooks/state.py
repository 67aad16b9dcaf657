"""The hook's training state: what a checkpoint must carry for a resumed
run to continue exactly (JSON-safe, stored in ``meta['mmprune']``)."""
import numpy as np

from ..costs.latency_table import LatencyTable
from ..structures import PruningPlan, StructureError


def new_state() -> dict:
    """A run before any event."""
    return dict(
        events_done=0,
        dense_cost=None,
        dense_params=None,
        pending=None,
        latency=None,
        latency_grid=None,
        blend=None,
        search=None)


def check_state(state: dict) -> dict:
    """Schema-check the hook state stored in a checkpoint (it decides what
    the resumed run does, so a bad value must not surface later as a
    TypeError in the middle of training)."""

    def bad(key, want):
        raise StructureError(f'mmprune training state: {key!r} must be '
                             f'{want}, got {state[key]!r}')

    if 'events_done' in state:
        v = state['events_done']
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            bad('events_done', 'an int >= 0')
    for key in ('dense_cost', 'dense_params'):
        v = state.get(key)
        if v is not None and (isinstance(v, bool)
                              or not isinstance(v, (int, float))
                              or not np.isfinite(v) or v <= 0):
            bad(key, 'a finite number > 0 or null')
    if state.get('pending') is not None:
        try:
            PruningPlan.from_dict(state['pending'])
        except ValueError as e:
            raise StructureError(f'mmprune training state: pending '
                                 f'selection: {e}') from e
    if state.get('latency') is not None:
        try:
            LatencyTable.from_dict(state['latency'])
        except (ValueError, KeyError, TypeError) as e:
            raise StructureError(f'mmprune training state: {e}') from e
    if state.get('latency_grid') is not None:
        from ..costs.latency_grid import LatencyGrid
        try:
            LatencyGrid.from_dict(state['latency_grid'],
                                  'mmprune training state: latency_grid')
        except (ValueError, KeyError, TypeError) as e:
            raise StructureError(str(e)) from e
    for key in ('blend', 'search'):
        if state.get(key) is not None and not isinstance(state[key], dict):
            bad(key, 'a dict or null')
    blend = state.get('blend')
    if blend is not None and not (isinstance(blend.get('criteria'), dict)
                                  and isinstance(blend.get('alphas'), dict)):
        bad('blend', "a BlendedCriterion's kwargs (criteria, alphas)")
    regs = state.get('regularizers', [])
    if not isinstance(regs, list) or not all(
            isinstance(r, dict) for r in regs):
        bad('regularizers', 'a list of dicts')
    return state
