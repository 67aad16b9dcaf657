"""The benchmark report: a markdown table and PNG plots from the result
JSON files, with the issue's targets checked (pass/fail, with numbers).

    python benchmarks/report.py [benchmarks/results/quick]

Reads ``<dir>/quality/*.json`` (and ``latency__*.json``),
``<dir>/speed/*.json``, ``<dir>/tools/*.json`` and ``<dir>/env.json``;
writes ``<dir>/results.md`` and ``<dir>/plots/*.png``. Runs alone: nothing
is measured here.

Targets (from the benchmark issue):

* quality, at 50 % FLOPs: the best mmprune method within 1.0 mAP (points,
  x100) of dense, and at least 1.0 mAP above the best peer (L1 uniform,
  Torch-Pruning magnitude and Taylor); means over the seeds;
* speed: realized speedup >= 0.9 x the FLOPs speedup in coupled mode,
  >= 0.85 x in fine mode, checked on every measured row.
"""
import argparse
import glob
import json
import os.path as osp
import statistics
import sys
from collections import OrderedDict
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.methods import (ALL_METHODS, LABELS,  # noqa: E402
                                MMPRUNE_METHODS, PEER_METHODS)

QUALITY_BUDGET = 0.5
DENSE_GAP = 1.0  # mAP points
PEER_MARGIN = 1.0  # mAP points
SPEED_TARGETS = {'coupled': 0.9, 'fine': 0.85}
#: below this dense mAP (points) a quality comparison is not informative
MEANINGFUL_MAP = 1.0


# ------------------------------------------------------------------- load
def _read(path: str) -> dict:
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}: not JSON: {e}') from None


def load_results(results_dir: str) -> dict:
    """Every result file under ``results_dir``, by suite."""
    if not osp.isdir(results_dir):
        raise FileNotFoundError(f'no results folder {results_dir!r} (run '
                                f'benchmarks/run.py first)')
    q_files = sorted(glob.glob(osp.join(results_dir, 'quality', '*.json')))
    env = osp.join(results_dir, 'env.json')
    return dict(
        dir=results_dir,
        env=_read(env) if osp.isfile(env) else None,
        quality=[_read(p) for p in q_files
                 if not osp.basename(p).startswith('latency__')],
        latency={osp.basename(p)[len('latency__'):-5]: _read(p)
                 for p in q_files
                 if osp.basename(p).startswith('latency__')},
        speed=[_read(p) for p in sorted(glob.glob(
            osp.join(results_dir, 'speed', '*.json')))],
        tools=[_read(p) for p in sorted(glob.glob(
            osp.join(results_dir, 'tools', '*.json')))])


# ----------------------------------------------------------- aggregation
def _mean_std(xs: List[float]):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1
                                  else None)


def _group_of(res: dict) -> str:
    return f"{res['model']}__f{round(res['budget'] * 100):02d}"


