"""Rebuild a pruned model from its structure record: the one way.

mmengine (and mmdet's tools) build the *dense* model from a config; a
pruned checkpoint's weights have the pruned shapes. Every path that loads
one replays the recorded plans first, through :func:`rebuild_structure`:

* :func:`load_pruned_detector`, the loader: ``apis.init_pruned_detector``,
  ``tools/prune.py --checkpoint`` and the exporter (``export/checkpoint``);
* the training runtime on resume / ``load_from``
  (:func:`mmprune.runtime.resume.replay_runner`, before the weights load);
* ``PrunableDetector``'s state-dict pre-hook (code that sees only a state
  dict, such as mmdet's ``DetInferencer``).

Each caller names its source (file, buffer) in the error it gets when the
plans do not fit the model built from the config.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..graph.analyze import TRACE_SIZE
from ..structures import (BUFFER, META_KEY, PruningPlan, StructureError,
                          decode, read_meta)
from .replay import replay

#: ``mismatch`` of :func:`rebuild_structure` when the caller gives none;
#: ``{source}`` and ``{model}`` (the model's class name) are filled in
MISMATCH = ('{source}: its pruned structure does not fit the {model} built '
            'from the config (a checkpoint of another model or config?)')


def build_detector(cfg) -> nn.Module:
    """The config's (dense) detector, in eval mode, with no remote weights
    fetched."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from ..utils.offline import check_offline_weights
    register_all_modules()
    check_offline_weights(cfg)
    return MODELS.build(cfg.model).eval()


def strip_module(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Keys without DDP's ``module.`` prefix (mmengine's load_checkpoint
    removes the same prefix by default)."""
    return {
        (k[7:] if k.startswith('module.') else k): v
        for k, v in state.items()
    }


def checkpoint_structure(
        ckpt: dict) -> Tuple[List[PruningPlan], Tuple[int, int]]:
    """The plans and trace size a checkpoint's model was pruned with: from
    ``meta['mmprune']``, else from the ``mmprune_structure`` buffer of its
    state dict (a checkpoint saved from a bare state dict); no plans and
    the default trace size for a dense checkpoint."""
    meta = (ckpt.get('meta') or {}).get(META_KEY)
    if meta is None:
        buf = strip_module(ckpt['state_dict']).get(BUFFER)
        if buf is None:
            return [], TRACE_SIZE
        meta = decode(buf)
    plans, size, _ = read_meta(meta)
    return plans, size


def rebuild_structure(model: nn.Module,
                      plans: List[PruningPlan],
                      trace_size: Tuple[int, int],
                      source: str,
                      mismatch: str = MISMATCH) -> int:
    """Replay ``plans`` onto ``model`` (plans it already carries are
    skipped); returns how many were applied now.

    Args:
        source (str): where the plans come from (file, buffer), for errors.
        mismatch (str): the error's text when the plans do not fit
            ``model``, with ``{source}`` and ``{model}`` placeholders; the
            reason follows it after ``': '``.

    Raises:
        StructureError: the plans do not fit ``model``.
    """
    try:
        return replay(model, plans, trace_size)
    except ValueError as e:  # StructureError, a plan/model mismatch
        raise StructureError(
            mismatch.format(source=source, model=type(model).__name__) +
            f': {e}') from e


def load_pruned_detector(cfg,
                         ckpt: dict,
                         state_dict: Optional[Dict[str, torch.Tensor]] = None,
                         source: str = 'checkpoint',
                         model: Optional[nn.Module] = None,
                         mismatch: str = MISMATCH) -> nn.Module:
    """Build ``cfg``'s detector, rebuild ``ckpt``'s pruned structure on it
    and load its weights strictly. Works for dense checkpoints too.

    Args:
        cfg (Config): the model's config (the training or prune config).
        ckpt (dict): a loaded checkpoint (``state_dict``, ``meta``).
        state_dict (dict, optional): the weights to load (e.g. an EMA
            checkpoint's trained ones); defaults to ``ckpt['state_dict']``.
        source (str): the checkpoint's file, for messages.
        model (nn.Module, optional): a freshly built model of ``cfg`` to
            prune in place (saves a build when the caller has one).
        mismatch (str): see :func:`rebuild_structure`.

    Returns:
        nn.Module: the model, in the mode it was built in.

    Raises:
        StructureError: the structure or the weights do not fit the model.
    """
    if 'state_dict' not in ckpt:  # a bare state dict (torch.save(sd))
        ckpt = dict(state_dict=ckpt)
    model = build_detector(cfg) if model is None else model
    plans, size = checkpoint_structure(ckpt)
    if plans:
        rebuild_structure(model, plans, size, source, mismatch)
    state = strip_module(ckpt['state_dict'] if state_dict is
                         None else state_dict)
    what = (f'{source} does not fit the config\'s model after replaying its '
            f'{len(plans)} plan(s)')
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches
        raise StructureError(f'{what}: {e}') from None
    if missing or unexpected:
        raise StructureError(
            f'{what}: missing keys {sorted(missing)[:5]}, unexpected keys '
            f'{sorted(unexpected)[:5]}')
    return model
