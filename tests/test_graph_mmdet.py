"""Channel analysis and exact surgery on real mmdet 3.3.0 detectors.

Every model is built from mmdet's own config (``mmdet::``), traced, pruned
at random (half of every prunable group) and checked: the compact model's
outputs equal the masked model's within 1e-4 of the output scale, in both
residual modes; prediction convs keep their width; the cost model matches a
recount of the compact model and mmengine's complexity counter.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_graph_toy import random_keep, randomise_bn

from mmprune import apis
from mmprune.adapters import (fixed_output_module, tensor_forward,
                              tensor_outputs)
from mmprune.pruners import apply_compact, build_mask, scatter_index

CONFIGS = {
    'yolox_nano': 'mmdet::yolox/yolox_nano_8xb8-300e_coco.py',
    'yolox_tiny': 'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py',
    'yolox_s': 'mmdet::yolox/yolox_s_8xb8-300e_coco.py',
    'yolox_l': 'mmdet::yolox/yolox_l_8xb8-300e_coco.py',
    'retinanet_r18': 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py',
    'retinanet_r50': 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'faster_rcnn_r50': 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    # a one-stage detector with a GroupNorm head (32 groups of 8)
    'atss_r50': 'mmdet::atss/atss_r50_fpn_1x_coco.py',
}


def build(name, **backbone):
    import warnings

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from mmprune.utils.offline import check_offline_weights
    register_all_modules()
    cfg = apis.load_config(CONFIGS[name])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        check_offline_weights(cfg)
    cfg.model.backbone.update(backbone)
    torch.manual_seed(0)
    return randomise_bn(MODELS.build(cfg.model)).eval()


def outputs(model, size=(128, 128)):
    return tensor_outputs(model, size, seed=1)


def check_equivalence(model, graph, keep):
    """Masked == compact within 1e-4 of each output's scale; two-stage
    detectors stage by stage on the masked model's proposals (the RPN's
    NMS turns 1e-7 noise into other proposals, mmprune/adapters/
    compare.py)."""
    from mmprune.adapters import reference_outputs
    from mmprune.adapters.compare import _stage_outputs
    from mmprune.adapters.detector import dummy_batch
    masked = copy.deepcopy(model)
    build_mask(masked, graph, keep).apply(masked)
    compact = copy.deepcopy(model)
    apply_compact(compact, graph, keep)
    ref = reference_outputs(masked, (128, 128), seed=1)
    a = ref['outputs']
    if 'proposals' in ref:
        compact.eval()
        with torch.no_grad():
            x, samples = dummy_batch(compact, (128, 128), 1, 1)
            b = _stage_outputs(compact, compact.extract_feat(x),
                               ref['proposals'], samples)
    else:
        b = outputs(compact)
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert x.shape == y.shape
        scale = x.abs().max().clamp_min(1e-6)
        assert (x - y).abs().max() / scale <= 1e-4
    return compact


def prediction_layers(model):
    return {
        n: m.weight.shape
        for n, m in model.named_modules()
        if fixed_output_module(n, m) and hasattr(m, 'weight')
    }


@pytest.mark.parametrize('mode', ['coupled', 'fine'])
@pytest.mark.parametrize('name', list(CONFIGS))
def test_masked_equals_compact(name, mode):
    kw = {} if name.startswith('yolox') else dict(frozen_stages=-1)
    model = build(name, **kw)
    graph = apis.analyze(model, mode)
    keep = random_keep(graph, 0.5, seed=0)
    compact = check_equivalence(model, graph, keep)
    dense_pred, pruned_pred = prediction_layers(model), \
        prediction_layers(compact)
    assert dense_pred and dense_pred.keys() == pruned_pred.keys()
    for n in dense_pred:  # prediction widths never change
        assert dense_pred[n][0] == pruned_pred[n][0], n
    assert sum(p.numel() for p in compact.parameters()) < \
        0.8 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('name', ['yolox_tiny', 'retinanet_r18'])
def test_cost_model_matches_mmengine_counter(name):
    from mmengine.analysis import get_model_complexity_info
    model = build(
        name, **({} if name.startswith('yolox') else dict(frozen_stages=-1)))
    graph = apis.analyze(model)
    keep = random_keep(graph, 0.5, seed=1)
    size = (256, 256)
    predicted = apis.cost_model(model, size).flops(graph, keep)
    compact = copy.deepcopy(model)
    apply_compact(compact, graph, keep)
    ours = apis.cost_model(compact, size).flops()
    assert ours == predicted
    info = get_model_complexity_info(
        compact, input_shape=(3, ) + size, show_table=False, show_arch=False)
    theirs = info['flops']
    assert abs(ours - theirs) / theirs < 0.01, (ours, theirs)


def test_frozen_stages_are_pinned_and_logged(caplog):
    model = build('retinanet_r18')  # mmdet default: frozen_stages=1
    with caplog.at_level('INFO', logger='mmprune'):
        graph = apis.analyze(model)
    assert graph.group('backbone.conv1').prunable == 0
    assert graph.group('backbone.layer1.0.conv1').prunable == 0
    assert graph.group('backbone.layer2.0.conv1').prunable > 0
    assert 'frozen' in caplog.text and 'backbone.conv1' in caplog.text


def test_fine_mode_resnet_stream_stays_full_width():
    model = build('retinanet_r18', frozen_stages=-1)
    graph = apis.analyze(model, 'fine')
    keep = random_keep(graph, 0.5, seed=2)
    compact = check_equivalence(model, graph, keep)
    blk = compact.backbone.layer2[1]
    assert blk.conv2.out_channels < 128  # the writer is smaller ...
    assert blk.conv1.in_channels == 128  # ... the stream is not
    assert len(scatter_index(blk.bn2)) == blk.conv2.out_channels
    assert compact.neck.lateral_convs[0].conv.in_channels == 128  # layer2


def _snapshot(graph):
    return {
        g.name:
        dict(
            width=g.width,
            prunable=g.prunable,
            producers=sorted(m.module for m in g.producers()),
            consumers=sorted({
                m.module
                for m in g.members
                if m.axis == 'in' and m.kind in ('conv', 'linear')
            }))
        for g in graph.groups
    }


def test_yolox_tiny_groups_are_pinned():
    """Hand-checked against the coupling table (docs/methods.md §0.3); the full
    snapshot in tests/data/expected_groups catches any drift."""
    import json
    import os.path as osp
    snap = _snapshot(apis.analyze(build('yolox_tiny')))
    b = 'backbone.stage{}.1.'
    # CSP residual stream (stages 1-3, add_identity=True): main_conv plus
    # every block's conv2 share one group
    assert snap[b.format(2) + 'main_conv.conv']['producers'] == sorted(
        [b.format(2) + 'main_conv.conv'] +
        [b.format(2) + f'blocks.{i}.conv2.conv' for i in range(3)])
    # stage 4 (after SPP, add_identity=False): every conv is its own group
    assert snap['backbone.stage4.2.blocks.0.conv2.conv']['producers'] == [
        'backbone.stage4.2.blocks.0.conv2.conv'
    ]
    # SPP: conv1 -> conv2 only (the 4 concatenated slices, see toy test)
    assert snap['backbone.stage4.1.conv1.conv']['consumers'] == [
        'backbone.stage4.1.conv2.conv'
    ]
    # reduce_layers feed a top-down and a bottom-up block
    assert snap['neck.reduce_layers.0.conv']['consumers'] == sorted([
        f'neck.{p}.{m}.conv'
        for p in ('bottom_up_blocks.1', 'top_down_blocks.0')
        for m in ('main_conv', 'short_conv')
    ])
    # out_convs feed both decoupled head branches
    assert snap['neck.out_convs.0.conv']['consumers'] == [
        'bbox_head.multi_level_cls_convs.0.0.conv',
        'bbox_head.multi_level_reg_convs.0.0.conv'
    ]
    # the last reg conv feeds conv_reg and conv_obj
    assert snap['bbox_head.multi_level_reg_convs.0.1.conv']['consumers'] == [
        'bbox_head.multi_level_conv_obj.0', 'bbox_head.multi_level_conv_reg.0'
    ]
    for lvl in range(3):  # prediction convs never prune
        for k in ('cls', 'reg', 'obj'):
            assert snap[f'bbox_head.multi_level_conv_{k}.{lvl}'][
                'prunable'] == 0
    want = json.load(
        open(
            osp.join(
                osp.dirname(__file__), 'data', 'expected_groups',
                'yolox_tiny_coupled.json')))
    assert snap == want


def test_retinanet_r18_groups_are_pinned():
    """Hand-checked against docs/methods.md §0.4."""
    import json
    import os.path as osp
    snap = _snapshot(apis.analyze(build('retinanet_r18')))
    # stage stream: downsample + every BasicBlock conv2 in the stage
    assert snap['backbone.layer3.0.conv2']['producers'] == [
        'backbone.layer3.0.conv2', 'backbone.layer3.0.downsample.0',
        'backbone.layer3.1.conv2'
    ]
    assert 'neck.lateral_convs.1.conv' in \
        snap['backbone.layer3.0.conv2']['consumers']
    # stem couples with layer1's stream (no downsample); frozen_stages=1
    assert snap['backbone.conv1']['prunable'] == 0
    # FPN: laterals summed top-down are one group; fpn outputs feed a head
    # shared across levels, so they are one group too (P6 reads C5, P7 P6)
    assert snap['neck.lateral_convs.0.conv']['producers'] == [
        f'neck.lateral_convs.{i}.conv' for i in range(3)
    ]
    assert snap['neck.fpn_convs.0.conv']['producers'] == [
        f'neck.fpn_convs.{i}.conv' for i in range(5)
    ]
    assert snap['neck.fpn_convs.0.conv']['consumers'] == [
        'bbox_head.cls_convs.0.conv', 'bbox_head.reg_convs.0.conv',
        'neck.fpn_convs.4.conv'
    ]
    assert snap['bbox_head.retina_cls']['prunable'] == 0
    assert snap['bbox_head.retina_reg']['prunable'] == 0
    want = json.load(
        open(
            osp.join(
                osp.dirname(__file__), 'data', 'expected_groups',
                'retinanet_r18_coupled.json')))
    assert snap == want


def test_faster_rcnn_roi_flatten_maps_channels_to_fc_columns():
    """RoIAlign 7x7 + flatten: FPN channel c owns shared_fcs.0 columns
    [49c, 49c + 49)."""
    graph = apis.analyze(build('faster_rcnn_r50'))
    grp = graph.group('neck.fpn_convs.0.conv')
    fc = [
        m for m in grp.members if m.module == 'roi_head.bbox_head.'
        'shared_fcs.0' and m.axis == 'in'
    ]
    assert len(fc) == 1
    for c in (0, 5, 255):
        assert sorted(fc[0].positions[fc[0].group_index == c]) == list(
            range(49 * c, 49 * c + 49))
    # the RPN's prediction convs are fixed, its shared conv is not
    assert graph.group('rpn_head.rpn_cls').prunable == 0
    assert graph.group('rpn_head.rpn_conv').prunable > 0


def test_yolox_fine_mode_onnx(tmp_path):
    """A fine-mode compact YOLOX exports to ONNX and onnxruntime agrees."""
    import warnings

    import onnxruntime as ort
    model = build('yolox_tiny')
    graph = apis.analyze(model, 'fine')
    assert any('blocks.0.conv2' in s for s in graph.scatter)
    apply_compact(model, graph, random_keep(graph, 0.5, seed=3))
    fn, x = tensor_forward(model, (128, 128), seed=1)  # as outputs()
    path = str(tmp_path / 'yolox_fine.onnx')

    class Wrap(nn.Module):

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, t):
            return tuple(
                o for lvl in self.m(t, None, mode='tensor') for o in lvl)

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        # eval() first: the exporter restores the wrapper's train flag
        # onto the detector afterwards
        torch.onnx.export(
            Wrap(model).eval(), (x[0], ), path, dynamo=False, opset_version=17)
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = sess.run(None, {sess.get_inputs()[0].name: x[0].numpy()})
    want = outputs(model)
    for a, b in zip(got, want):
        b = b.numpy()
        assert np.abs(a - b).max() <= 1e-4 * max(np.abs(b).max(), 1e-6)


def test_bpc_scores_only_the_groups_it_prunes_on_faster_rcnn():
    """HRank (one of BPC's criteria) has no score for the RoI head's fully
    connected groups; BPC excludes ``^roi_head``, so the hook asks only for
    the groups it prunes (``Criterion.score(..., names)``) and never for
    those (the shipped BPC Faster R-CNN configs stopped at their cut)."""
    from mmprune.criteria import HRankCriterion
    from mmprune.methods import filter_groups, get_method
    model = build('faster_rcnn_r50')
    graph = apis.analyze(model)
    crit = HRankCriterion()
    crit.attach(model, graph)
    fn, x = tensor_forward(model, (128, 128))
    with torch.no_grad():
        fn(*x)
    roi = [
        g.name for g in graph.prunable_groups()
        if g.name.startswith('roi_head')
    ]
    assert roi  # the RoI head's fc groups are prunable in general...
    with pytest.raises(RuntimeError, match='no spatial output'):
        crit.score(model, graph)  # ...and HRank cannot score them
    names = filter_groups(graph, **get_method('bpc').groups)
    scores = crit.score(model, graph, names)
    crit.detach()
    assert sorted(scores) == sorted(names) and not set(roi) & set(scores)
    assert all(torch.isfinite(s).all() for s in scores.values())


@pytest.mark.parametrize('name',
                         ['yolox_tiny', 'retinanet_r50', 'faster_rcnn_r50'])
def test_fine_mode_has_no_fallbacks(name):
    """Every writer into a residual sum of YOLOX and ResNet detectors is
    scattered in fine mode: nothing falls back to coupling or pinning
    (a fallback is logged, tests/test_allocators.py)."""
    kw = {} if name.startswith('yolox') else dict(frozen_stages=-1)
    graph = apis.analyze(build(name, **kw), 'fine')
    assert graph.scatter and graph.fine_fallbacks == []


def test_gcp_frs_leaves_yolox_csp_stream_sources_alone():
    """issue 14 item 6: in fine mode GCP-FRS prunes the bottleneck writers
    and leaves the CSP stream sources (``main_conv``, the identity side of
    the first bottleneck's add) alone, found from the graph structure."""
    import re

    from mmprune.methods import filter_groups, get_method
    graph = apis.analyze(build('yolox_tiny'), 'fine')
    names = set(filter_groups(graph, **get_method('gcp_frs').groups))
    assert 'exclude' not in get_method('gcp_frs').groups or not any(
        'main_conv' in p or 'downsample' in p
        for p in get_method('gcp_frs').groups['exclude'])
    # backbone CSP layers add their bottlenecks (add_identity=True)
    sources = [
        g.name for g in graph.prunable_groups()
        if re.match(r'backbone\.stage\d\.\d\.main_conv\.conv$', g.name)
    ]
    writers = [
        g.name for g in graph.prunable_groups()
        if re.match(r'backbone\.stage\d\.\d\.blocks\.\d\.conv2\.conv$', g.name)
    ]
    assert len(sources) == 4 and len(writers) >= 3
    # stages 1-3 add their bottlenecks; stage 4 (after SPP) does not
    adding = [n for n in sources if not n.startswith('backbone.stage4')]
    assert len(adding) == 3
    assert all(graph.stream_sources(graph.group(n)) for n in adding)
    assert not set(adding) & names
    assert 'backbone.stage4.2.main_conv.conv' in names
    assert set(writers) <= names
    # the neck's CSP layers have no adds: their main_conv is an ordinary
    # conv and stays prunable
    assert any(re.match(r'neck\..*main_conv\.conv$', n) for n in names)


def test_resnet_downsample_is_a_stream_source():
    graph = apis.analyze(build('retinanet_r18', frozen_stages=-1), 'fine')
    srcs = {s for g in graph.groups for s in graph.stream_sources(g)}
    assert {f'backbone.layer{i}.0.downsample.1' for i in (2, 3, 4)} <= srcs
    assert not any('conv2' in s or 'bn2' in s for s in srcs)


def test_two_stage_compare_uses_fixed_proposals():
    """issue 17: the RPN's top-k/NMS turns 1e-6 noise into other proposals,
    so two-stage detectors are compared stage by stage on the masked
    model's proposals; the result says so."""
    from mmprune.adapters import compare_with_reference, reference_outputs
    model = build('faster_rcnn_r50', frozen_stages=-1)
    graph = apis.analyze(model)
    keep = random_keep(graph, 0.5, seed=3)
    masked = copy.deepcopy(model)
    build_mask(masked, graph, keep).apply(masked)
    ref = reference_outputs(masked, (128, 128), seed=0)
    assert 'proposals' in ref and 'proposals' in ref['compared_on']
    compact = copy.deepcopy(model)
    apply_compact(compact, graph, keep)
    diff = compare_with_reference(compact, ref)
    assert diff['max_rel_diff'] <= 1e-4 and 'RoI' in diff['compared_on']
    # one-stage: the plain tensor forward
    yolo = build('yolox_tiny')
    ref = reference_outputs(yolo, (128, 128))
    assert 'proposals' not in ref
    assert compare_with_reference(yolo, ref)['max_abs_diff'] == 0