def quality_rows(results: dict) -> Dict[tuple, List[dict]]:
    """``{(model, budget): [row per method]}``; dense (trained once, at the
    first budget) is the reference row of every budget of its model."""
    by_key = OrderedDict()
    dense = {}
    for r in results['quality']:
        if 'model' not in r or 'method' not in r:
            continue  # not a quality run's result
        if r['method'] == 'dense':
            dense.setdefault(r['model'], []).append(r)
        by_key.setdefault((r['model'], r['budget']), {}).setdefault(
            r['method'], []).append(r)
    lat = {}
    for entry in results['latency'].values():
        lat.update(entry.get('latency', {}))
    tables = OrderedDict()
    for (model, budget) in sorted(by_key, key=lambda k: (k[0], -k[1])):
        methods = dict(by_key[(model, budget)])
        methods['dense'] = dense.get(model, [])
        rows = []
        for method in [m for m in ALL_METHODS if methods.get(m)]:
            runs = methods[method]
            ok = [r for r in runs if r.get('status') == 'ok' and
                  r.get('mAP') is not None]
            row = dict(method=method, label=LABELS.get(method, method),
                       runs=len(runs), ok=len(ok),
                       status=_status(runs), errors=[
                           r.get('error', '') for r in runs
                           if r.get('status') != 'ok'])
            if ok:
                row['mAP'], row['mAP_std'] = _mean_std(
                    [100 * r['mAP'] for r in ok])
                row['AP50'], row['AP50_std'] = _mean_std(
                    [100 * r['AP50'] for r in ok])
                row['flops_g'] = statistics.fmean(r['flops'] / 1e9
                                                  for r in ok)
                row['flops_ratio'] = statistics.fmean(r['flops_ratio']
                                                      for r in ok)
                row['params_m'] = statistics.fmean(r['params'] / 1e6
                                                   for r in ok)
                row['train_s'], row['train_s_std'] = _mean_std(
                    [r['train_wall_s'] for r in ok])
                ms = [lat[r['id']]['median_ms'] for r in ok if r['id'] in lat]
                row['latency_ms'] = statistics.fmean(ms) if ms else None
                row['seeds'] = sorted(r['seed'] for r in ok)
                row['no_detections'] = sum(bool(r.get('no_detections'))
                                           for r in ok)
            rows.append(row)
        d = next((r for r in rows if r['method'] == 'dense'), None)
        for row in rows:
            if d and d.get('latency_ms') and row.get('latency_ms'):
                row['speedup'] = d['latency_ms'] / row['latency_ms']
        tables[(model, budget)] = rows
    return tables


def _status(runs: List[dict]) -> str:
    states = sorted({r.get('status', 'failed') for r in runs})
    return '/'.join(states)


def quality_targets(tables: Dict[tuple, List[dict]]) -> List[dict]:
    """The two quality targets per model at 50 % FLOPs."""
    out = []
    for (model, budget), rows in tables.items():
        if abs(budget - QUALITY_BUDGET) > 1e-9:
            continue
        by = {r['method']: r for r in rows if r.get('mAP') is not None}
        dense = by.get('dense')
        mm = [by[m] for m in MMPRUNE_METHODS if m in by]
        peers = [by[m] for m in PEER_METHODS if m in by]
        best = max(mm, key=lambda r: r['mAP']) if mm else None
        peer = max(peers, key=lambda r: r['mAP']) if peers else None
        rec = dict(model=model, budget=budget,
                   dense=dense and dense['mAP'],
                   best=best and best['method'], best_mAP=best and
                   best['mAP'], peer=peer and peer['method'],
                   peer_mAP=peer and peer['mAP'],
                   seeds=min((len(r.get('seeds', [])) for r in mm + peers +
                              ([dense] if dense else [])), default=0))
        rec['near_dense'] = None if not (best and dense) else \
            best['mAP'] >= dense['mAP'] - DENSE_GAP
        rec['above_peer'] = None if not (best and peer) else \
            best['mAP'] >= peer['mAP'] + PEER_MARGIN
        out.append(rec)
    return out


def speed_rows(results: dict) -> List[dict]:
    rows = []
    for res in results['speed']:
        if res.get('status') != 'ok':
            continue
        for r in res['rows']:
            target = SPEED_TARGETS.get(res['mode'])
            rows.append(dict(
                r, model=res['model'], mode=res['mode'],
                input_size=res['input_size'], target=target,
                onnx_ok=all(o['passed'] for o in res['onnx'].values()),
                passed=None if target is None else
                r['realized_over_flops'] >= target,
                name=f"{res['model']} {res['mode']} {r['setting']} "
                f"{r['backend']} b{r['batch']}"))
    return rows


# --------------------------------------------------------------- format
def _f(v, spec='.1f', std=None) -> str:
    if v is None:
        return 'n/a'
    s = format(v, spec)
    return s + (f' ± {format(std, spec)}' if std is not None else '')


def _verdict(v: Optional[bool]) -> str:
    return 'n/a' if v is None else ('**PASS**' if v else '**FAIL**')


