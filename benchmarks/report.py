"""The benchmark report: a markdown table and PNG plots from the result
JSON files, with the issue's targets checked (pass/fail, with numbers).

    python benchmarks/report.py [benchmarks/results/quick]

Reads ``<dir>/quality/*.json`` (and ``latency__*.json``),
``<dir>/speed/*.json``, ``<dir>/tools/*.json`` and ``<dir>/env.json``;
writes ``<dir>/results.md`` and ``<dir>/plots/*.png``. Runs alone: nothing
is measured here.

Targets (from the benchmark issues), per model and protocol, at 50 % FLOPs:

* the best mmprune method (by mean mAP, points x100) at least 1.0 above
  the best peer (L1 uniform, Torch-Pruning magnitude and Taylor) with the
  per-seed paired 95 % t interval of the difference above 0 (means alone
  when one seed: said so), and within 1.0 mAP of dense (fine-tuned as
  long);
* the random floor beaten by more than the seeds' spread: the best method's
  mean minus random's larger than the larger of their seed standard
  deviations; otherwise the report says the benchmark is not
  discriminative at this size (the row is always shown);
* on a ResNet detector, L1 fine residual mode >= coupled (mean of the
  paired differences, with its interval);
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

from benchmarks.methods import (ALL_METHODS, BUDGET_FREE, FLOOR_METHOD, LABELS,
                                LATENCY_BUDGET, LATENCY_GLOBAL,
                                LATENCY_METHODS, MMPRUNE_METHODS, PEER_METHODS)
from benchmarks.stats import mean_std, paired_difference

QUALITY_BUDGET = 0.5
DENSE_GAP = 1.0  # mAP points
PEER_MARGIN = 1.0  # mAP points
SPEED_TARGETS = {'coupled': 0.9, 'fine': 0.85}
#: below this dense mAP (points) a quality comparison is not informative
MEANINGFUL_MAP = 1.0
#: measured latencies this close (relative) count as equal: the spread of
#: one model timed twice in the bench's rounds on a shared 2-core machine
LATENCY_EQUAL = 0.03


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
        references=[
            _read(p) for p in sorted(
                glob.glob(osp.join(results_dir, 'references', '*.json')))
        ],
        env=_read(env) if osp.isfile(env) else None,
        quality=[
            _read(p) for p in q_files
            if not osp.basename(p).startswith('latency__')
        ],
        latency={
            osp.basename(p)[len('latency__'):-5]: _read(p)
            for p in q_files if osp.basename(p).startswith('latency__')
        },
        speed=[
            _read(p) for p in sorted(
                glob.glob(osp.join(results_dir, 'speed', '*.json')))
        ],
        tools=[
            _read(p) for p in sorted(
                glob.glob(osp.join(results_dir, 'tools', '*.json')))
        ])


# ----------------------------------------------------------- aggregation
def _protocol(res: dict) -> str:
    return res.get('protocol', 'scratch')  # older results: from scratch


def quality_rows(results: dict) -> Dict[tuple, List[dict]]:
    """``{(model, protocol, budget): [row per method]}``; dense (trained
    once, at the first budget) is the reference row of every budget of
    its model and protocol. ``by_seed`` maps seed -> mAP (points) for the
    paired statistics."""
    by_key = OrderedDict()
    dense = {}
    for r in results['quality']:
        if 'model' not in r or 'method' not in r:
            continue  # not a quality run's result
        proto = _protocol(r)
        if r['method'] == 'dense':
            dense.setdefault((r['model'], proto), []).append(r)
        by_key.setdefault((r['model'], proto, r['budget']),
                          {}).setdefault(r['method'], []).append(r)
    lat = {}
    for entry in results['latency'].values():
        lat.update(entry.get('latency', {}))
    tables = OrderedDict()
    for key in sorted(by_key, key=lambda k: (k[0], k[1], -k[2])):
        model, proto, budget = key
        methods = dict(by_key[key])
        methods['dense'] = dense.get((model, proto), [])
        rows = []
        for method in [m for m in ALL_METHODS if methods.get(m)]:
            runs = methods[method]
            ok = [
                r for r in runs
                if r.get('status') == 'ok' and r.get('mAP') is not None
            ]
            row = dict(
                method=method,
                label=LABELS.get(method, method),
                runs=len(runs),
                ok=len(ok),
                status=_status(runs),
                errors=[
                    r.get('error', '') for r in runs if r.get('status') != 'ok'
                ])
            if ok:
                row['by_seed'] = {r['seed']: 100 * r['mAP'] for r in ok}
                row['mAP'], row['mAP_std'] = mean_std(
                    [100 * r['mAP'] for r in ok])
                row['AP50'], row['AP50_std'] = mean_std(
                    [100 * r['AP50'] for r in ok])
                row['flops_g'] = statistics.fmean(r['flops'] / 1e9 for r in ok)
                row['flops_ratio'] = statistics.fmean(r['flops_ratio']
                                                      for r in ok)
                row['params_m'] = statistics.fmean(r['params'] / 1e6
                                                   for r in ok)
                row['train_s'], row['train_s_std'] = mean_std(
                    [r['train_wall_s'] for r in ok])
                ms = [lat[r['id']]['median_ms'] for r in ok if r['id'] in lat]
                row['latency_ms'] = statistics.fmean(ms) if ms else None
                row['seeds'] = sorted(r['seed'] for r in ok)
                row['no_detections'] = sum(
                    bool(r.get('no_detections')) for r in ok)
            rows.append(row)
        d = next((r for r in rows if r['method'] == 'dense'), None)
        for row in rows:
            if d and d.get('latency_ms') and row.get('latency_ms'):
                row['speedup'] = d['latency_ms'] / row['latency_ms']
        tables[key] = rows
    return tables


def _status(runs: List[dict]) -> str:
    states = sorted({r.get('status', 'failed') for r in runs})
    return '/'.join(states)


def _best(rows: List[dict], methods) -> Optional[dict]:
    cands = [
        r for r in rows if r['method'] in methods and r.get('mAP') is not None
    ]
    return max(cands, key=lambda r: r['mAP']) if cands else None


def _paired(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
    if not (a and b):
        return None
    return paired_difference(a['by_seed'], b['by_seed'])


def quality_targets(tables: Dict[tuple, List[dict]]) -> List[dict]:
    """The targets of every (model, protocol) table at 50 % FLOPs: best
    mmprune vs best peer and vs dense (paired), the random floor, and fine
    vs coupled residual mode where both ran."""
    out = []
    for key, rows in tables.items():
        model, proto, budget = key
        if abs(budget - QUALITY_BUDGET) > 1e-9:
            continue
        by = {r['method']: r for r in rows if r.get('mAP') is not None}
        dense = by.get('dense')
        best = _best(rows, MMPRUNE_METHODS)
        peer = _best(rows, PEER_METHODS)
        rec = dict(
            model=model,
            protocol=proto,
            budget=budget,
            dense=dense and dense['mAP'],
            best=best and best['method'],
            best_mAP=best and best['mAP'],
            peer=peer and peer['method'],
            peer_mAP=peer and peer['mAP'],
            seeds=min((len(r.get('seeds', []))
                       for r in [x for x in (best, peer, dense) if x]),
                      default=0))
        rec['vs_peer'] = _paired(best, peer)
        rec['vs_dense'] = _paired(best, dense)
        rec['near_dense'] = None if not (best and dense) else \
            best['mAP'] >= dense['mAP'] - DENSE_GAP
        rec['above_peer'] = None
        if best and peer:
            ci = rec['vs_peer']
            rec['above_peer'] = best['mAP'] >= peer['mAP'] + PEER_MARGIN \
                and (ci is None or ci['low'] is None or ci['low'] > 0)
        rec.update(_floor(rows, by))
        fine, coupled = by.get('l1_fine'), by.get('l1_coupled')
        rec['fine_vs_coupled'] = _paired(fine, coupled)
        rec['fine_ge_coupled'] = None if not (fine and coupled) else \
            fine['mAP'] >= coupled['mAP']
        rec.update(_latency_vs_flops(by))
        rec.update(_latency_vs_flops(by, LATENCY_GLOBAL, 'global_'))
        out.append(rec)
    return out


def _latency_vs_flops(by: Dict[str, dict],
                      method: str = LATENCY_BUDGET,
                      prefix: str = '') -> dict:
    """BPC with a latency budget (``method``) against BPC with the FLOPs
    budget (issue 13): the paired mAP difference, each one's measured
    latency, and the verdict "at no more latency, at least the mAP" (None
    when either is missing or unmeasured); keys start with ``prefix``."""
    lat, flops = by.get(method), by.get('bpc')
    rec = dict(
        latency_vs_flops=_paired(lat, flops),
        latency_ms=lat and lat.get('latency_ms'),
        flops_budget_ms=flops and flops.get('latency_ms'),
        latency_ge_flops=None)
    if lat and flops and rec['latency_ms'] and rec['flops_budget_ms']:
        # equal latency within the timing noise, or faster; a slower
        # latency-budget model is not a comparison at equal latency
        if rec['latency_ms'] <= rec['flops_budget_ms'] * (1 + LATENCY_EQUAL):
            rec['latency_ge_flops'] = lat['mAP'] >= flops['mAP']
    return {prefix + k: v for k, v in rec.items()}


def _floor(rows: List[dict], by: Dict[str, dict]) -> dict:
    """The best pruning method against the random floor: discriminative
    when its mean beats random's by more than the larger seed std."""
    rand = by.get(FLOOR_METHOD)
    top = _best(
        rows,
        # methods at the table's budget only (not the backbone-only
        # row, whose FLOPs do not follow it, nor the latency budget's)
        [
            m for m in ALL_METHODS if m not in BUDGET_FREE +
            (FLOOR_METHOD, ) + LATENCY_METHODS
        ])
    rec = dict(
        floor=rand and rand['mAP'],
        top=top and top['method'],
        top_mAP=top and top['mAP'],
        floor_margin=None,
        floor_spread=None,
        discriminative=None,
        vs_floor=_paired(top, rand))
    if rand and top:
        rec['floor_margin'] = top['mAP'] - rand['mAP']
        stds = [
            s for s in (top.get('mAP_std'), rand.get('mAP_std'))
            if s is not None
        ]
        if stds:
            rec['floor_spread'] = max(stds)
            rec['discriminative'] = rec['floor_margin'] > max(stds)
    return rec


