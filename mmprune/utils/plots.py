"""PNG plots of a pruning result: per-layer channels, FLOPs and mAP curves.

Two sources, two plots:

* per-layer channels before and after pruning, from a dense and a pruned
  model (:func:`layer_widths_from_models`) or from ``tools/prune.py``'s
  ``report.json`` (:func:`layer_widths_from_report`), drawn by
  :func:`plot_channels`;
* the budget and the accuracy over training, from mmengine's
  ``<work_dir>/<timestamp>/vis_data/scalars.json``
  (:func:`read_scalars`, :func:`training_curves`), drawn by
  :func:`plot_training`. ``ChannelPruningHook`` logs
  ``train/prune_flops_ratio`` (or ``train/prune_params_ratio`` with
  ``budget='params'``), ``train/prune_params_M`` and
  ``train/prune_sparsity``; mmengine's LogProcessor strips the ``train/``
  prefix when it writes them into the training log lines (which carry
  ``epoch``, ``iter`` and ``step`` = iter). Validation writes
  ``coco/bbox_mAP`` or ``pascal_voc/mAP`` lines with ``step`` = epoch
  (epoch-based loops) and no ``iter``.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global
backend switch) and saved atomically.
"""
import glob
import json
import math
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn

from ..adapters.stages import stage_of
from .io import atomic_write
from .report import module_widths

#: (layer, channels before, channels after)
WidthRow = Tuple[str, int, int]

BUDGET_KEYS = ('prune_flops_ratio', 'prune_params_ratio')
PARAMS_KEY = 'prune_params_M'
#: validation metrics tried in order (first present wins)
METRIC_KEYS = ('coco/bbox_mAP', 'pascal_voc/mAP')


# ---------------------------------------------------------------- sources
def layer_widths_from_models(dense: nn.Module,
                             pruned: nn.Module) -> List[WidthRow]:
    """Per-layer output channels (``module_widths``: conv, linear and norm
    layers) of ``dense`` and ``pruned``, in module order."""
    after = module_widths(pruned)
    return [(name, w, after.get(name, 0))
            for name, w in module_widths(dense).items()]


def layer_widths_from_report(report: dict) -> List[WidthRow]:
    """Rows from a ``tools/prune.py`` report: its ``layers`` (module ->
    [before, after]) or, in older reports, its ``groups`` (group -> width,
    kept)."""
    if 'layers' in report:
        return [(k, int(v[0]), int(v[1])) for k, v in report['layers'].items()]
    if 'groups' in report:
        return [(k, int(v['width']), int(v['kept']))
                for k, v in report['groups'].items()]
    raise ValueError('report has neither "layers" nor "groups" (is it '
                     'tools/prune.py\'s report.json?)')


