"""PNG plots of the benchmark results (drawn by :mod:`benchmarks.report`).

* ``quality_<model>_<protocol>.png``: mAP against the FLOPs fraction kept
  (100/50/30 %), one marker per method and budget (mean over seeds, bars:
  the seeds' standard deviation);
* ``latency_<model>_<protocol>.png``: the same points against the measured
  latency (batch 1, one thread);
* ``speed.png``: realized speedup / FLOPs speedup per measured row, with
  the coupled (0.9) and fine (0.85) targets;
* ``graph_time.png``: graph-analysis seconds, mmprune vs Torch-Pruning.

Figures are drawn on matplotlib's Agg canvas (no pyplot, no global
backend) and saved atomically.
"""
from typing import Dict, List, Sequence

from mmprune.utils.io import atomic_write

_COLORS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b',
           '#e377c2', '#7f7f7f', '#bcbd22', '#17becf')
_MARKERS = 'o^sDvP*Xh<>'


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'))
    return path


def _quality_points(ax, points: Sequence[dict], x: str) -> None:
    labels = []
    for p in points:
        if p['label'] not in labels:
            labels.append(p['label'])
    for i, label in enumerate(labels):
        pts = sorted(
            (p
             for p in points if p['label'] == label and p.get(x) is not None),
            key=lambda p: p[x])
        if not pts:
            continue
        ax.errorbar([p[x] for p in pts], [p['mAP'] for p in pts],
                    yerr=[p['std'] or 0.0 for p in pts],
                    fmt=_MARKERS[i % 11] + '-',
                    color=_COLORS[i % 10],
                    capsize=3,
                    markersize=7,
                    linewidth=0.8,
                    label=label)
    ax.set_ylabel('bbox mAP (x100)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='best')


def plot_quality(points: Sequence[dict], path: str, title: str) -> str:
    """``points``: dicts with ``label``, ``flops_ratio``, ``mAP`` (points,
    i.e. x100), ``std`` (or None); a method's budgets are joined."""
    if not points:
        raise ValueError('plot_quality: no results to plot')
    fig = _figure(8, 5.5)
    ax = fig.subplots()
    _quality_points(ax, points, 'flops_ratio')
    ax.set_xlabel('FLOPs kept (fraction of dense)')
    ax.set_xlim(0, 1.05)
    ax.set_title(title)
    return _save(fig, path)


def plot_quality_latency(points: Sequence[dict], path: str, title: str) -> str:
    """Like :func:`plot_quality` against ``latency_ms`` (points without a
    latency are left out)."""
    if not any(p.get('latency_ms') for p in points):
        raise ValueError('plot_quality_latency: no point has a latency')
    fig = _figure(8, 5.5)
    ax = fig.subplots()
    _quality_points(ax, points, 'latency_ms')
    ax.set_xlabel('latency, ms (batch 1, torch eager, 1 thread)')
    ax.set_title(title)
    return _save(fig, path)


def plot_speed(rows: Sequence[dict], path: str, targets: Dict[str,
                                                              float]) -> str:
    """Bars of ``realized_over_flops`` per row (``name``, ``mode``), the
    target of each mode drawn as a line."""
    if not rows:
        raise ValueError('plot_speed: no rows to plot')
    fig = _figure(max(8, 0.35 * len(rows) + 3), 5.5)
    ax = fig.subplots()
    xs = list(range(len(rows)))
    modes = sorted({r['mode'] for r in rows})
    colors = {m: _COLORS[i] for i, m in enumerate(modes)}
    ax.bar(
        xs, [r['realized_over_flops'] for r in rows],
        color=[colors[r['mode']] for r in rows])
    for i, m in enumerate(modes):
        if m in targets:
            ax.axhline(
                targets[m],
                color=colors[m],
                linestyle='--',
                linewidth=1,
                label=f'{m} target {targets[m]}')
    ax.axhline(1.0, color='k', linewidth=0.6)
    ax.set_xticks(xs)
    ax.set_xticklabels([r['name'] for r in rows],
                       rotation=70,
                       ha='right',
                       fontsize=7)
    ax.set_ylabel('realized speedup / FLOPs speedup')
    ax.legend(fontsize=8)
    ax.set_title('Compact vs dense latency, relative to the FLOPs reduction')
    return _save(fig, path)


def plot_graph_time(rows: List[dict], path: str) -> str:
    """Grouped bars (log scale) of graph seconds per model."""
    if not rows:
        raise ValueError('plot_graph_time: no rows to plot')
    keys = (('mmprune_graph_s', 'mmprune (128 px trace)'),
            ('mmprune_graph_s_full_size', 'mmprune (full-size trace)'),
            ('torch_pruning_graph_s', 'Torch-Pruning (full size)'))
    fig = _figure(max(6, 1.6 * len(rows) + 2), 4.5)
    ax = fig.subplots()
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        xs = [j + (i - 1) * width for j in range(len(rows))]
        ax.bar(
            xs, [r.get(key) or 0.0 for r in rows],
            width=width,
            color=_COLORS[i],
            label=label)
    ax.set_yscale('log')
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r['model'] for r in rows])
    ax.set_ylabel('seconds (log)')
    ax.legend(fontsize=8)
    ax.set_title('Graph analysis time')
    return _save(fig, path)