def _env_lines(results: dict) -> List[str]:
    env = results['env'] or {}
    envs = [r.get('env') for suite in ('quality', 'speed', 'tools')
            for r in results[suite] if r.get('env')]
    commits = sorted({(e['git'].get('commit') or '?')[:10] +
                      (' (uncommitted changes)' if e['git'].get('dirty')
                       else '') for e in envs + ([env] if env else [])
                      if e.get('git')})
    m = env.get('machine', {})
    v = env.get('versions', {})
    lines = [
        f"- preset: `{env.get('preset', '?')}`, suites "
        f"{', '.join(env.get('suites', []))}; started {env.get('time', '?')}",
        f"- machine: {m.get('cpu', '?')}, {m.get('cpus', '?')} logical CPUs"
        f", {m.get('memory_gib', '?')} GiB; {m.get('platform', '?')}; "
        f"device `{m.get('device', '?')}`"
        + (f" ({m['gpu']})" if m.get('gpu') else ''),
        f"- runs: {env.get('parallel_jobs', '?')} at a time, "
        f"{env.get('threads', '?')} torch thread(s) each",
        '- versions: ' + ', '.join(f'{k} {val}' for k, val in v.items()
                                   if val),
        f"- git commit(s) of the result files: {', '.join(commits) or '?'}",
    ]
    return lines


def _quality_md(results, tables, targets, plots) -> List[str]:
    L = ['## 1. Quality at equal FLOPs', '']
    if not tables:
        return L + ['No quality results.', '']
    q = next(r for r in results['quality'] if 'data' in r)
    d = q.get('data', {})
    L += [f"Synthetic COCO set ({d.get('difficulty')} profile, "
          f"{d.get('num_train')} train / {d.get('num_val')} val images at "
          f"{d.get('size')} px, {d.get('num_classes')} classes); every run "
          f"of a table trains from scratch for the same epochs (batch "
          f"{q['batch_size']}) with the same recipe; pruning methods cut "
          f"during those epochs (`benchmarks/methods.py`). mAP and AP50 are "
          f"COCO bbox metrics x100 (YOLOX: EMA weights), mean ± std over "
          f"the seeds (no ± with one seed). FLOPs: mmprune's cost model "
          f"(multiply-adds + BN) at the training size. Latency: batch 1, "
          f"torch eager, 1 thread, median of interleaved rounds, no other "
          f"benchmark job running. Train time: wall seconds of the "
          f"training loop without validation (and without the "
          f"Torch-Pruning ratio search), with another run beside it.", '']
    epochs = {}
    for r in results['quality']:
        epochs.setdefault(r['model'], set()).add(r['epochs'])
    for (model, budget), rows in tables.items():
        ep = '/'.join(str(e) for e in sorted(epochs.get(model, ())))
        L += [f'### {model}, {round(budget * 100)} % FLOPs ({ep} epochs)',
              '',
              '| method | mAP | AP50 | GFLOPs (kept) | params (M) | '
              'latency ms (speedup) | train s | seeds | status |',
              '|---|---|---|---|---|---|---|---|---|']
        for r in rows:
            if r['ok']:
                L.append(
                    f"| {r['label']} | {_f(r['mAP'], '.2f', r['mAP_std'])} "
                    f"| {_f(r['AP50'], '.2f', r['AP50_std'])} | "
                    f"{_f(r['flops_g'], '.3f')} "
                    f"({_f(r['flops_ratio'], '.2f')})"
                    f" | {_f(r['params_m'], '.2f')} | "
                    f"{_f(r.get('latency_ms'), '.1f')} "
                    f"({_f(r.get('speedup'), '.2f')}x) | "
                    f"{_f(r['train_s'], '.0f', r['train_s_std'])} | "
                    f"{len(r['seeds'])} | {r['status']}"
                    + (f" ({r['no_detections']} with no detections)"
                       if r['no_detections'] else '') + ' |')
            else:
                err = '; '.join(e.split('\n')[0][:160]
                                for e in r['errors'])
                L.append(f"| {r['label']} | – | – | – | – | – | – | 0 "
                         f"| {r['status']}: {err} |")
        if plots.get(model):
            L += ['', f'![{model}](plots/{osp.basename(plots[model])})']
        L.append('')
    L += ['### Targets at 50 % FLOPs', '',
          '| model | dense mAP | best mmprune | best peer | within '
          f'{DENSE_GAP} of dense | ≥ {PEER_MARGIN} above the best peer |',
          '|---|---|---|---|---|---|']
    for t in targets:
        L.append(
            f"| {t['model']} | {_f(t['dense'], '.2f')} | "
            f"{t['best'] or 'n/a'} {_f(t['best_mAP'], '.2f')} | "
            f"{t['peer'] or 'n/a'} {_f(t['peer_mAP'], '.2f')} | "
            f"{_verdict(t['near_dense'])} | {_verdict(t['above_peer'])} |")
    low = [t['model'] for t in targets
           if t['dense'] is not None and t['dense'] < MEANINGFUL_MAP]
    if low:
        L += ['', f"Dense mAP is below {MEANINGFUL_MAP} for "
              f"{', '.join(low)}: the schedule is too short for the model "
              f"to learn the data, so these verdicts say nothing about the "
              f"methods."]
    if any(t['seeds'] < 2 for t in targets):
        L += ['', 'With one seed there is no spread: differences of about '
              '1 mAP are within what another seed could change.']
    L += ['', 'Torch-Pruning peers: Torch-Pruning prunes the live model '
          'inside a hook after the cut epoch (its channel ratio bisected on '
          'copies until mmprune\'s cost model gives the FLOPs target); it '
          'does not know the optimizer or the EMA copy, so the optimizer '
          'keeps its param groups with the pruned parameters swapped in by '
          'name and its state (Adam moments) **reset**, and the EMA model is '
          '**rebuilt** from the pruned weights (`benchmarks/tp_peer.py`). '
          'mmprune\'s hook slices the optimizer state and cuts the EMA copy '
          'with the same plan instead.', '']
    return L


