"""Detector families: what mmprune knows about each, registered in one place.

Almost everything about a detector is traced (:mod:`mmprune.graph`). What
cannot be traced is a family's own convention, and it lives here, one
:class:`DetectorFamily` per family:

* ``prediction``: the last name component of its prediction layers (their
  output width is fixed by classes, boxes, objectness, centerness or
  anchors), as regex alternatives;
* ``two_stage``: an RPN feeds RoI heads, so the tensor forward needs image
  meta and runs the RPN's proposal selection (masked-vs-compact checks then
  compare on fixed proposals, :mod:`mmprune.adapters.compare`);
* ``switch_hooks``: mmdet training hooks that turn the strong augmentation
  off for the last ``num_last_epochs`` (a cut inside them would be
  fine-tuned without it, :mod:`mmprune.allocators.schedule`).

A new family is one :func:`register_family` call. :func:`family_of` finds a
model's family (the first registered whose detector classes it is an
instance of, so a subclass family is registered before its base);
:func:`prediction_pattern` is the union of every family's prediction names,
for callers that see a module name without its model.
"""
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple

import torch.nn as nn


def _mmdet(*names: str) -> Callable[[], tuple]:
    """Lazily imported mmdet classes (mmdet may be absent: plain torch)."""

    def types() -> tuple:
        try:
            import mmdet.engine.hooks as hooks
            import mmdet.models.detectors as detectors
        except ImportError:
            return ()
        return tuple(
            getattr(detectors, n, None) or getattr(hooks, n) for n in names)

    return types


@dataclass(frozen=True)
class DetectorFamily:
    """One family's conventions (see the module docstring)."""
    name: str
    detector_types: Callable[[], tuple]
    prediction: Tuple[str, ...]
    two_stage: bool = False
    switch_hooks: Callable[[], tuple] = lambda: ()


#: registration order decides :func:`family_of` (subclasses first)
FAMILIES: Dict[str, DetectorFamily] = {}


def register_family(family: DetectorFamily) -> DetectorFamily:
    """Add (or replace) a family; returns it."""
    FAMILIES[family.name] = family
    prediction_pattern.cache_clear()
    return family


def family_of(model: nn.Module) -> Optional[DetectorFamily]:
    """The registered family of ``model``, or None (a plain torch model or
    a detector class no family names)."""
    for family in FAMILIES.values():
        types = family.detector_types()
        if types and isinstance(model, types):
            return family
    return None


@lru_cache(maxsize=None)
def prediction_pattern() -> 're.Pattern':
    """A module name whose last component (optionally followed by a level
    index, ``multi_level_conv_cls.0``) is any family's prediction layer."""
    alternatives = '|'.join(a for f in FAMILIES.values() for a in f.prediction)
    return re.compile(rf'(^|\.)({alternatives})(\.\d+)?$')


# ``YOLOX`` subclasses ``SingleStageDetector``: registered before it
register_family(
    DetectorFamily(
        'yolox',
        _mmdet('YOLOX'),
        prediction=(r'multi_level_conv_(cls|reg|obj)', ),
        switch_hooks=_mmdet('YOLOXModeSwitchHook')))
register_family(
    DetectorFamily(
        'one_stage',
        _mmdet('SingleStageDetector'),
        prediction=(r'conv_(cls|reg|obj|centerness)', r'retina_(cls|reg)',
                    r'atss_(cls|reg|centerness)', r'gfl_(cls|reg)',
                    r'vfnet_(cls|reg|reg_refine)',
                    r'fcos_(cls|reg|centerness)')))
register_family(
    DetectorFamily(
        'two_stage',
        _mmdet('TwoStageDetector'),
        prediction=(r'rpn_(cls|reg)', r'fc_(cls|reg)', r'conv_logits'),
        two_stage=True))
