"""Graph-analysis time vs Torch-Pruning, and realized CPU speedup at a FLOPs
target, for mmdet detectors built from their configs.

    .venv/bin/python benchmarks/graph_and_speed.py \
        [--models yolox_s retinanet_r50]
        [--ratio 0.5] [--out benchmarks/results/graph_and_speed.json]

For each model it reports:
* mmprune ``analyze`` time (trace at 128 px, the default, and at 640 px);
* Torch-Pruning 1.6.1 ``DependencyGraph.build_dependency`` time at 640 px
  (if torch-pruning is installed:
  ``pip install --no-deps torch-pruning==1.6.1``);
* a compact model pruned to ``--ratio`` of the dense *predicted latency*
  (:func:`latency_budget_compact`: measured grid table, cached), with its
  measured ratio;
* dense vs compact (L1, ``--ratio`` FLOPs kept, each allocator setting of
  :data:`SETTINGS`, coupled and fine residual mode) and Torch-Pruning's
  compact model at the same FLOPs (global magnitude,
  :func:`torch_pruning_compact`): MACs and CPU latency at the model's usual
  input size, batch 1, median of N interleaved rounds, and realized
  speedup / FLOPs speedup.
Results are written atomically as JSON with the machine and versions.
"""
import argparse
import copy
import json
import os
import os.path as osp
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

# BudgetAllocator settings compared (L1 scores, same FLOPs target)
SETTINGS = {
    'default':
    dict(type='BudgetAllocator'),  # max_prune_ratio=0.8
    'speed':
    dict(type='BudgetAllocator', max_prune_ratio=0.5, round_to=8),
    # cost-aware global order: expensive channels go first, so fewer
    # channels (and fewer thin layers) are needed for the same FLOPs
    'cost_aware':
    dict(
        type='AdaptiveAllocator',
        cost_weight=1.0,
        max_prune_ratio=0.5,
        round_to=8),
    # the same order by *measured time* saved per channel (pools and
    # activations included, mmprune/costs/latency_table.py), so the FLOPs
    # budget is spent where the device spends its time
    'latency_aware':
    dict(
        type='AdaptiveAllocator',
        cost_weight=1.0,
        cost_measure='latency',
        max_prune_ratio=0.7,
        round_to=16),
    # the same order from the *measured grid* (mmprune/costs/latency_grid.py:
    # per-layer times on a width grid, the cliffs of misaligned widths
    # included), with the `speed` limits: the table a latency budget uses
    'grid_aware':
    dict(
        type='AdaptiveAllocator',
        cost_weight=1.0,
        cost_measure='latency',
        max_prune_ratio=0.5,
        round_to=8,
        table='grid'),
    # FCP's fine residual mode (streams stay whole; writers scatter into
    # them): the default order on the fine graph
    'fine':
    dict(type='BudgetAllocator', residual_mode='fine'),
}


def needs_latency(settings) -> bool:
    """Whether any of ``settings`` orders channels by measured latency."""
    return any(SETTINGS[s].get('cost_measure') == 'latency'
               and SETTINGS[s].get('table') != 'grid' for s in settings
               if s in SETTINGS)


CONFIGS = {
    'yolox_tiny': ('mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', (416, 416)),
    'yolox_s': ('mmdet::yolox/yolox_s_8xb8-300e_coco.py', (640, 640)),
    'yolox_l': ('mmdet::yolox/yolox_l_8xb8-300e_coco.py', (640, 640)),
    'retinanet_r50':
    ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', (800, 1344)),
    'faster_rcnn_r50':
    ('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', (800, 1344)),
    # a one-stage detector whose head uses GroupNorm (pruned by whole groups)
    'atss_r50': ('mmdet::atss/atss_r50_fpn_1x_coco.py', (800, 1344)),
}

#: Torch-Pruning's compact model beside mmprune's (global magnitude, the
#: same FLOPs target, prediction layers ignored: benchmarks/tp_peer.py). It
#: traces at this size: its groups do not depend on the size, and a
#: full-size trace of an 800x1344 detector costs seconds per bisection step
TP_TRACE = (256, 256)


def build(name):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import mmprune  # noqa: F401
    from mmprune.apis import load_config
    from mmprune.utils.offline import check_offline_weights
    register_all_modules()
    cfg = load_config(CONFIGS[name][0])
    check_offline_weights(cfg)
    return MODELS.build(cfg.model).eval()


def latency(fn, x, runs):
    import torch
    with torch.no_grad():
        for _ in range(2):
            fn(x)
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            fn(x)
            ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def latencies(fns, x, runs):
    """Median seconds per forward of each callable, measured in interleaved
    rounds after two warm-up rounds."""
    import torch
    times = {k: [] for k in fns}
    with torch.no_grad():
        for r in range(runs + 2):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn(x)
                if r >= 2:
                    times[k].append(time.perf_counter() - t)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def tp_graph_time(model, size):
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    from mmprune.adapters import flatten_tensors, tensor_forward

    # the same call mmprune traces: a two-stage detector's tensor forward
    # needs data samples with image meta for its RPN
    forward, (x, ) = tensor_forward(model, size)

    def fwd(m, inp):
        return forward(inp)

    t = time.perf_counter()
    tp.DependencyGraph().build_dependency(
        model,
        example_inputs=x,
        forward_fn=fwd,
        output_transform=lambda o: sum(t.sum() for t in flatten_tensors(o)))
    return time.perf_counter() - t


