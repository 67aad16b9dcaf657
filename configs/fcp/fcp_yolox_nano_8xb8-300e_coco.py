# FCP (Fine-Grained Channel Pruning, mmprune/methods/fcp.py) on YOLOX-nano,
# COCO, pruned while it trains. Base: mmdet's 300-epoch recipe from scratch
# (Mosaic off for the last 15 epochs).
_base_ = 'mmdet::yolox/yolox_nano_8xb8-300e_coco.py'

# ---- pruning settings: edit these -----------------------------------------
custom_imports = dict(imports=['mmprune'], allow_failed_imports=False)
# appended to mmdet's YOLOXModeSwitchHook, SyncNormHook and EMAHook
custom_hooks = _base_.custom_hooks + [
    dict(
        type='ChannelPruningHook',
        method='fcp',  # criterion, allocator, regularisers: the preset
        target=0.5,  # keep 50 % of the dense FLOPs (R* = 0.5)
        # BN-L1 sparsity training (preset lambda_s=2e-5) from the
        # start, one cut (end defaults to begin) by a global |gamma|
        # threshold after epoch 100, then 200 epochs of fine-tuning
        # (the BN-L1 term stays on); the preset's 50 + 100 epochs
        # assume a pretrained YOLOX
        begin=100,
        # (H, W) the FLOPs are counted at: the test image size
        input_size=(416, 416)),
]
# mmdet's DetInferencer loads only a state dict; for it, wrap the model
# (configs/README.md: training and tools/test.py do not need this):
# model = dict(
#     _delete_=True, type='PrunableDetector', architecture=_base_.model)
# ---------------------------------------------------------------------------