def speed_rows(results: dict) -> List[dict]:
    rows = []
    for res in results['speed']:
        if res.get('status') != 'ok':
            continue
        for r in res['rows']:
            target = SPEED_TARGETS.get(res['mode'])
            rows.append(
                dict(
                    r,
                    model=res['model'],
                    mode=res['mode'],
                    input_size=res['input_size'],
                    target=target,
                    onnx_ok=all(o['passed'] for o in res['onnx'].values()),
                    passed=None
                    if target is None else r['realized_over_flops'] >= target,
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
    envs = [
        r.get('env') for suite in ('quality', 'speed', 'tools')
        for r in results[suite] if r.get('env')
    ]
    commits = sorted({
        (e['git'].get('commit') or '?')[:10] +
        (' (uncommitted changes)' if e['git'].get('dirty') else '')
        for e in envs + ([env] if env else []) if e.get('git')
    })
    m = env.get('machine', {})
    v = env.get('versions', {})
    lines = [
        f"- preset: `{env.get('preset', '?')}`, suites "
        f"{', '.join(env.get('suites', []))}; started {env.get('time', '?')}",
        f"- machine: {m.get('cpu', '?')}, {m.get('cpus', '?')} logical CPUs"
        f", {m.get('memory_gib', '?')} GiB; {m.get('platform', '?')}; "
        f"device `{m.get('device', '?')}`" +
        (f" ({m['gpu']})" if m.get('gpu') else ''),
        f"- runs: {env.get('parallel_jobs', '?')} at a time, "
        f"{env.get('threads', '?')} torch thread(s) each",
        '- versions: ' + ', '.join(f'{k} {val}'
                                   for k, val in v.items() if val),
        f"- git commit(s) of the result files: {', '.join(commits) or '?'}",
    ]
    return lines


def _ci(d: Optional[dict]) -> str:
    """``+1.23 [−0.40, 2.86] (n=3)`` or the mean alone with one seed."""
    if not d:
        return 'n/a'
    if d['low'] is None:
        return f"{d['mean']:+.2f} (n={d['n']}, no interval)"
    return (f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] "
            f"(n={d['n']})")


def _cell(row: Optional[dict]) -> str:
    if not row or row.get('mAP') is None:
        return '–'
    return (f"{_f(row['mAP'], '.2f', row['mAP_std'])} "
            f"({len(row['seeds'])})")


def headline(tables: Dict[tuple, List[dict]]) -> List[str]:
    """The one table: per model and protocol, each method's mAP at 100 %
    (dense), 50 % and 30 % FLOPs (mean ± std (seeds)) and its latency at
    50 %."""
    L = [
        '| model | protocol | method | 100 % FLOPs | 50 % FLOPs | '
        '30 % FLOPs | latency ms at 50 % (speedup) |',
        '|---|---|---|---|---|---|---|'
    ]
    pairs = sorted({(m, p) for m, p, _ in tables})
    for model, proto in pairs:
        at = {
            b: {
                r['method']: r
                for r in rows
            }
            for (m, p, b), rows in tables.items() if (m, p) == (model, proto)
        }
        half = next((v for b, v in at.items() if abs(b - 0.5) < 1e-9), {})
        third = next((v for b, v in at.items() if abs(b - 0.3) < 1e-9), {})
        methods = [m for m in ALL_METHODS if any(m in v for v in at.values())]
        for method in methods:
            any_row = next(v[method] for v in at.values() if method in v)
            if method == 'dense':
                cols = (_cell(any_row), '', '')
                lat = any_row.get('latency_ms')
                lat_s = _f(lat, '.1f') + (' (1.00x)' if lat else '')
            else:
                cols = ('', _cell(half.get(method)), _cell(third.get(method)))
                h = half.get(method) or {}
                lat_s = (f"{_f(h.get('latency_ms'), '.1f')} "
                         f"({_f(h.get('speedup'), '.2f')}x)"
                         if h.get('latency_ms') else 'n/a')
            L.append(f"| {model} | {proto} | {any_row['label']} | "
                     f"{' | '.join(cols)} | {lat_s} |")
    return L


def _references_md(results) -> List[str]:
    refs = results.get('references') or []
    if not refs:
        return []
    L = [
        '## Trained references', '',
        "Dense checkpoints trained here on the synthetic set (no weights "
        "can be downloaded) and cached by a hash of their config, data "
        "arguments, seed and recipe (`benchmarks/reference.py`); every "
        "protocol-'trained' run of a model starts from its checkpoint. "
        "Plateau: the mAP gained over the last quarter of the validated "
        "epochs (near 0: plateaued).", '',
        '| model | mAP | AP50 | epochs | iterations | train wall s | '
        'plateau (gain) | key | cached |',
        '|---|---|---|---|---|---|---|---|---|'
    ]
    for r in refs:
        if r.get('status') != 'ok':
            L.append(f"| {r.get('model')} | failed: "
                     f"{str(r.get('error', ''))[:200]} | | | | | | "
                     f"{r.get('key', '')} | |")
            continue
        pl = r.get('plateau')
        pl_s = 'n/a' if not pl else (f"{pl['gain']:+.2f} (epochs "
                                     f"{pl['from_epoch']}-{pl['to_epoch']})")
        L.append(f"| {r['model']} | {100 * r['mAP']:.2f} | "
                 f"{100 * r['AP50']:.2f} | {r['epochs']} | "
                 f"{r['iterations']} | {r['train_wall_s']:.0f} | {pl_s} | "
                 f"`{r['key']}` | {'yes' if r.get('cached') else 'no'} |")
    L.append('')
    return L


def _stats_md(targets: List[dict]) -> List[str]:
    if not targets:
        return []
    L = [
        '### Paired comparisons at 50 % FLOPs', '',
        'Per-seed differences of mAP points (runs of the same seed share '
        'the reference, the data order and the augmentation), mean and '
        'Student-t 95 % interval over the seeds (`benchmarks/stats.py`).', '',
        '| model | protocol | comparison | difference [95 % CI] |',
        '|---|---|---|---|'
    ]
    for t in targets:
        pre = f"| {t['model']} | {t['protocol']} | "
        if t['best'] and t['peer']:
            L.append(pre + f"best mmprune ({t['best']}) − best peer "
                     f"({t['peer']}) | {_ci(t['vs_peer'])} |")
        if t['best'] and t['dense'] is not None:
            L.append(pre + f"best mmprune ({t['best']}) − dense | "
                     f"{_ci(t['vs_dense'])} |")
        if t['top'] and t['floor'] is not None:
            L.append(pre + f"best method ({t['top']}) − random floor | "
                     f"{_ci(t['vs_floor'])} |")
        if t['fine_vs_coupled']:
            L.append(pre + 'L1 fine − L1 coupled residuals | '
                     f"{_ci(t['fine_vs_coupled'])} |")
        for pfx, what in (('', 'BPC latency budget'),
                          ('global_', 'BPC latency budget, global order')):
            if t.get(pfx + 'latency_vs_flops'):
                L.append(pre + f'{what} − BPC FLOPs budget '
                         f"({_f(t[pfx + 'latency_ms'], '.1f')} vs "
                         f"{_f(t[pfx + 'flops_budget_ms'], '.1f')} ms "
                         f'measured; at equal latency '
                         f'(±{LATENCY_EQUAL:.0%}), at least the mAP: '
                         f"{_verdict(t[pfx + 'latency_ge_flops'])}) | "
                         f"{_ci(t[pfx + 'latency_vs_flops'])} |")
    L.append('')
    for t in targets:
        if t['discriminative'] is False:
            L.append(
                f"**Not discriminative at this size** ({t['model']}, "
                f"{t['protocol']}): the best method ({t['top']}, "
                f"{t['top_mAP']:.2f}) beats the random floor "
                f"({t['floor']:.2f}) by {t['floor_margin']:+.2f} mAP, not "
                f"more than the seeds' spread ({t['floor_spread']:.2f}); "
                f"the differences between methods in this table are not "
                f"evidence of a better criterion.")
            L.append('')
        elif t['floor'] is not None and t['discriminative'] is None:
            L.append(f"{t['model']} ({t['protocol']}): one seed, so "
                     f"whether the best method beats the random floor by "
                     f"more than the seeds' spread is unknown.")
            L.append('')
    return L


def _quality_md(results, tables, targets, plots) -> List[str]:
    L = ['## 1. Quality at equal FLOPs', '']
    if not tables:
        return L + ['No quality results.', '']
    q = next(r for r in results['quality'] if 'data' in r)
    d = q.get('data', {})
    protos = sorted({p for _, p, _ in tables})
    lr_mult = '/'.join(
        sorted({
            str(r['lr_mult'])
            for r in results['quality']
            if r.get('protocol') == 'trained' and 'lr_mult' in r
        })) or 'n/a'
    L += [
        f"Synthetic COCO set ({d.get('difficulty')} profile, "
        f"{d.get('num_train')} train / {d.get('num_val')} val images at "
        f"{d.get('size')} px, {d.get('num_classes')} classes), batch "
        f"{q['batch_size']}, the same recipe in every run of a table "
        f"(`benchmarks/methods.py` says when each method cuts). Protocol "
        f"'trained': every run starts from the model's trained reference "
        f"and fine-tunes the same epochs at {lr_mult} x its LR; one-shot "
        f"methods "
        f"cut after the first iteration, the others keep their paper "
        f"schedule compressed into the window; dense is the reference "
        f"fine-tuned as long. Protocol 'scratch': every run trains the "
        f"same epochs from random init, pruning methods cut during them."
        f" mAP and AP50 are COCO bbox metrics x100 (YOLOX: EMA weights), "
        f"mean ± std over the seeds (no ± with one seed). FLOPs: "
        f"mmprune's cost model (multiply-adds + BN) at the training size."
        f" Latency: batch 1, torch eager, 1 thread, median of interleaved "
        f"rounds, no other benchmark job running. Train time: wall "
        f"seconds of the training loop without validation (and without "
        f"the Torch-Pruning ratio search), with another run beside it. "
        f"Protocols here: {', '.join(protos)}.", ''
    ]
    epochs = {}
    for r in results['quality']:
        if 'model' in r:
            epochs.setdefault((r['model'], _protocol(r)),
                              set()).add(r['epochs'])
    for (model, proto, budget), rows in tables.items():
        ep = '/'.join(str(e) for e in sorted(epochs.get((model, proto), ())))
        L += [
            f'### {model}, {proto}, {round(budget * 100)} % FLOPs '
            f'({ep} epochs)', '',
            '| method | mAP | AP50 | GFLOPs (kept) | params (M) | '
            'latency ms (speedup) | train s | seeds | status |',
            '|---|---|---|---|---|---|---|---|---|'
        ]
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
                    f"{len(r['seeds'])} | {r['status']}" +
                    (f" ({r['no_detections']} with no detections)"
                     if r['no_detections'] else '') + ' |')
            else:
                err = '; '.join(e.split('\n')[0][:160] for e in r['errors'])
                L.append(f"| {r['label']} | – | – | – | – | – | – | 0 "
                         f"| {r['status']}: {err} |")
        L.append('')
    for (model, proto), files in sorted(plots.items()):
        L += [
            f'![{model} {proto} {what}](plots/{osp.basename(f)})'
            for what, f in files
        ]
        L.append('')
    L += [
        '### Targets at 50 % FLOPs', '',
        '| model | protocol | dense mAP | best mmprune | best peer | '
        f'within {DENSE_GAP} of dense | ≥ {PEER_MARGIN} above the best '
        'peer, CI > 0 | beats random by more than the spread | fine ≥ '
        'coupled |', '|---|---|---|---|---|---|---|---|---|'
    ]
    for t in targets:
        L.append(
            f"| {t['model']} | {t['protocol']} | {_f(t['dense'], '.2f')} | "
            f"{t['best'] or 'n/a'} {_f(t['best_mAP'], '.2f')} | "
            f"{t['peer'] or 'n/a'} {_f(t['peer_mAP'], '.2f')} | "
            f"{_verdict(t['near_dense'])} | {_verdict(t['above_peer'])} | "
            f"{_verdict(t['discriminative'])} | "
            f"{_verdict(t['fine_ge_coupled'])} |")
    L.append('')
    L += _stats_md(targets)
    low = [
        f"{t['model']} ({t['protocol']})" for t in targets
        if t['dense'] is not None and t['dense'] < MEANINGFUL_MAP
    ]
    if low:
        L += [
            f"Dense mAP is below {MEANINGFUL_MAP} for "
            f"{', '.join(low)}: the schedule is too short for the model "
            f"to learn the data, so these verdicts say nothing about the "
            f"methods.", ''
        ]
    if any(t['seeds'] < 2 for t in targets):
        L += [
            'With one seed there is no spread: differences of about '
            '1 mAP are within what another seed could change.', ''
        ]
    L += [
        'Torch-Pruning peers: Torch-Pruning prunes the live model '
        'inside a hook at the cut (its channel ratio bisected on '
        'copies until mmprune\'s cost model gives the FLOPs target); it '
        'does not know the optimizer or the EMA copy, so the optimizer '
        'keeps its param groups with the pruned parameters swapped in by '
        'name and its state (Adam moments) **reset**, and the EMA model is '
        '**rebuilt** from the pruned weights (`benchmarks/tp_peer.py`). '
        'mmprune\'s hook slices the optimizer state and cuts the EMA copy '
        'with the same plan instead.', ''
    ]
    return L


