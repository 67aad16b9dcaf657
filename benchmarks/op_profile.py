"""Where the time goes: per-op CPU time of a dense and a compact detector.

    .venv/bin/python benchmarks/op_profile.py [--model yolox_s] [--ratio 0.5]
        [--runs 3] [--out benchmarks/results/op_profile_yolox_s.json]

Prunes ``--model`` (built from its mmdet config, see ``graph_and_speed``)
to ``--ratio`` of its FLOPs with L1 scores and the cost-aware allocator,
then profiles both tensor forwards (batch 1, one thread) with
``torch.profiler`` and reports each aten op's self time, its share of the
dense time and its own speedup. Ops whose time does not fall with the
FLOPs (pooling, slow conv paths) are why the realized speedup trails the
FLOPs ratio. Written atomically as JSON with the machine and versions.
"""
import argparse
import copy
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

ALLOCATOR = dict(
    type='AdaptiveAllocator',
    cost_weight=1.0,
    max_prune_ratio=0.5,
    round_to=16)


def op_times(fn, x, runs):
    """{aten op: mean self CPU ms per forward}."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad():
        fn(x)  # warm-up (oneDNN primitive creation)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                fn(x)
    return {
        e.key: e.self_cpu_time_total / runs / 1e3
        for e in prof.key_averages()
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='yolox_s')
    p.add_argument('--ratio', type=float, default=0.5)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--out')
    args = p.parse_args(argv)
    import torch

    from benchmarks.env import environment
    from benchmarks.graph_and_speed import CONFIGS, build
    from mmprune import apis
    from mmprune.adapters import tensor_forward
    from mmprune.criteria import L1Criterion
    from mmprune.registry import ALLOCATORS, build_from
    from mmprune.utils.io import write_json_atomic
    torch.set_num_threads(1)
    size = CONFIGS[args.model][1]
    dense = build(args.model)
    graph = apis.analyze(dense)
    cost = apis.cost_model(dense, size)
    keep = build_from(ALLOCATORS, dict(ALLOCATOR, ratio=args.ratio),
                      'allocator').allocate(dense, graph,
                                            L1Criterion().score(dense, graph),
                                            cost)
    compact = copy.deepcopy(dense)
    apis.prune(compact, apis.make_plan(graph, keep), graph)
    times = {}
    for tag, model in (('dense', dense), ('compact', compact)):
        fn, (x, ) = tensor_forward(model.eval(), size)
        times[tag] = op_times(fn, x, args.runs)
    total = {k: sum(v.values()) for k, v in times.items()}
    rows = []
    for op in sorted(times['dense'], key=lambda k: -times['dense'][k]):
        d, c = times['dense'][op], times['compact'].get(op, 0.0)
        if d < 0.005 * total['dense']:
            continue
        rows.append(
            dict(
                op=op,
                dense_ms=round(d, 2),
                compact_ms=round(c, 2),
                share=round(d / total['dense'], 3),
                speedup=round(d / c, 2) if c else None))
    flops_speedup = cost.flops() / apis.cost_model(compact, size).flops()
    rec = dict(
        model=args.model,
        input_size=list(size),
        ratio=args.ratio,
        allocator=ALLOCATOR,
        runs=args.runs,
        dense_ms=round(total['dense'], 1),
        compact_ms=round(total['compact'], 1),
        flops_speedup=round(flops_speedup, 3),
        realized_over_flops=round(
            total['dense'] / total['compact'] / flops_speedup, 3),
        ops=rows,
        env=environment())
    out = args.out or osp.join('benchmarks', 'results',
                               f'op_profile_{args.model}.json')
    write_json_atomic(rec, out)
    print(f"{args.model}: {rec['dense_ms']} ms -> {rec['compact_ms']} ms, "
          f"realized / FLOPs speedup {rec['realized_over_flops']}")
    for r in rows:
        print(f"{r['op']:34s} {r['dense_ms']:8.1f} {r['compact_ms']:8.1f}"
              f"  share {r['share']:.2f}  speedup {r['speedup']}")
    return rec


if __name__ == '__main__':
    main()
