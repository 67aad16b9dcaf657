# YOLOX-tiny, mmdet's COCO recipe (300 epochs, Mosaic, the last 15 epochs
# without it, EMA), trained on VOC0712 (see ../datasets/voc0712_yolox.py).
_base_ = [
    'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py',
    '../datasets/voc0712_yolox.py',
]

model = dict(bbox_head=dict(num_classes=20))

data_root = _base_.voc_data_root
dataset_type = 'VOCDataset'
# `_delete_`: the COCO dataset's keys (ann_file, data_prefix=dict(img=...))
# must not leak into the VOC ones
train_dataset = dict(dataset=dict(_delete_=True, **_base_.voc_trainval))
train_dataloader = dict(dataset=train_dataset)
val_dataloader = dict(
    dataset=dict(
        _delete_=True, pipeline=_base_.test_pipeline, **_base_.voc07_test))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, **_base_.voc_evaluator)
test_evaluator = val_evaluator