def _speed_md(results, rows, plot) -> List[str]:
    L = ['## 2. Speed: dense vs compact', '']
    if not rows:
        failed = [
            f"{s.get('id')}: {str(s.get('error', ''))[:300]}"
            for s in results['speed'] if s.get('status') != 'ok'
        ]
        return L + ['No speed results.'] + \
            (['', 'Failed: ' + '; '.join(failed)] if failed else []) + ['']
    s = next(x for x in results['speed'] if x.get('status') == 'ok')
    L += [
        f"L1-pruned to {round(s['budget'] * 100)} % FLOPs with the "
        f"allocator settings of `benchmarks/graph_and_speed.py`; tensor "
        f"forward (no NMS), {s['threads']} thread(s), median of "
        f"{s['runs']} interleaved rounds (all variants of a batch size in "
        f"the same rounds). onnxruntime runs the exported model "
        f"(checked against torch). Target: realized / FLOPs speedup ≥ "
        f"{SPEED_TARGETS['coupled']} (coupled), ≥ "
        f"{SPEED_TARGETS['fine']} (fine).", '',
        '| model | size | mode | allocator | backend | batch | FLOPs kept | '
        'dense ms | compact ms | speedup | / FLOPs speedup | target |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|'
    ]
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
    failed = [
        f"{s.get('id')}: {str(s.get('error', ''))[:200]}"
        for s in results['speed'] if s.get('status') != 'ok'
    ]
    if failed:
        L.append('\nFailed speed jobs: ' + '; '.join(failed))
    bad = [
        f"{s['model']} {s['mode']} {k}" for s in results['speed']
        if s.get('status') == 'ok' for k, o in s['onnx'].items()
        if not o['passed']
    ]
    if bad:
        L.append(f"\nonnxruntime disagreed with torch beyond 1e-3 for: "
                 f"{', '.join(bad)}.")
    if plot:
        L += ['', f'![speed](plots/{osp.basename(plot)})']
    return L + ['']


