# Copyright (c) mmprune contributors. All rights reserved.
"""Datasets for mmprune's experiments and tests.

:func:`make_synthetic_dataset` writes a deterministic, procedurally drawn
shape-detection dataset in COCO and Pascal VOC layouts, loadable by mmdet's
``CocoDataset`` / ``VOCDataset`` with ``metainfo=dict(classes=
SYNTH_CLASSES[:num_classes])``.
"""
from .synthetic import SYNTH_CLASSES, make_synthetic_dataset

__all__ = ['SYNTH_CLASSES', 'make_synthetic_dataset']
