# ACP-TP (Adaptive Channel Pruning for Trainability Protection,
# mmprune/methods/acp_tp.py) on YOLOX-tiny, PASCAL VOC0712, pruned while it
# trains. Base: mmdet's 300-epoch recipe from scratch (Mosaic off for the last
# 15 epochs).
_base_ = '../_base_/yolox/yolox_tiny_8xb8-300e_voc0712.py'

# ---- pruning settings: edit these -----------------------------------------
custom_imports = dict(imports=['mmprune'], allow_failed_imports=False)
# appended to mmdet's YOLOXModeSwitchHook, SyncNormHook and EMAHook
custom_hooks = _base_.custom_hooks + [
    dict(
        type='ChannelPruningHook',
        method='acp_tp',  # criterion, allocator, regularisers: the preset
        target=0.5,  # keep 50 % of the dense FLOPs (R* = 0.5)
        # soft events after epochs 30, 40, ..., 200 (18): each
        # selects channels, TPP penalises them, and they are removed
        # at the next event; the last removal is after epoch 210, 75
        # epochs before the no-augmentation phase (cubic ramp)
        begin=30,
        end=200,
        interval=10,
        # (H, W) the FLOPs are counted at: the test image size
        input_size=(416, 416)),
]
# mmdet's DetInferencer loads only a state dict; for it, wrap the model
# (configs/README.md: training and tools/test.py do not need this):
# model = dict(
#     _delete_=True, type='PrunableDetector', architecture=_base_.model)
# ---------------------------------------------------------------------------
