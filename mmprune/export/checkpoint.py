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
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..graph.analyze import TRACE_SIZE
from ..runtime.rebuild import build_detector  # noqa: F401  (re-exported)
from ..runtime.rebuild import checkpoint_structure
from ..runtime.rebuild import load_pruned_detector as _load_pruned
from ..runtime.rebuild import strip_module
from ..structures import META_KEY, StructureError, make_meta
from ..structures.model_record import model_plans


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


def select_weights(
        ckpt: dict,
        use_ema: bool,
        path: str = 'checkpoint') -> Tuple[Dict[str, torch.Tensor], str]:
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
        return strip_module(ckpt['state_dict']), 'ema'
    if has_ema:
        trained = {
            k[7:]: v
            for k, v in ckpt['ema_state_dict'].items()
            if k.startswith('module.')
        }
        return trained, 'trained'
    return strip_module(ckpt['state_dict']), 'model'


def load_pruned_detector(
        cfg,
        ckpt: dict,
        use_ema: bool = False,
        path: str = 'checkpoint',
        dense: Optional[nn.Module] = None) -> Tuple[nn.Module, str]:
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
    state, which = select_weights(ckpt, use_ema, path)
    try:
        # the one loader (mmprune/runtime/rebuild.py)
        model = _load_pruned(
            cfg,
            ckpt,
            state,
            repr(path),
            dense,
            mismatch='{source} does not fit the config\'s model (was it '
            'pruned from another config?)')
    except StructureError as e:
        lines = str(e).split('\n')
        more = f'\n  ... ({len(lines) - 12} more)' if len(lines) > 12 \
            else ''
        raise ExportError('\n'.join(lines[:12]) + more) from None
    return model.eval(), which


def compact_checkpoint(model: nn.Module, ckpt: dict, which: str,
                       source: str) -> dict:
    """``{'state_dict', 'meta'}`` of ``model`` for deployment: the plans
    (without the training state), the dataset meta, where it came from;
    no optimizer, schedulers or message hub."""
    _, size = checkpoint_structure(ckpt)
    plans = model_plans(model)
    meta = {
        META_KEY: make_meta(plans, size if plans else TRACE_SIZE),
        'mmprune_export': dict(source=source, weights=which)
    }
    old = ckpt.get('meta') or {}
    if 'dataset_meta' in old:  # class names for DetInferencer
        meta['dataset_meta'] = old['dataset_meta']
    state = {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    return dict(state_dict=state, meta=meta)
