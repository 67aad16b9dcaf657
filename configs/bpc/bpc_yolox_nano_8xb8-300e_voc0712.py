# BPC (Blending Pruning Criteria, mmprune/methods/bpc.py) on YOLOX-nano, PASCAL
# VOC0712, pruned while it trains. Base: mmdet's 300-epoch recipe from scratch
# (Mosaic off for the last 15 epochs).
_base_ = '../_base_/yolox/yolox_nano_8xb8-300e_voc0712.py'

# ---- pruning settings: edit these -----------------------------------------
custom_imports = dict(imports=['mmprune'], allow_failed_imports=False)
# appended to mmdet's YOLOXModeSwitchHook, SyncNormHook and EMAHook
custom_hooks = _base_.custom_hooks + [
    dict(
        type='ChannelPruningHook',
        method='bpc',  # criterion, allocator, regularisers: the preset
        target=0.5,  # keep 50 % of the dense FLOPs (R* = 0.5)
        # one cut (end defaults to begin) after dense training to
        # epoch 185, then the preset's 100 fine-tuning epochs (the
        # last 15 without Mosaic)
        begin=185,
        # criterion: the event searches the blend of L1, L2, FPGM,
        # BN-gamma, Taylor and HRank (BPC's EA, at most 24 evaluations:
        # search=dict(max_evals=..., ...) to change; methods.md 2B(c));
        # a blend from tools/search_blend.py instead:
        # criterion=dict(type='BlendedCriterion', **blend)
        # (H, W) the FLOPs are counted at: the test image size
        input_size=(416, 416)),
]
# mmdet's DetInferencer loads only a state dict; for it, wrap the model
# (configs/README.md: training and tools/test.py do not need this):
# model = dict(
#     _delete_=True, type='PrunableDetector', architecture=_base_.model)
# ---------------------------------------------------------------------------
