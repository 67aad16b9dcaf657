"""Which of mmdet's training hooks constrain when pruning may happen."""
from typing import List


def no_augmentation_epochs(hooks) -> List[int]:
    """``num_last_epochs`` of every ``YOLOXModeSwitchHook`` in ``hooks``
    (a runner's ``runner.hooks``): YOLOX switches off Mosaic/MixUp for its
    last epochs, and a cut inside them would be fine-tuned without the
    strong augmentation the recipe relies on (see
    ``allocators/schedule.py``)."""
    try:
        from mmdet.engine.hooks import YOLOXModeSwitchHook
    except ImportError:  # mmdet without its engine hooks: no YOLOX recipe
        return []
    return [
        getattr(h, 'num_last_epochs', 0) for h in hooks
        if isinstance(h, YOLOXModeSwitchHook)
    ]