def _speed_md(results, rows, plot) -> List[str]:
    L = ['## 2. Speed: dense vs compact', '']
    if not rows:
        failed = [f"{s.get('id')}: {str(s.get('error', ''))[:300]}"
                  for s in results['speed'] if s.get('status') != 'ok']
        return L + ['No speed results.'] + \
            (['', 'Failed: ' + '; '.join(failed)] if failed else []) + ['']
    s = next(x for x in results['speed'] if x.get('status') == 'ok')
    L += [f"L1-pruned to {round(s['budget'] * 100)} % FLOPs with the "
          f"allocator settings of `benchmarks/graph_and_speed.py`; tensor "
          f"forward (no NMS), {s['threads']} thread(s), median of "
          f"{s['runs']} interleaved rounds (all variants of a batch size in "
          f"the same rounds). onnxruntime runs the exported model "
          f"(checked against torch). Target: realized / FLOPs speedup ≥ "
          f"{SPEED_TARGETS['coupled']} (coupled), ≥ "
          f"{SPEED_TARGETS['fine']} (fine).", '',
          '| model | size | mode | allocator | backend | batch | FLOPs kept | '
          'dense ms | compact ms | speedup | / FLOPs speedup | target |',
          '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        L.append(f"| {r['model']} | {r['input_size'][0]}x"
                 f"{r['input_size'][1]} | {r['mode']} | {r['setting']} | "
                 f"{r['backend']} | {r['batch']} | "
                 f"{_f(r['flops_ratio'], '.3f')} | {_f(r['dense_ms'], '.1f')}"
                 f" | {_f(r['compact_ms'], '.1f')} | "
                 f"{_f(r['realized_speedup'], '.2f')}x | "
                 f"{_f(r['realized_over_flops'], '.2f')} | "
                 f"{_verdict(r['passed'])} |")
    for mode in SPEED_TARGETS:
        sel = [r for r in rows if r['mode'] == mode]
        if sel:
            n = sum(bool(r['passed']) for r in sel)
            L.append(f"\n{mode}: {n} of {len(sel)} rows meet ≥ "
                     f"{SPEED_TARGETS[mode]}.")
    failed = [f"{s.get('id')}: {str(s.get('error', ''))[:200]}"
              for s in results['speed'] if s.get('status') != 'ok']
    if failed:
        L.append('\nFailed speed jobs: ' + '; '.join(failed))
    bad = [f"{s['model']} {s['mode']} {k}" for s in results['speed']
           if s.get('status') == 'ok'
           for k, o in s['onnx'].items() if not o['passed']]
    if bad:
        L.append(f"\nonnxruntime disagreed with torch beyond 1e-3 for: "
                 f"{', '.join(bad)}.")
    if plot:
        L += ['', f'![speed](plots/{osp.basename(plot)})']
    return L + ['']


