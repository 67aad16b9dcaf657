"""The training config of one quality run: mmdet's own model config on the
synthetic data with mmprune's short from-scratch CPU recipe
(:func:`mmprune.datasets.short_recipe.short_cpu_config`, the recipe of
``make demo`` too), so that only the pruning differs between the runs of a
table: one validation after the last epoch, no checkpoints (the run keeps
its final model itself).

Protocol 'trained' fine-tunes from a reference checkpoint (``load_from``)
at :data:`FINETUNE_LR_MULT` of the training learning rate: the BPC and FCP
papers fine-tune pretrained YOLOX at 0.5x its LR, and the recipe's warm-up
(one epoch at least) re-ramps the LR after the cut at the start.
"""
from typing import Optional, Sequence

#: model name -> (mmdet config, learning rate)
MODELS = {
    'yolox_tiny': ('mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', 0.002),
    'retinanet_r18': ('mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', 0.001),
}

#: the fine-tuning LR of protocol 'trained', relative to the model's LR
FINETUNE_LR_MULT = 0.5


def build_train_config(model: str,
                       data: dict,
                       size: int,
                       epochs: int,
                       batch_size: int,
                       seed: int,
                       work_dir: str,
                       hooks: Sequence[dict] = (),
                       lr_mult: float = 1.0,
                       load_from: Optional[str] = None,
                       val_interval: Optional[int] = None):
    """mmengine Config of one quality run.

    Args:
        model (str): a key of :data:`MODELS`.
        data (dict): ``coco_root`` and ``classes`` of the synthetic set.
        size (int): the square train/test size (a multiple of 32).
        epochs, batch_size, seed: the schedule.
        work_dir (str): the run's folder.
        hooks (Sequence[dict]): extra custom hooks (the pruning hook).
        lr_mult (float): multiplies the model's learning rate.
        load_from (str, optional): a checkpoint to start from.
        val_interval (int, optional): epochs between validations (default:
            once, after the last epoch).
    """
    from mmprune.datasets.short_recipe import short_cpu_config
    if model not in MODELS:
        raise ValueError(f'unknown benchmark model {model!r}; valid: '
                         f'{sorted(MODELS)}')
    if not lr_mult > 0:
        raise ValueError(f'lr_mult must be > 0, got {lr_mult!r}')
    base, lr = MODELS[model]
    cfg = short_cpu_config(
        base,
        data,
        size,
        epochs,
        batch_size,
        lr * lr_mult,
        seed,
        work_dir,
        hooks,
        val_interval=val_interval)
    if load_from is not None:
        cfg.load_from = load_from
    # mmengine formats the config with yapf three times per Runner (the
    # log, the dumped config.py, the visualizer): measured 8-25 s per run
    # here, longer than a smoke run trains; the unformatted text is the
    # same Python
    from mmengine.config import Config
    return Config(
        cfg.to_dict(), filename=cfg.filename, format_python_code=False)
