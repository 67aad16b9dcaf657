# GCP-FRS (Gradual Channel Pruning with Feature Relevance Scores,
# mmprune/methods/gcp_frs.py) on Faster R-CNN R50-FPN, COCO, pruned while it
# trains. Base: mmdet's 1x schedule (12 epochs, LR steps after epochs 8 and
# 11).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

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
        method='gcp_frs',  # criterion, allocator, regularisers: the preset
        target=0.5,  # keep 50 % of the dense FLOPs (see above)
        # 7 hard events after epochs 1-7, each removing an equal share
        # of the cut (linear ramp), before the LR step after epoch 8
        begin=1,
        end=7,
        interval=1,
        # relevance (grad x input) scored on 125 train batches per GPU:
        # ~2000 COCO train images at 8 GPUs x 2 images
        scoring_batches=125,
        # (H, W) the FLOPs are counted at: the test image size
        input_size=(800, 1333)),
]
# mmdet's DetInferencer loads only a state dict; for it, wrap the model
# (configs/README.md: training and tools/test.py do not need this):
# model = dict(
#     _delete_=True, type='PrunableDetector', architecture=_base_.model)
# ---------------------------------------------------------------------------