def _tools_md(results, plot) -> List[str]:
    L = ['## 3. Tool costs', '']
    graphs = [t for t in results['tools'] if t.get('kind') == 'graph']
    hook = next((t for t in results['tools'] if t.get('kind') == 'hook'),
                None)
    if graphs:
        L += ['Graph analysis (seconds, 1 thread): mmprune traces at 128 px '
              'by default; Torch-Pruning `DependencyGraph.build_dependency` '
              'at the model\'s usual input size.', '',
              '| model | input | mmprune (128 px) | mmprune (full size) | '
              'Torch-Pruning | Torch-Pruning / mmprune (128 px) |',
              '|---|---|---|---|---|---|']
        for g in graphs:
            if g.get('status') != 'ok':
                L.append(f"| {g.get('model')} | | failed: "
                         f"{g.get('error', '')[:160]} | | | |")
                continue
            tp = g.get('torch_pruning_graph_s')
            ratio = tp / g['mmprune_graph_s'] if tp else None
            tp_s = _f(tp, '.2f') if tp is not None else \
                'n/a' + (f" ({g['torch_pruning_error'][:120]})"
                         if g.get('torch_pruning_error') else '')
            L.append(f"| {g['model']} | {g['input_size'][0]}x"
                     f"{g['input_size'][1]} | "
                     f"{_f(g['mmprune_graph_s'], '.2f')} | "
                     f"{_f(g['mmprune_graph_s_full_size'], '.2f')} | "
                     f"{tp_s} | {_f(ratio, '.1f')} |")
        if plot:
            L += ['', f'![graph time](plots/{osp.basename(plot)})']
        L.append('')
    if hook and hook.get('status') == 'ok':
        h = hook['settings']
        secs = hook['prune_run_seconds']
        own = ''
        m = hook.get('masked_iter')  # absent in older results
        if m:
            own = (f"; the hook's own time: {m['hook_ms']:.1f} ms per "
                   f"{m['step_ms']:.0f} ms iteration "
                   f"({1 + m['hook_ms'] / m['step_ms']:.3f}x)")
        L += ['Hook overhead (`benchmarks/hook_overhead.py`):', '',
              f"- masked training iteration / plain iteration (YOLOX-tiny, "
              f"batch 2, {h['iter_size']} px): "
              f"**{hook['masked_iter_ratio']:.3f}x** (target ≤ 1.05x: "
              f"{_verdict(hook['masked_iter_ratio'] <= 1.05)}){own}",
              f"- one prune event ({h['event_config']} at {h['event_size']} "
              f"px, 50 % FLOPs): **{hook['event_seconds']:.2f} s**",
              f"- training cut to 50 % after epoch 1 / dense training "
              f"(YOLOX-tiny, {h['run_images']} images, {h['run_size']} px, "
              f"{h['run_epochs']} epochs, mean of {h.get('run_repeats', 1)} "
              f"run(s) each): **{hook['prune_run_ratio']:.3f}x**"
              f" ({secs['pruned']:.1f} s / {secs['dense']:.1f} s)"]
        fast = hook.get('prune_run_ratio_latency_aware')
        if fast is not None:  # results written before it existed lack it
            L[-1] += (f"; with the latency-aware speed setting **{fast:.3f}x"
                      f"** ({secs['latency_aware']:.1f} s) (target ≤ 0.8x: "
                      f"{_verdict(fast <= 0.8)})")
        L.append('')
    elif hook:
        L += [f"Hook overhead: failed: {hook.get('error', '')[:300]}", '']
    return L