def graph_times(name, model=None):
    """Seconds to analyse ``name``'s graph: mmprune at its default 128 px
    trace and at the model's usual input size, and Torch-Pruning's
    ``build_dependency`` at that size (None when it is not installed)."""
    from mmprune import apis
    size = CONFIGS[name][1]
    model = build(name) if model is None else model
    rec = {}
    t = time.perf_counter()
    apis.analyze(model)
    rec['mmprune_graph_s'] = time.perf_counter() - t
    t = time.perf_counter()
    apis.analyze(model, input_size=size)
    rec['mmprune_graph_s_full_size'] = time.perf_counter() - t
    try:
        rec['torch_pruning_graph_s'] = tp_graph_time(
            copy.deepcopy(model), size)
    except Exception as e:  # noqa: BLE001  (recorded, not hidden)
        # Torch-Pruning may fail on a detector (e.g. the RPN's proposal
        # selection inside a two-stage forward): keep mmprune's numbers
        rec['torch_pruning_graph_s'] = None
        rec['torch_pruning_error'] = f'{type(e).__name__}: {e}'[:500]
    return rec


def torch_pruning_compact(model, ratio, size, dense_flops) -> dict:
    """Torch-Pruning's compact copy of ``model`` at ``ratio`` of the dense
    FLOPs: ``dict(model, allocator, tp_ratio, compact_gmacs)``, or
    ``dict(error=...)`` when it is not installed or cannot prune it (the
    two-stage tensor forward, for one, needs image metas it does not
    pass)."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return dict(error='torch-pruning is not installed')
    from benchmarks.tp_peer import find_ratio, tp_prune
    from mmprune import apis
    try:
        found = find_ratio(
            model, 'magnitude', ratio, size, dense_flops, trace_size=TP_TRACE)
        compact = copy.deepcopy(model)
        tp_prune(compact, 'magnitude', found['ratio'], TP_TRACE)
    except Exception as e:  # noqa: BLE001  (recorded, not hidden)
        return dict(error=f'{type(e).__name__}: {e}'[:500])
    return dict(
        model=compact.eval(),
        allocator='Torch-Pruning 1.6 global magnitude (MetaPruner)',
        tp_ratio=found['ratio'],
        compact_gmacs=apis.cost_model(compact, size).flops() / 1e9)


def measured_grid(model, graph, size, points=5):
    """The torch, batch-1 grid table of ``model`` on this machine (read
    from the cache when timed before with the same settings)."""
    from mmprune.costs.latency_backends import make_backend
    from mmprune.costs.latency_grid import default_cache_dir, measure_grid
    return measure_grid(
        model,
        size,
        1,
        make_backend('torch'),
        graph,
        cache_dir=default_cache_dir(),
        points=points,
        progress=False)


def latency_budget_compact(model,
                           graph,
                           scores,
                           ratio,
                           size,
                           runs,
                           points=5,
                           grid=None) -> dict:
    """mmprune's compact copy at ``ratio`` of the dense *predicted
    latency* (``budget='latency'``, L1, the default order): the measured
    grid table of :mod:`mmprune.costs.latency_grid` (torch eager, batch 1,
    this machine, this thread count; read from the cache when timed before)
    predicts every candidate; up to three rounds of prune, measure (``runs``
    interleaved rounds) and correct the predicted target close the loop.
    Returns ``dict(model, calibration, compact_gmacs, predicted_ratio,
    table_seconds, table_cached)``; the caller times the model again beside
    the others."""
    from mmprune import apis
    from mmprune.allocators import BudgetAllocator
    from mmprune.costs.latency import calibrate_latency
    from mmprune.costs.latency_backends import make_backend
    from mmprune.costs.latency_grid import measured_ratio
    if grid is None:
        grid = measured_grid(model, graph, size, points)
    cost = apis.cost_model(model, size)
    cost.latency = grid
    backend = make_backend('torch')

    def allocate(r):
        return BudgetAllocator(
            r, budget='latency').allocate(model, graph, scores, cost)

    def compact_of(keep):
        compact = copy.deepcopy(model)
        apis.prune(compact, apis.make_plan(graph, keep), graph)
        return compact.eval()

    def measure(keep):
        return measured_ratio(model, compact_of(keep), size, 1, backend, runs)

    # the table alone (round 1), then corrected by what this machine
    # measures (mmprune.costs.latency.calibrate_latency)
    keep, rounds = calibrate_latency(ratio, allocate, measure, rounds=3)
    compact = compact_of(keep)
    return dict(
        calibration=rounds,
        model=compact.eval(),
        allocator=dict(type='BudgetAllocator', budget='latency'),
        residual_mode='coupled',
        compact_gmacs=apis.cost_model(compact, size).flops() / 1e9,
        predicted_ratio=grid.predict(graph, keep) / grid.predict(graph),
        table_seconds=grid.data['meta']['seconds'],
        grid_points=points,
        table_points=grid.data['meta']['points_timed'],
        table_cached=bool(grid.cached))


def run_model(name, ratio, runs, latency_budget=True, grid_points=5):
    from mmprune import apis
    from mmprune.adapters import tensor_forward
    from mmprune.criteria import L1Criterion
    from mmprune.registry import ALLOCATORS, build_from
    size = CONFIGS[name][1]
    model = build(name)
    rec = dict(model=name, input_size=list(size))
    rec.update(graph_times(name, model))
    graph = apis.analyze(model)
    cost = apis.cost_model(model, size, latency=needs_latency(SETTINGS))
    rec['dense_gmacs'] = cost.flops() / 1e9
    fn_d, x = tensor_forward(model, size)
    scores = L1Criterion().score(model, graph)
    fns = {'dense': fn_d}
    rec['settings'] = {}
    grid = None
    if latency_budget or any(
            kw.get('table') == 'grid' for kw in SETTINGS.values()):
        grid = measured_grid(model, graph, size, grid_points)
        grid_cost = apis.cost_model(model, size)
        grid_cost.latency = grid
    graphs, all_scores = {'coupled': graph}, {'coupled': scores}
    for label, kw in SETTINGS.items():
        kw = dict(kw)
        mode = kw.pop('residual_mode', 'coupled')
        on_grid = kw.pop('table', None) == 'grid'
        if mode not in graphs:
            graphs[mode] = apis.analyze(model, mode)
            all_scores[mode] = L1Criterion().score(model, graphs[mode])
        g = graphs[mode]
        alloc = build_from(ALLOCATORS, dict(kw, ratio=ratio), 'allocator')
        keep = alloc.allocate(model, g, all_scores[mode],
                              grid_cost if on_grid else cost)
        compact = copy.deepcopy(model)
        apis.prune(compact, apis.make_plan(g, keep), g)
        rec['settings'][label] = dict(
            allocator=kw,
            residual_mode=mode,
            compact_gmacs=apis.cost_model(compact, size).flops() / 1e9)
        fns[label] = tensor_forward(compact, size)[0]
    if latency_budget:
        rec['settings']['latency_budget'] = r = latency_budget_compact(
            model, graph, scores, ratio, size, runs, grid_points, grid)
        fns['latency_budget'] = tensor_forward(r.pop('model'), size)[0]
    tp = torch_pruning_compact(model, ratio, size, rec['dense_gmacs'] * 1e9)
    if 'error' in tp:
        rec['torch_pruning_prune_error'] = tp['error']
    else:
        fns['torch_pruning'] = tensor_forward(tp.pop('model'), size)[0]
        rec['settings']['torch_pruning'] = tp
    # interleaved rounds: every variant sees the same machine noise
    lat = latencies(fns, x[0], runs)
    rec['dense_latency_s'] = lat['dense']
    for label, r in rec['settings'].items():
        r['compact_latency_s'] = lat[label]
        r['flops_speedup'] = rec['dense_gmacs'] / r['compact_gmacs']
        r['realized_speedup'] = lat['dense'] / lat[label]
        r['realized_over_flops'] = r['realized_speedup'] / \
            r['flops_speedup']
    if latency_budget:
        r = rec['settings']['latency_budget']
        r['measured_ratio'] = lat['latency_budget'] / lat['dense']
        r['measured_over_target'] = r['measured_ratio'] / ratio
    return rec


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        '--models',
        nargs='+',
        default=['yolox_s', 'retinanet_r50'],
        choices=sorted(CONFIGS))
    p.add_argument('--ratio', type=float, default=0.5)
    p.add_argument(
        '--grid-points',
        type=int,
        default=5,
        help='widths per axis of the latency table (fewer: faster to '
        'measure on a large model)')
    p.add_argument(
        '--no-latency-budget',
        action='store_true',
        help='skip the latency-budget model (its grid table is timed '
        'first, or read from the cache)')
    p.add_argument('--runs', type=int, default=5)
    p.add_argument(
        '--threads',
        type=int,
        default=1,
        help='torch intra-op threads for the latency runs (1 is '
        'the least sensitive to other load on the machine)')
    p.add_argument('--out', default='benchmarks/results/graph_and_speed.json')
    a = p.parse_args()
    import mmdet
    import torch
    torch.set_num_threads(a.threads)
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'],
                            capture_output=True,
                            text=True).stdout.strip()
    res = dict(
        machine=dict(
            platform=platform.platform(),
            cpus=os.cpu_count(),
            processor=platform.processor()),
        versions=dict(torch=torch.__version__, mmdet=mmdet.__version__),
        commit=commit,
        ratio=a.ratio,
        threads=a.threads,
        runs=a.runs,
        results=[])
    for m in a.models:
        r = run_model(m, a.ratio, a.runs, not a.no_latency_budget,
                      a.grid_points)
        print(json.dumps(r))
        res['results'].append(r)
    os.makedirs(osp.dirname(a.out) or '.', exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=osp.dirname(a.out) or '.')
    with os.fdopen(fd, 'w') as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, a.out)


if __name__ == '__main__':
    main()