def _tools_md(results, plot) -> List[str]:
    L = ['## 3. Tool costs', '']
    graphs = [t for t in results['tools'] if t.get('kind') == 'graph']
    hook = next((t for t in results['tools'] if t.get('kind') == 'hook'), None)
    if graphs:
        L += [
            'Graph analysis (seconds, 1 thread): mmprune traces at 128 px '
            'by default; Torch-Pruning `DependencyGraph.build_dependency` '
            'at the model\'s usual input size.', '',
            '| model | input | mmprune (128 px) | mmprune (full size) | '
            'Torch-Pruning | Torch-Pruning / mmprune (128 px) |',
            '|---|---|---|---|---|---|'
        ]
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
        L += [
            'Hook overhead (`benchmarks/hook_overhead.py`):', '',
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
            f" ({secs['pruned']:.1f} s / {secs['dense']:.1f} s)"
        ]
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
def _plots(tables, plot_dir) -> Dict[tuple, list]:
    """Per (model, protocol): mAP vs kept FLOPs and mAP vs latency, every
    budget, error bars = the seeds' std."""
    from benchmarks import plots as P
    out = {}
    for model, proto in sorted({(m, p) for m, p, _ in tables}):
        pts = [
            dict(
                label=r['label'],
                flops_ratio=r['flops_ratio'],
                latency_ms=r.get('latency_ms'),
                mAP=r['mAP'],
                std=r['mAP_std']) for (m, p, _), rows in tables.items()
            if (m, p) == (model, proto) for r in rows
            if r.get('mAP') is not None
        ]
        seen = set()  # dense is the reference row of every budget: once
        pts = [
            p for p in pts if (p['label'], p['flops_ratio']) not in seen
            and not seen.add((p['label'], p['flops_ratio']))
        ]
        if not pts:
            continue
        stem = f'{model}_{proto}'
        files = [('vs FLOPs',
                  P.plot_quality(pts, osp.join(plot_dir,
                                               f'quality_{stem}.png'),
                                 f'{model} ({proto}): mAP vs FLOPs kept'))]
        if any(p['latency_ms'] for p in pts):
            files.append((
                'vs latency',
                P.plot_quality_latency(
                    pts, osp.join(plot_dir, f'latency_{stem}.png'),
                    f'{model} ({proto}): mAP vs latency (batch 1, 1 thread)')))
        out[(model, proto)] = files
    return out