# ----------------------------------------------------------------- write
def write_report(results_dir: str) -> str:
    """Write ``results.md`` and the plots; return the markdown path."""
    from benchmarks import plots as P
    from mmprune.utils.io import write_text_atomic
    results = load_results(results_dir)
    plot_dir = osp.join(results_dir, 'plots')
    tables = quality_rows(results)
    targets = quality_targets(tables)
    q_plots = {}
    for model in sorted({m for m, _ in tables}):
        pts = [dict(label=r['label'], flops_ratio=r['flops_ratio'],
                    mAP=r['mAP'], std=r['mAP_std'])
               for (m, _), rows in tables.items() if m == model
               for r in rows if r.get('mAP') is not None]
        if pts:
            q_plots[model] = P.plot_quality(
                pts, osp.join(plot_dir, f'quality_{model}.png'),
                f'{model}: mAP vs FLOPs kept')
    s_rows = speed_rows(results)
    s_plot = P.plot_speed(s_rows, osp.join(plot_dir, 'speed.png'),
                          SPEED_TARGETS) if s_rows else None
    graphs = [g for g in results['tools']
              if g.get('kind') == 'graph' and g.get('status') == 'ok']
    g_plot = P.plot_graph_time(graphs, osp.join(plot_dir, 'graph_time.png')) \
        if graphs else None
    name = (results['env'] or {}).get('preset', osp.basename(results_dir))
    lines = [f'# mmprune benchmark results ({name})', '',
             'Written by `benchmarks/report.py` from the JSON files in this '
             'folder (`make bench`, `python benchmarks/run.py`).', '']
    lines += _env_lines(results) + ['']
    summary = []
    for t in targets:
        summary.append(f"- quality ({t['model']}, 50 % FLOPs): best mmprune "
                       f"within {DENSE_GAP} mAP of dense "
                       f"{_verdict(t['near_dense'])}; ≥ {PEER_MARGIN} mAP "
                       f"above the best peer {_verdict(t['above_peer'])}"
                       + (f" (dense mAP {t['dense']:.2f} < "
                          f"{MEANINGFUL_MAP}: not informative)"
                          if t['dense'] is not None and
                          t['dense'] < MEANINGFUL_MAP else ''))
    for mode, target in SPEED_TARGETS.items():
        sel = [r for r in s_rows if r['mode'] == mode]
        if sel:
            n = sum(bool(r['passed']) for r in sel)
            summary.append(f"- speed ({mode}, realized/FLOPs ≥ {target}): "
                           f"{n}/{len(sel)} rows "
                           f"{_verdict(n == len(sel))}")
    if summary:
        lines += ['## Targets', ''] + summary + ['']
    lines += _quality_md(results, tables, targets, q_plots)
    lines += _speed_md(results, s_rows, s_plot)
    lines += _tools_md(results, g_plot)
    path = osp.join(results_dir, 'results.md')
    write_text_atomic(path, '\n'.join(lines).rstrip() + '\n')
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('results_dir', nargs='?',
                   default=osp.join(ROOT, 'benchmarks', 'results', 'quick'),
                   help='a folder written by benchmarks/run.py')
    a = p.parse_args(argv)
    try:
        print(write_report(a.results_dir))
    except FileNotFoundError as e:
        raise SystemExit(f'report: {e}') from None


if __name__ == '__main__':
    main()
