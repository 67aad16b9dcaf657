"""Read a pruned checkpoint, rebuild its detector, write a compact one.

A pruned checkpoint comes from one of two places:

* ``tools/prune.py``'s ``pruned.pth``: ``{'state_dict', 'meta':
  {'mmprune': ...}}``;
* a training run with ``ChannelPruningHook``: mmengine's full checkpoint
  (``state_dict``, ``optimizer``, ``param_schedulers``, ``message_hub``,
  ``meta`` with ``meta['mmprune']`` holding the plans and the hook's state),
  and, when ``EMAHook`` ran, ``ema_state_dict``.

EMA (mmengine ``EMAHook.before_save_checkpoint``): the hook saves
``ema_state_dict = ema_model.state_dict()`` (keys ``module.<name>`` plus
``steps``) and then *swaps* the values of the two dicts, so that
``state_dict`` holds the averaged weights (what ``tools/test.py`` evaluates)
and ``ema_state_dict['module.<name>']`` the weights the optimizer trained.
Hence :func:`select_weights` reads the EMA weights from ``state_dict`` and
the trained ones from ``ema_state_dict``.

The structure is read from ``meta['mmprune']``, or, when a checkpoint has no
such meta (one saved from a bare state dict), from the ``mmprune_structure``
buffer in the state dict; both hold the same plans.
"""
import os.path as osp
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..structures import (BUFFER, META_KEY, PruningPlan, decode, make_meta,
                          read_meta)


class ExportError(Exception):
    """Exporting failed; the message names the file or argument at fault.

    Not a RuntimeError or OSError: :func:`~mmprune.utils.io.atomic_write`
    re-raises those (naming the target) and passes this one through."""


def read_checkpoint(path: str) -> dict:
    """Load a checkpoint file on the CPU (the torch>=2.6 safe globals are
    registered by ``import mmprune``)."""
    from mmengine.runner.checkpoint import _load_checkpoint
    if not osp.isfile(path):
        raise ExportError(f'checkpoint {path!r} does not exist')
    ckpt = _load_checkpoint(path, map_location='cpu')
    if not isinstance(ckpt, dict):
        raise ExportError(f'checkpoint {path!r} holds a '
                          f'{type(ckpt).__name__}, not a dict')
    if 'state_dict' not in ckpt:
        # a bare state dict (torch.save(model.state_dict()))
        ckpt = dict(state_dict=ckpt)
    return ckpt


def _strip_module(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # DDP-saved keys start with 'module.' (mmengine's load_checkpoint
    # removes the same prefix by default)
    return {(k[7:] if k.startswith('module.') else k): v
            for k, v in state.items()}


def select_weights(ckpt: dict, use_ema: bool, path: str = 'checkpoint'
                   ) -> Tuple[Dict[str, torch.Tensor], str]:
    """The state dict to export and which weights it holds.

    Args:
        ckpt (dict): a loaded checkpoint (see :func:`read_checkpoint`).
        use_ema (bool): take the EMA weights. They are in ``state_dict``
            (EMAHook swapped them in); an error when the checkpoint has no
            ``ema_state_dict``.
        path (str): the checkpoint's file, for messages.

    Returns:
        tuple: ``(state_dict, 'ema' | 'trained' | 'model')``; ``'trained'``
        is the optimizer's weights of an EMA checkpoint, ``'model'`` the only
        weights of a checkpoint without EMA.
    """
    has_ema = isinstance(ckpt.get('ema_state_dict'), dict)
    if use_ema:
        if not has_ema:
            raise ExportError(
                f'--use-ema: {path!r} has no ema_state_dict (it was not '
                f'saved by a run with mmengine\'s EMAHook)')
        return _strip_module(ckpt['state_dict']), 'ema'
    if has_ema:
        trained = {k[7:]: v for k, v in ckpt['ema_state_dict'].items()
                   if k.startswith('module.')}
        return trained, 'trained'
    return _strip_module(ckpt['state_dict']), 'model'


def checkpoint_structure(ckpt: dict
                         ) -> Tuple[List[PruningPlan], Tuple[int, int]]:
    """The plans and trace size a checkpoint's model was pruned with
    (no plans and the default trace size for a dense checkpoint)."""
    from ..apis import TRACE_SIZE
    meta = (ckpt.get('meta') or {}).get(META_KEY)
    if meta is None:
        buf = _strip_module(ckpt['state_dict']).get(BUFFER)
        if buf is None:
            return [], TRACE_SIZE
        meta = decode(buf)
    plans, size, _ = read_meta(meta)
    return plans, size


def build_detector(cfg) -> nn.Module:
    """The config's (dense) detector, in eval mode, with no remote weights
    fetched."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from ..utils.offline import check_offline_weights
    register_all_modules()
    check_offline_weights(cfg)
    return MODELS.build(cfg.model).eval()


def load_pruned_detector(cfg, ckpt: dict, use_ema: bool = False,
                         path: str = 'checkpoint',
                         dense: Optional[nn.Module] = None
                         ) -> Tuple[nn.Module, str]:
    """Rebuild ``ckpt``'s pruned detector from ``cfg`` and load its weights
    strictly.

    Args:
        cfg (Config): the model's config (the training or prune config).
        ckpt (dict): a loaded checkpoint.
        use_ema (bool): see :func:`select_weights`.
        path (str): the checkpoint's file, for messages.
        dense (nn.Module, optional): a freshly built model of ``cfg`` to
            prune in place (saves a build when the caller has one).

    Returns:
        tuple: ``(model in eval mode, which weights)``.
    """
    from ..apis import replay
    model = build_detector(cfg) if dense is None else dense
    plans, size = checkpoint_structure(ckpt)
    if plans:
        try:
            replay(model, plans, size)
        except ValueError as e:  # StructureError too
            lines = str(e).split('\n')
            more = f'\n  ... ({len(lines) - 12} more)' if len(lines) > 12 \
                else ''
            raise ExportError(
                f'{path!r} does not fit the config\'s model (was it pruned '
                f'from another config?): ' + '\n'.join(lines[:12]) + more) \
                from None
    state, which = select_weights(ckpt, use_ema, path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches
        raise ExportError(f'{path!r} does not fit the config\'s model after '
                          f'replaying its {len(plans)} plan(s): {e}') from None
    if missing or unexpected:
        raise ExportError(
            f'{path!r} does not fit the config\'s model after replaying its '
            f'{len(plans)} plan(s): missing keys {sorted(missing)[:5]}, '
            f'unexpected keys {sorted(unexpected)[:5]}')
    return model.eval(), which


def compact_checkpoint(model: nn.Module, ckpt: dict, which: str,
                       source: str) -> dict:
    """``{'state_dict', 'meta'}`` of ``model`` for deployment: the plans
    (without the training state), the dataset meta, where it came from;
    no optimizer, schedulers or message hub."""
    from ..apis import TRACE_SIZE, model_plans
    _, size = checkpoint_structure(ckpt)
    plans = model_plans(model)
    meta = {META_KEY: make_meta(plans, size if plans else TRACE_SIZE),
            'mmprune_export': dict(source=source, weights=which)}
    old = ckpt.get('meta') or {}
    if 'dataset_meta' in old:  # class names for DetInferencer
        meta['dataset_meta'] = old['dataset_meta']
    state = {k: v.detach().cpu().clone() for k, v in
             model.state_dict().items()}
    return dict(state_dict=state, meta=meta)
