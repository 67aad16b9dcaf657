# BPC (Blending Pruning Criteria, mmprune/methods/bpc.py) on RetinaNet R50-FPN,
# COCO, pruned while it trains. Base: mmdet's 1x schedule (12 epochs, LR steps
# after epochs 8 and 11).
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

# mmdet's ResNet-50 settings stay: frozen_stages=1 (stem and stage 1 do not
# train) and norm_eval=True (BN statistics frozen). The graph tracer pins the
# channels of frozen layers (reason 'frozen <module>' in the graph summary),
# so they are never cut: a frozen layer could not recover by fine-tuning.
# Target 0.5: the preset prunes the backbone, the heads (shared across FPN
# levels: one weight, every level's FLOPs) and, on Faster R-CNN, the RPN
# conv and the RoI head's fcs; prediction layers keep their outputs and the
# frozen layers stay pinned (what each method prunes and why:
# configs/README.md, "What each method prunes on ResNet detectors").

# ---- pruning settings: edit these -----------------------------------------
custom_imports = dict(imports=['mmprune'], allow_failed_imports=False)
custom_hooks = [  # mmdet's config has no custom hooks
    dict(
        type='ChannelPruningHook',
        method='bpc',  # criterion, allocator, regularisers: the preset
        target=0.5,  # keep 50 % of the dense FLOPs (see above)
        # one cut (end defaults to begin) after 4 dense epochs, then
        # 8 fine-tuning epochs (LR steps after epochs 8 and 11)
        begin=4,
        # criterion: the event searches the blend of L1, L2, FPGM,
        # BN-gamma, Taylor and HRank (BPC's EA, at most 24 evaluations:
        # search=dict(max_evals=..., ...) to change; methods.md 2B(c));
        # a blend from tools/search_blend.py instead:
        # criterion=dict(type='BlendedCriterion', **blend)
        # (H, W) the FLOPs are counted at: the test image size
        input_size=(800, 1333)),
]
# mmdet's DetInferencer loads only a state dict; for it, wrap the model
# (configs/README.md: training and tools/test.py do not need this):
# model = dict(
#     _delete_=True, type='PrunableDetector', architecture=_base_.model)
# ---------------------------------------------------------------------------
