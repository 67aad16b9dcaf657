# PASCAL VOC0712 for YOLOX: train on VOC2007 + VOC2012 trainval, test on
# VOC2007 test, 20 classes, VOC 11-point mAP (mmdet's voc0712 settings,
# without its RepeatDataset: YOLOX counts its own 300 epochs).
#
# mmdet ships no YOLOX VOC config, and mmengine forbids one key in two
# `_base_` files, so these pieces have their own `voc_` names; the model
# files in ../yolox/ splice them into YOLOX's MultiImageMixDataset, whose
# Mosaic/MixUp pipeline stays as mmdet's YOLOX config defines it. The
# inner datasets only load (image + boxes), as in the COCO config.
voc_data_root = 'data/VOCdevkit/'
voc_backend_args = None

voc_load_pipeline = [
    dict(type='LoadImageFromFile', backend_args=voc_backend_args),
    dict(type='LoadAnnotations', with_bbox=True)
]
voc_filter_cfg = dict(filter_empty_gt=True, min_size=32, bbox_min_size=32)

voc_trainval = dict(
    type='ConcatDataset',
    # each VOCDataset puts its own `dataset_type` (VOC2007 / VOC2012) in its
    # metainfo; ConcatDataset refuses differing metainfo unless told
    ignore_keys=['dataset_type'],
    datasets=[
        dict(
            type='VOCDataset',
            data_root=voc_data_root,
            ann_file='VOC2007/ImageSets/Main/trainval.txt',
            data_prefix=dict(sub_data_root='VOC2007/'),
            filter_cfg=voc_filter_cfg,
            pipeline=voc_load_pipeline,
            backend_args=voc_backend_args),
        dict(
            type='VOCDataset',
            data_root=voc_data_root,
            ann_file='VOC2012/ImageSets/Main/trainval.txt',
            data_prefix=dict(sub_data_root='VOC2012/'),
            filter_cfg=voc_filter_cfg,
            pipeline=voc_load_pipeline,
            backend_args=voc_backend_args)
    ])

# the test pipeline is the model's own (640 px for YOLOX-s, 416 px for
# tiny/nano); the model files add it
voc07_test = dict(
    type='VOCDataset',
    data_root=voc_data_root,
    ann_file='VOC2007/ImageSets/Main/test.txt',
    data_prefix=dict(sub_data_root='VOC2007/'),
    test_mode=True,
    backend_args=voc_backend_args)

# VOC2007 uses the 11-point AP (VOC2012 would use 'area')
voc_evaluator = dict(type='VOCMetric', metric='mAP', eval_mode='11points')
