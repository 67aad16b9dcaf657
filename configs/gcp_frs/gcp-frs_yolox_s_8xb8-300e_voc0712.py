# GCP-FRS (Gradual Channel Pruning with Feature Relevance Scores,
# mmprune/methods/gcp_frs.py) on YOLOX-s, PASCAL VOC0712, pruned while it
# trains. Base: mmdet's 300-epoch recipe from scratch (Mosaic/MixUp off for the
# last 15 epochs).
_base_ = '../_base_/yolox/yolox_s_8xb8-300e_voc0712.py'

# ---- pruning settings: edit these -----------------------------------------
custom_imports = dict(imports=['mmprune'], allow_failed_imports=False)
# appended to mmdet's YOLOXModeSwitchHook, SyncNormHook and EMAHook
custom_hooks = _base_.custom_hooks + [
    dict(
        type='ChannelPruningHook',
        method='gcp_frs',  # criterion, allocator, regularisers: the preset
        target=0.5,  # keep 50 % of the dense FLOPs (R* = 0.5)
        # 12 hard events after epochs 30, 45, ..., 195, each removing
        # an equal share of the cut (linear ramp); 105 epochs recover,
        # the last 15 without Mosaic/MixUp
        begin=30,
        end=195,
        interval=15,
        # relevance (grad x input) scored on 259 train batches per GPU:
        # all 16551 VOC0712 trainval images at 8 GPUs x 8 images
        scoring_batches=259,
        # (H, W) the FLOPs are counted at: the test image size
        input_size=(640, 640)),
]
# mmdet's DetInferencer loads only a state dict; for it, wrap the model
# (configs/README.md: training and tools/test.py do not need this):
# model = dict(
#     _delete_=True, type='PrunableDetector', architecture=_base_.model)
# ---------------------------------------------------------------------------
