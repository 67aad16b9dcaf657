"""Latency as the budget (issue 13): is a compact model's measured latency
within 5 % of a 0.5 latency budget, on torch eager and onnxruntime, at
batch 1 and 8?

Each *cell* (model, input size, backend, batch) runs what a user runs:

1. ``tools/analysis/latency_table.py CONFIG --backend B --batch N
   --input-size H W --points P --level-runs L --out TABLE`` (per-layer
   times on a width grid, leveled by a half-width copy timed beside the
   dense model; the seconds it took go into the result);
2. ``tools/prune.py CONFIG --latency-ratio 0.5 --latency-table TABLE
   --calibrate-rounds 3 --latency-runs R --round-to 8``: allocate to the
   predicted target, time the compact model beside the dense one, correct
   the target (``mmprune.costs.latency.calibrate_latency``), and at the
   end time the chosen compact model again in fresh interleaved rounds.

The number to read is that last, independent check: the median of the
per-round compact/dense ratios with its distribution-free 95 % interval
(``mmprune.costs.latency.paired_ratio``). "Within 5 %" is PASS when the
whole interval lies in [0.475, 0.525], FAIL when the whole interval lies
outside, and "cannot tell" when the interval straddles an edge: on a shared
2-core VM the same model timed twice can move by more than the band. The
1-minute load average before and after each cell is recorded (``load``):
above 1, another process shared the cores while it was timed.

Each cell runs in its own process with one intra-op thread and writes
``<out>/<cell>.json`` atomically; ``--resume`` skips cells already there.
``--report`` (re)writes ``<out>/results.md`` from the JSON files.

    OMP_NUM_THREADS=1 python benchmarks/latency_budget.py --resume
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: model -> (config, input sizes by batch). RetinaNet-R50 at 800x1344 costs
#: ~7 s per image on one core, so batch 8 runs at 512x512 (a forward of
#: ~14 s) to keep a cell within minutes; the size is in the result.
MODELS = dict(
    yolox_s=('mmdet::yolox/yolox_s_8xb8-300e_coco.py', {
        1: (640, 640),
        8: (640, 640)
    }),
    retinanet_r50=('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', {
        1: (800, 1344),
        8: (512, 512)
    }))
BACKENDS = ('torch', 'onnxruntime')
BATCHES = (1, 8)
TARGET = 0.5
TOLERANCE = 0.05


def cell_id(model: str, backend: str, batch: int) -> str:
    return f'{model}_{backend}_b{batch}'


def run_cell(model, backend, batch, args) -> dict:
    """Measure the table, prune with calibration, keep the report's
    latency section and the table's cost."""
    from mmprune.utils.io import write_json_atomic
    config, sizes = MODELS[model]
    h, w = sizes[batch]
    cid = cell_id(model, backend, batch)
    work = osp.join(args.work_dir, cid)
    os.makedirs(work, exist_ok=True)
    table = osp.join(work, 'table.json')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    load_before = os.getloadavg()[0]
    py = sys.executable
    size = ['--input-size', str(h), str(w)]
    t0 = time.perf_counter()
    subprocess.run(
        [
            py,
            osp.join(ROOT, 'tools', 'analysis', 'latency_table.py'), config,
            '--backend', backend, '--batch',
            str(batch), '--points',
            str(args.points), '--level-runs',
            str(args.level_runs), '--threads', '1', '--no-cache',
            '--no-progress', '--out', table
        ] + size,
        check=True,
        env=env)
    table_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(
        [
            py,
            osp.join(ROOT, 'tools', 'prune.py'), config, '--latency-ratio',
            str(TARGET), '--latency-table', table, '--calibrate-rounds',
            str(args.calibrate_rounds), '--latency-runs',
            str(args.runs), '--round-to', '8', '--work-dir', work
        ] + size,
        check=True,
        env=env)
    prune_s = time.perf_counter() - t0
    with open(osp.join(work, 'report.json')) as f:
        report = json.load(f)
    with open(table) as f:
        meta = json.load(f)['meta']
    lat = report['latency']
    res = dict(
        cell=cid,
        model=model,
        config=config,
        backend=backend,
        batch=batch,
        input_size=[h, w],
        target=TARGET,
        tolerance=TOLERANCE,
        table_seconds=meta['seconds'],
        table_points_timed=meta['points_timed'],
        # the two-point level (mmprune.costs.latency_grid.level_grid)
        table_level=meta.get('level'),
        table_wall_s=table_s,
        prune_wall_s=prune_s,
        predicted_ratio=lat['predicted_ms'] / lat['dense_predicted_ms'],
        calibration=lat.get('calibration'),
        measured_ratio=lat.get('measured_ratio'),
        measured_ratio_interval=lat.get('measured_ratio_interval'),
        within=lat.get('within_5pct'),
        dense_ms=lat.get('dense_measured_ms'),
        compact_ms=lat.get('measured_ms'),
        runs=lat.get('runs'),
        flops_ratio=report['flops_ratio'],
        max_rel_diff=report['max_rel_diff'],
        # 1-minute load average before the table and after the check: a
        # load above 1 means another process shared the timing cores
        loadavg=[load_before, os.getloadavg()[0]])
    write_json_atomic(res, osp.join(args.out, cid + '.json'), indent=1)
    return res


