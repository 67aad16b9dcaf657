"""PrunableDetector: an mmdet detector that knows its pruned structure.

``model = dict(type='PrunableDetector', architecture=<any detector cfg>)``
builds the architecture and returns *the detector itself*, made prunable:

* its class becomes a cached subclass ``Prunable<Name>`` (same state-dict
  keys, still an instance of the original class, so mmdet hooks such as
  ``YOLOXModeSwitchHook`` keep working) whose ``loss()`` adds the pruning
  regularisers' terms. Putting them in ``loss()`` rather than
  ``train_step()`` keeps them under ``MMDistributedDataParallel``, which
  calls the module's forward directly;
* a load-state-dict pre-hook replays a pruned structure stored in the state
  dict's ``mmprune_structure`` buffer before the weights load, so code that
  sees only the state dict (mmdet's ``DetInferencer``) loads a pruned
  checkpoint into a freshly built dense model.

The training hook applies the same treatment to a plain detector at
``before_run``, so training needs no wrapper; ``DetInferencer`` does.

Why a factory and not an ordinary registered wrapper (a ``BaseModel``
holding ``self.architecture``): mmengine's registry builds functions as
well as classes, and a wrapper would change what the rest of the stack
sees. Its state-dict keys would gain an ``architecture.`` prefix (a pruned
checkpoint would no longer load into the plain detector, nor a dense one
into the wrapper), and mmdet's hooks and test scripts read the detector's
attributes on ``runner.model`` directly (``YOLOXModeSwitchHook`` sets
``model.bbox_head.use_l1``, ``SyncNormHook`` walks its modules). A subclass
of the detector's own class keeps keys, attributes and ``isinstance``.
"""
from typing import Callable, Dict, List

import torch
import torch.nn as nn
from mmdet.registry import MODELS

from ..runtime.rebuild import rebuild_structure
from ..structures import BUFFER, decode, read_meta

_CLASSES: Dict[type, type] = {}


class PrunableMixin:
    """Adds ``mmprune`` loss terms to ``loss()``."""

    _mmprune_loss_terms: List[Callable[[], torch.Tensor]]

    def loss(self, *args, **kwargs):
        losses = super().loss(*args, **kwargs)
        for i, term in enumerate(getattr(self, '_mmprune_loss_terms', ())):
            # the key contains 'loss' so mmengine's parse_losses sums it
            losses[f'loss_prune_{i}'] = term()
        return losses


def _prunable_class(cls: type) -> type:
    if issubclass(cls, PrunableMixin):
        return cls
    if cls not in _CLASSES:
        name = f'Prunable{cls.__name__}'
        new = type(name, (PrunableMixin, cls), {'__module__': __name__})
        # pickle finds a class by module and name: a dynamic class must be
        # an attribute of the module its __module__ names
        globals()[name] = new
        _CLASSES[cls] = new
    return _CLASSES[cls]


def _replay_from_state_dict(module, state_dict, prefix, *args):
    key = prefix + BUFFER
    if key not in state_dict:
        return
    plans, size, _ = read_meta(decode(state_dict[key]))  # StructureError
    rebuild_structure(
        module,
        plans,
        size,
        repr(key),
        mismatch='the {source} buffer of this state dict describes a pruned '
        'structure the {model} built from the config cannot take (weights '
        'of another model or config?)')


def make_prunable(model: nn.Module) -> nn.Module:
    """Give ``model`` the prunable class and the structure pre-hook (in
    place, idempotent); returns it."""
    model.__class__ = _prunable_class(type(model))
    if not getattr(model, '_mmprune_prehook', False):
        model._register_load_state_dict_pre_hook(
            _replay_from_state_dict, with_module=True)
        model._mmprune_prehook = True
    if not hasattr(model, '_mmprune_loss_terms'):
        model._mmprune_loss_terms = []
    return model


@MODELS.register_module(name='PrunableDetector')
def build_prunable_detector(architecture: dict, **overrides) -> nn.Module:
    """Build ``architecture`` and :func:`make_prunable` it."""
    if not isinstance(architecture, dict) or 'type' not in architecture:
        raise ValueError('PrunableDetector needs architecture=dict(type=...)'
                         f', got {architecture!r}')
    cfg = dict(architecture)
    cfg.update(overrides)
    return make_prunable(MODELS.build(cfg))