def find_scalars(path: str) -> str:
    """``path`` itself when it is a file, else the ``scalars.json`` of the
    newest run (timestamp folder) in the work dir ``path``."""
    if osp.isfile(path):
        return path
    found = sorted(glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')))
    if not found:
        raise FileNotFoundError(
            f'no <timestamp>/vis_data/scalars.json under {path!r} (is it '
            f'an mmengine work dir?)')
    return found[-1]  # timestamps sort in time order


def read_scalars(path: str) -> List[dict]:
    """The records (one JSON object per line) of a scalars file or of the
    newest run in a work dir."""
    path = find_scalars(path)
    records = []
    with open(path) as f:
        for i, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{i + 1}: not JSON: {e}') from None
    return records


def training_curves(records: Sequence[dict]) -> dict:
    """Budget, params and metric series against a common x axis.

    Returns:
        dict: ``xlabel`` ('epoch' or 'iteration'), ``budget`` /
        ``params`` / ``metric``: ``{'key', 'x', 'y'}`` or None. Training
        records are placed at ``iter / iters_per_epoch`` in epoch-based
        runs, where iters_per_epoch is the smallest length consistent with
        every (epoch, iter) pair logged.
    """
    train = [r for r in records if 'iter' in r]
    val = [r for r in records if 'iter' not in r and 'step' in r]
    by_epoch = any('epoch' in r for r in train)
    if by_epoch:
        # record (e, i) means (e - 1) * L < i <= e * L
        per_epoch = max((math.ceil(r['iter'] / r['epoch'])
                         for r in train if r.get('epoch')),
                        default=1)

        def x_train(r):
            return r['iter'] / per_epoch
    else:

        def x_train(r):
            return r['iter']

    def series(rows, key, x_of):
        pts = [(x_of(r), r[key]) for r in rows if key in r]
        return dict(
            key=key, x=[p[0] for p in pts], y=[p[1]
                                               for p in pts]) if pts else None

    budget = next((s for s in (series(train, k, x_train)
                               for k in BUDGET_KEYS) if s), None)
    params = series(train, PARAMS_KEY, x_train)
    metric_keys = list(METRIC_KEYS) + sorted({
        k
        for r in val
        for k in r if k.endswith('/bbox_mAP') or k.endswith('/mAP')
    })
    metric = next((s for s in (series(val, k, lambda r: r['step'])
                               for k in metric_keys) if s), None)
    return dict(
        xlabel='epoch' if by_epoch else 'iteration',
        budget=budget,
        params=params,
        metric=metric)


# ------------------------------------------------------------------ plots
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'))


def plot_channels(rows: Sequence[WidthRow],
                  path: str,
                  title: Optional[str] = None) -> str:
    """Bars of each layer's channels before (grey) and after (blue), with
    the kept fraction below; x ticks at stage boundaries. Writes ``path``
    (PNG) and returns it."""
    if not rows:
        raise ValueError('plot_channels: no layers to plot')
    n = len(rows)
    fig = _figure(max(8.0, min(0.08 * n + 4, 40.0)), 6.5)
    top, bottom = fig.subplots(
        2, 1, sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    xs = list(range(n))
    before = [r[1] for r in rows]
    after = [r[2] for r in rows]
    top.bar(xs, before, width=0.9, color='#c8c8c8', label='before')
    top.bar(xs, after, width=0.9, color='#1f77b4', label='after')
    top.set_ylabel('output channels')
    top.legend(loc='upper left')
    kept = sum(after) / max(sum(before), 1)
    top.set_title(title or f'{n} layers, {sum(after)}/{sum(before)} '
                  f'channels kept ({kept:.1%})')
    bottom.plot(
        xs, [a / b if b else 1.0 for _, b, a in rows],
        color='#1f77b4',
        marker='.',
        linewidth=0.8)
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel('kept')
    ticks, labels, last = [], [], None
    for i, (name, _, _) in enumerate(rows):
        st = stage_of(name)
        if st != last:
            ticks.append(i)
            labels.append(st)
            last = st
    bottom.set_xticks(ticks)
    bottom.set_xticklabels(labels, rotation=60, ha='right', fontsize=7)
    bottom.set_xlim(-1, n)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_training(curves: Dict, path: str, title: Optional[str] = None) -> str:
    """FLOPs (or params) ratio and params over training on top, the
    validation mAP below, sharing the x axis. Writes ``path`` (PNG)."""
    budget, params, metric = (
        curves.get(k) for k in ('budget', 'params', 'metric'))
    if budget is None and metric is None:
        raise ValueError('plot_training: the scalars hold no pruning budget '
                         f'({", ".join(BUDGET_KEYS)}) and no validation mAP '
                         f'({", ".join(METRIC_KEYS)})')
    fig = _figure(8, 6)
    top, bottom = fig.subplots(2, 1, sharex=True)
    if budget is not None:
        # a training record at iteration i describes the iteration that
        # ends at x: hold its value over the iteration before it ('pre')
        top.step(
            budget['x'],
            budget['y'],
            where='pre',
            color='#1f77b4',
            label=budget['key'])
        top.set_ylim(0, 1.05)
        top.set_ylabel(budget['key'].replace('prune_', '').replace('_', ' ') +
                       ' of dense')
        top.legend(loc='upper right')
        if params is not None:
            right = top.twinx()
            right.step(
                params['x'],
                params['y'],
                where='pre',
                color='#ff7f0e',
                linestyle='--',
                label='params (M)')
            right.set_ylabel('params (M)')
            right.legend(loc='lower left')
    else:
        top.text(
            0.5,
            0.5,
            'no pruning scalars logged',
            ha='center',
            va='center',
            transform=top.transAxes)
    if metric is not None:
        bottom.plot(
            metric['x'],
            metric['y'],
            color='#2ca02c',
            marker='o',
            label=metric['key'])
        bottom.set_ylabel(metric['key'])
        bottom.legend(loc='lower right')
    else:
        bottom.text(
            0.5,
            0.5,
            'no validation mAP logged',
            ha='center',
            va='center',
            transform=bottom.transAxes)
    bottom.set_xlabel(curves.get('xlabel', 'epoch'))
    top.set_title(title or 'pruning over training', fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path