def _verdict(v) -> str:
    return {True: '**PASS**', False: '**FAIL**'}.get(v, 'cannot tell')


def _fixed(r: dict) -> str:
    lv = r.get('table_level')
    return '–' if not lv else f"{lv['other_share']:.1%}"


def _load(r: dict) -> str:
    la = r.get('loadavg')
    return '–' if not la else f'{la[0]:.1f}–{la[1]:.1f}'


def write_report(out: str) -> str:
    """``results.md`` from every cell JSON in ``out``."""
    from mmprune.utils.io import write_text_atomic
    rows = []
    for path in sorted(glob.glob(osp.join(out, '*.json'))):
        with open(path) as f:
            r = json.load(f)
        if 'cell' in r:
            rows.append(r)
    L = [
        '# Latency budget 0.5: measured vs target', '',
        'Written by `benchmarks/latency_budget.py --report`. One thread, '
        'the table timed by `tools/analysis/latency_table.py`, the plan by '
        '`tools/prune.py --latency-ratio 0.5 --calibrate-rounds 3`; '
        '"final check" is a fresh interleaved timing of the chosen compact '
        'model beside the dense one: median of per-round ratios [95 % '
        'interval]. "fixed share": the time no width changes, as the '
        "table's two-point level found it (– : no level).", '',
        '| model | backend | batch | input | table s (points) | fixed share '
        '| predicted | '
        'calibration rounds (measured) | final check | within 5 % | FLOPs '
        'kept | dense ms | load |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|'
    ]
    for r in rows:
        cal = ', '.join(f"{c['measured_ratio']:.3f}"
                        for c in r.get('calibration') or []) or '–'
        iv = r.get('measured_ratio_interval') or [None, None]
        final = 'n/a' if r.get('measured_ratio') is None else (
            f"{r['measured_ratio']:.3f}" +
            (f' [{iv[0]:.3f}, {iv[1]:.3f}]' if iv[0] is not None else ''))
        L.append(f"| {r['model']} | {r['backend']} | {r['batch']} | "
                 f"{r['input_size'][0]}×{r['input_size'][1]} | "
                 f"{r['table_seconds']:.0f} ({r['table_points_timed']}) | "
                 f'{_fixed(r)} | '
                 f"{r['predicted_ratio']:.3f} | {cal} | {final} | "
                 f"{_verdict(r.get('within'))} | {r['flops_ratio']:.3f} | "
                 f"{r['dense_ms']:.0f} | {_load(r)} |")
    path = osp.join(out, 'results.md')
    write_text_atomic(path, '\n'.join(L) + '\n')
    return path


def _done(path: str) -> bool:
    try:
        with open(path) as f:
            return 'cell' in json.load(f)
    except (OSError, ValueError):
        return False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument(
        '--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    p.add_argument(
        '--backends', nargs='+', default=list(BACKENDS), choices=BACKENDS)
    p.add_argument(
        '--batches',
        nargs='+',
        type=int,
        default=list(BATCHES),
        choices=BATCHES)
    p.add_argument('--points', type=int, default=3, help='grid points/axis')
    p.add_argument('--runs', type=int, default=10, help='timing rounds')
    p.add_argument(
        '--level-runs',
        type=int,
        default=6,
        help="the table's two-point level: rounds of a half-width copy "
        'beside the dense model (0: proportional)')
    p.add_argument('--calibrate-rounds', type=int, default=3)
    p.add_argument(
        '--out',
        default=osp.join(ROOT, 'benchmarks', 'results', 'latency_budget'))
    p.add_argument(
        '--work-dir',
        default=osp.join(ROOT, 'work_dirs', 'bench', 'latency_budget'))
    p.add_argument('--resume', action='store_true')
    p.add_argument(
        '--report', action='store_true', help='only rewrite results.md')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if not args.report:
        for model in args.models:
            for batch in args.batches:
                for backend in args.backends:
                    cid = cell_id(model, backend, batch)
                    if args.resume and _done(
                            osp.join(args.out, cid + '.json')):
                        continue
                    print(f'[latency_budget] {cid}', flush=True)
                    r = run_cell(model, backend, batch, args)
                    print(
                        f"[latency_budget] {cid}: measured "
                        f"{r['measured_ratio']} {r['measured_ratio_interval']}"
                        f" within={r['within']}",
                        flush=True)
    print(f'[latency_budget] report: {write_report(args.out)}')


if __name__ == '__main__':
    main()
