"""The runner's structure record: written at each cut, replayed on resume.

:func:`record_runner` stores the plans applied so far in the model's (and
the EMA copy's) structure buffer, which checkpoints carry.

The mirror of :func:`mmprune.runtime.rebind.prune_runner`: mmengine builds
the dense model, the optimizer on its parameters and the EMA copy from the
config, then loads a checkpoint (``--resume``, ``load_from``) whose weights
have the pruned shapes. Before those weights load (``after_load_checkpoint``
runs first), the plans stored in ``checkpoint['meta']['mmprune']`` are
replayed on the model and the EMA copy, the optimizer is pointed at the new
parameters (its state, loaded after this, is already pruned), and DDP is
re-wrapped.
"""
from typing import Callable, Optional, Tuple

import torch

from ..structures import META_KEY, PruningPlan, StructureError, read_meta
from ..structures.model_record import model_plans, record_plans
from .rebind import (find_ema, rebind_optimizer, refresh_ema_cache, rewrap,
                     unwrap)
from .rebuild import rebuild_structure


def replay_runner(
        runner,
        checkpoint: dict,
        check_state: Optional[Callable[[dict],
                                       dict]] = None) -> Optional[dict]:
    """Replay the structure ``checkpoint`` records onto ``runner``.

    Args:
        checkpoint (dict): the loaded checkpoint.
        check_state (Callable, optional): validates the stored training
            state (raising :class:`StructureError`) before anything changes.

    Returns:
        dict | None: the checkpoint's training state (``{}`` when it has
        none), or None for a checkpoint without mmprune metadata.
    """
    meta = (checkpoint.get('meta') or {}).get(META_KEY)
    if meta is None:
        return None
    src = getattr(runner, '_load_from', None) or \
        f'the latest checkpoint in {runner.work_dir}'
    try:
        plans, size, state = read_meta(meta)
        if check_state is not None:
            state = check_state(state)
    except StructureError as e:
        raise StructureError(f'{src}: {e}') from e
    model = unwrap(runner.model)
    old = dict(model.named_parameters())
    applied = rebuild_structure(model, plans, size, src)
    if applied:
        # the optimizer was built on the dense parameters; its state (when
        # resuming) is loaded after this, already pruned: no slicing
        optimizer = getattr(
            getattr(runner, 'optim_wrapper', None), 'optimizer', None)
        if isinstance(optimizer, torch.optim.Optimizer):
            rebind_optimizer(optimizer, old, dict(model.named_parameters()),
                             {})
        ema = find_ema(runner)
        if ema is not None:
            rebuild_structure(ema.module, plans, size, src)
            refresh_ema_cache(ema)
        rewrap(runner, model)
    return state or {}


def record_runner(runner, plan: PruningPlan, trace_size: Tuple[int,
                                                               int]) -> None:
    """Append ``plan`` (just applied by ``prune_runner``) to the structure
    record of the runner's model and of its EMA copy."""
    model = unwrap(runner.model)
    plans = model_plans(model) + [plan]
    record_plans(model, plans, trace_size)
    ema = find_ema(runner)
    if ema is not None:
        record_plans(ema.module, plans, trace_size)
