"""Realized speedup of allocator variants on one model, with and without
BN folded into the convs, and with the SPP group also halved.

    .venv/bin/python benchmarks/speed_variants.py [--model yolox_s]
        [--runs 7] [--out benchmarks/results/speed_variants_yolox_s.json]

Every variant prunes ``--model`` (L1 scores) to 50 % of its FLOPs; they
differ in the allocator limits (``max_prune_ratio``, ``round_to``) and in
the order (global budget vs cost-aware, where ``latency_aware`` orders by
the time a channel saves, from a latency table measured here first, see
``mmprune/costs/latency_table.py``). ``+spp`` takes the cost-aware plan
at 0.53 and halves the group feeding YOLOX's SPP max-pools (which a
FLOPs-only allocator keeps whole; see ``op_profile.py``), 0.52 of the
FLOPs in all. ``fused`` folds BN into the convs (``mmcv.cnn.fuse_conv_bn``,
what mmdet's ``--fuse-conv-bn`` does) in the dense and compact models
alike. All variants are timed in the same interleaved rounds (batch 1, one
thread); the figure of merit is realized speedup / FLOPs speedup.
"""
import argparse
import copy
import os.path as osp
import sys

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from benchmarks.graph_and_speed import SETTINGS  # noqa: E402

# graph_and_speed's settings with other limits (mpr: max_prune_ratio,
# r: round_to)
VARIANTS = {
    'budget_mpr0.5_r8':
    SETTINGS['speed'],
    'budget_mpr0.5_r16':
    dict(SETTINGS['speed'], round_to=16),
    'budget_mpr0.4_r16':
    dict(SETTINGS['speed'], max_prune_ratio=0.4, round_to=16),
    'cost_aware_r16':
    dict(SETTINGS['cost_aware'], round_to=16),
    'latency_aware_mpr0.5_r16':
    dict(SETTINGS['latency_aware'], max_prune_ratio=0.5),
    'latency_aware_mpr0.7_r16':
    SETTINGS['latency_aware'],
}
SPP_GROUP = 'backbone.stage4.1.conv1.conv'  # YOLOX CSPDarknet's SPP input


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='yolox_s')
    p.add_argument('--runs', type=int, default=7)
    p.add_argument('--out')
    args = p.parse_args(argv)
    import torch
    from mmcv.cnn import fuse_conv_bn

    from benchmarks.env import environment
    from benchmarks.graph_and_speed import CONFIGS, build
    from mmprune import apis
    from mmprune.adapters import tensor_forward
    from mmprune.costs.latency import measure_latency
    from mmprune.criteria import L1Criterion
    from mmprune.registry import ALLOCATORS, build_from
    from mmprune.utils.io import write_json_atomic
    torch.set_num_threads(1)
    size = CONFIGS[args.model][1]
    dense = build(args.model).eval()
    graph = apis.analyze(dense)
    cost = apis.cost_model(dense, size, latency=True)
    scores = L1Criterion().score(dense, graph)

    def allocate(cfg, ratio):
        return dict(
            build_from(ALLOCATORS, dict(cfg, ratio=ratio),
                       'allocator').allocate(dense, graph, scores, cost))

    plans = {k: allocate(v, 0.5) for k, v in VARIANTS.items()}
    if any(g.name == SPP_GROUP for g in graph.prunable_groups()):
        keep = allocate(VARIANTS['cost_aware_r16'], 0.53)
        s = scores[SPP_GROUP].numpy()
        keep[SPP_GROUP] = np.sort(np.argsort(-s)[:len(s) // 2])
        plans['cost_aware_r16+spp'] = keep
    models = {'dense': dense}
    for name, keep in plans.items():
        models[name] = copy.deepcopy(dense)
        apis.prune(models[name], apis.make_plan(graph, keep), graph)
    fns = {}
    for name, model in models.items():
        for tag, m in (('', model), ('/fused',
                                     fuse_conv_bn(copy.deepcopy(model)))):
            fn, xs = tensor_forward(m.eval(), size)
            fns[name + tag] = (lambda fn=fn, xs=xs: fn(*xs))
    lat = measure_latency(fns, runs=args.runs, warmup=1)
    rows = []
    for name in plans:
        flops_speedup = cost.flops() / apis.cost_model(models[name],
                                                       size).flops()
        for tag in ('', '/fused'):
            d = lat['dense' + tag]['median_ms']
            c = lat[name + tag]['median_ms']
            rows.append(
                dict(
                    variant=name,
                    bn_fused=bool(tag),
                    flops_ratio=round(1 / flops_speedup, 4),
                    dense_ms=round(d, 1),
                    compact_ms=round(c, 1),
                    speedup=round(d / c, 3),
                    speedup_over_flops_speedup=round(d / c / flops_speedup,
                                                     3)))
    rec = dict(
        model=args.model,
        input_size=list(size),
        runs=args.runs,
        variants=VARIANTS,
        spp_group=SPP_GROUP,
        rows=rows,
        env=environment())
    out = args.out or osp.join('benchmarks', 'results',
                               f'speed_variants_{args.model}.json')
    write_json_atomic(rec, out)
    for r in rows:
        print(f"{r['variant']:22s} {'fused' if r['bn_fused'] else '     '}"
              f" FLOPs {r['flops_ratio']:.3f}  {r['dense_ms']:7.1f} -> "
              f"{r['compact_ms']:7.1f} ms  {r['speedup']:.2f}x  / FLOPs "
              f"{r['speedup_over_flops_speedup']:.3f}")
    return rec


if __name__ == '__main__':
    main()
