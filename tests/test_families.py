"""Detector families (mmprune/adapters/families.py): each family's
conventions registered once, and a new family is one registration."""
import pytest
import torch.nn as nn

from mmprune.adapters import (FAMILIES, DetectorFamily, family_of,
                              fixed_output_module, is_two_stage,
                              no_augmentation_epochs, register_family)


@pytest.fixture
def restore_families():
    saved = dict(FAMILIES)
    yield
    FAMILIES.clear()
    FAMILIES.update(saved)
    register_family(next(iter(saved.values())))  # clears the pattern cache


@pytest.mark.parametrize('name, fixed', [
    ('bbox_head.multi_level_conv_cls.0', True),
    ('bbox_head.multi_level_conv_obj.2', True),
    ('bbox_head.retina_reg', True),
    ('bbox_head.atss_centerness', True),
    ('rpn_head.rpn_cls', True),
    ('roi_head.bbox_head.fc_reg', True),
    ('bbox_head.multi_level_cls_convs.0.0.conv', False),
    ('bbox_head.cls_convs.3.conv', False),
    ('roi_head.bbox_head.shared_fcs.1', False),
    ('backbone.layer1.0.conv1', False),
])
def test_prediction_layers_come_from_the_families(name, fixed):
    assert fixed_output_module(name, nn.Identity()) is fixed


def test_real_detectors_find_their_family(mmdet_config, mmdet_registry):
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    want = {
        'yolox/yolox_tiny_8xb8-300e_coco.py': ('yolox', False),
        'retinanet/retinanet_r18_fpn_1x_coco.py': ('one_stage', False),
        'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py': ('two_stage', True),
    }
    with DefaultScope.overwrite_default_scope('mmdet'):
        for path, (family, two) in want.items():
            cfg = mmdet_config(path)
            cfg.model.backbone.init_cfg = None
            model = MODELS.build(cfg.model)
            assert family_of(model).name == family, path
            assert is_two_stage(model) is two, path
    assert family_of(nn.Conv2d(3, 3, 1)) is None
    assert not is_two_stage(nn.Conv2d(3, 3, 1))


def test_a_new_family_is_one_registration(restore_families):
    """A toy 'detector' family: its prediction layers are pinned, models of
    its class find it, its augmentation-switch hook bounds the schedule,
    and the families registered before are untouched."""

    class ToyDet(nn.Module):
        pass

    class ToySwitch:
        num_last_epochs = 3

    assert not fixed_output_module('head.toy_logits', nn.Identity())
    register_family(
        DetectorFamily(
            'toy',
            lambda: (ToyDet, ),
            prediction=(r'toy_logits', ),
            two_stage=True,
            switch_hooks=lambda: (ToySwitch, )))
    assert fixed_output_module('head.toy_logits', nn.Identity())
    assert fixed_output_module('bbox_head.retina_cls', nn.Identity())
    assert family_of(ToyDet()).name == 'toy'
    assert no_augmentation_epochs([ToySwitch(), object()]) == [3]
