"""Which of mmdet's training hooks constrain when pruning may happen."""
from typing import List

from .families import FAMILIES


def no_augmentation_epochs(hooks) -> List[int]:
    """``num_last_epochs`` of every hook in ``hooks`` (a runner's
    ``runner.hooks``) that a registered family names as switching its
    strong augmentation off for the last epochs (YOLOX's
    ``YOLOXModeSwitchHook``: Mosaic/MixUp): a cut inside them would be
    fine-tuned without the augmentation the recipe relies on (see
    ``allocators/schedule.py``)."""
    types = tuple(t for f in FAMILIES.values() for t in f.switch_hooks())
    if not types:  # mmdet without its engine hooks: no such recipe
        return []
    return [
        getattr(h, 'num_last_epochs', 0) for h in hooks
        if isinstance(h, types)
    ]