def write_report(results_dir: str) -> str:
    """Write ``results.md`` and the plots; return the markdown path."""
    from benchmarks import plots as P
    from mmprune.utils.io import write_text_atomic
    results = load_results(results_dir)
    plot_dir = osp.join(results_dir, 'plots')
    tables = quality_rows(results)
    targets = quality_targets(tables)
    q_plots = _plots(tables, plot_dir)
    s_rows = speed_rows(results)
    s_plot = P.plot_speed(s_rows, osp.join(plot_dir, 'speed.png'),
                          SPEED_TARGETS) if s_rows else None
    graphs = [
        g for g in results['tools']
        if g.get('kind') == 'graph' and g.get('status') == 'ok'
    ]
    g_plot = P.plot_graph_time(graphs, osp.join(plot_dir, 'graph_time.png')) \
        if graphs else None
    env = results['env'] or {}
    name = env.get('preset', osp.basename(results_dir))
    lines = [
        f'# mmprune benchmark results ({name})', '',
        'Written by `benchmarks/report.py` from the JSON files in this '
        'folder (`make bench`, `python benchmarks/run.py`).', ''
    ]
    if env.get('argv') is not None:
        lines += [
            f"Command: `python benchmarks/run.py "
            f"{' '.join(env['argv'])}`", ''
        ]
    lines += _env_lines(results) + ['']
    summary = []
    for t in targets:
        summary.append(
            f"- quality ({t['model']}, {t['protocol']}, 50 % FLOPs): best "
            f"mmprune within {DENSE_GAP} mAP of dense "
            f"{_verdict(t['near_dense'])}; ≥ {PEER_MARGIN} mAP above the "
            f"best peer with the paired interval above 0 "
            f"{_verdict(t['above_peer'])}; random floor beaten by more "
            f"than the seeds' spread {_verdict(t['discriminative'])}" +
            (f"; fine ≥ coupled {_verdict(t['fine_ge_coupled'])}"
             if t['fine_ge_coupled'] is not None else '') +
            (f" (dense mAP {t['dense']:.2f} < {MEANINGFUL_MAP}: not "
             f"informative)" if t['dense'] is not None
             and t['dense'] < MEANINGFUL_MAP else ''))
    for mode, target in SPEED_TARGETS.items():
        sel = [r for r in s_rows if r['mode'] == mode]
        if sel:
            n = sum(bool(r['passed']) for r in sel)
            summary.append(f"- speed ({mode}, realized/FLOPs ≥ {target}): "
                           f"{n}/{len(sel)} rows "
                           f"{_verdict(n == len(sel))}")
    if summary:
        lines += ['## Targets', ''] + summary + ['']
    if tables:
        lines += [
            '## Headline', '', 'mAP (COCO bbox x100), mean ± std '
            '(seeds); details and the paired intervals in section 1.', ''
        ] + headline(tables) + ['']
    lines += _references_md(results)
    lines += _quality_md(results, tables, targets, q_plots)
    lines += _speed_md(results, s_rows, s_plot)
    lines += _tools_md(results, g_plot)
    path = osp.join(results_dir, 'results.md')
    write_text_atomic(path, '\n'.join(lines).rstrip() + '\n')
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument(
        'results_dir',
        nargs='?',
        default=osp.join(ROOT, 'benchmarks', 'results', 'quick'),
        help='a folder written by benchmarks/run.py')
    a = p.parse_args(argv)
    try:
        print(write_report(a.results_dir))
    except FileNotFoundError as e:
        raise SystemExit(f'report: {e}') from None


if __name__ == '__main__':
    main()
