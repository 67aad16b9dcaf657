"""The training config of one quality run: mmdet's own model config on the
synthetic data with mmprune's short from-scratch CPU recipe
(:func:`mmprune.datasets.short_recipe.short_cpu_config`, the recipe of
``make demo`` too), so that only the pruning differs between the runs of a
table: one validation after the last epoch, no checkpoints (the run keeps
its final model itself).
"""
from typing import Sequence

#: model name -> (mmdet config, learning rate)
MODELS = {
    'yolox_tiny': ('mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', 0.002),
    'retinanet_r18': ('mmdet::retinanet/retinanet_r18_fpn_1x_coco.py',
                      0.001),
}


def build_train_config(model: str, data: dict, size: int, epochs: int,
                       batch_size: int, seed: int, work_dir: str,
                       hooks: Sequence[dict] = ()):
    """mmengine Config of one quality run.

    Args:
        model (str): a key of :data:`MODELS`.
        data (dict): ``coco_root`` and ``classes`` of the synthetic set.
        size (int): the square train/test size (a multiple of 32).
        epochs, batch_size, seed: the schedule.
        work_dir (str): the run's folder.
        hooks (Sequence[dict]): extra custom hooks (the pruning hook).
    """
    from mmprune.datasets.short_recipe import short_cpu_config
    if model not in MODELS:
        raise ValueError(f'unknown benchmark model {model!r}; valid: '
                         f'{sorted(MODELS)}')
    base, lr = MODELS[model]
    return short_cpu_config(base, data, size, epochs, batch_size, lr, seed,
                            work_dir, hooks)
