"""A readable, JSON-safe description of a :class:`ChannelGraph`.

For each group: its name (first producer), width, how many channels are
prunable, why the others are pinned, and every member module with its role:

* ``producer``: a conv/linear whose output rows are the group's channels;
* ``consumer``: a conv/linear reading the group's channels as input columns;
* ``norm`` / ``depthwise`` / ``groupnorm``: per-channel layers that follow
  the group (their width changes with it);
* ``... (scattered)``, fine mode only: the last module of a residual
  branch, whose kept channels are scattered back to the full stream width
  before the sum.
"""
from collections import Counter
from typing import Dict, List

from .channel_graph import ChannelGraph

_FOLLOWERS = {'norm': 'norm', 'dwconv': 'depthwise', 'gn': 'groupnorm'}


def _role(graph: ChannelGraph, module: str, kind: str, axis: str) -> str:
    if kind in _FOLLOWERS:
        role = _FOLLOWERS[kind]
    else:
        role = 'producer' if axis == 'out' else 'consumer'
    if module in graph.scatter and (axis == 'out' or kind in _FOLLOWERS):
        role += ' (scattered)'
    return role


def describe_groups(graph: ChannelGraph) -> dict:
    """``{'residual_mode', 'num_groups', 'num_prunable', 'groups': [...],
    'opaque', 'fine_fallbacks'}``; each group is ``{'name', 'width',
    'prunable', 'pinned', 'status', 'pin_reasons': {reason: channels},
    'members': [{'module', 'kind', 'role', 'channels'}]}``, plus ``'unit'``
    (channels per index, GroupNorm groups) when > 1 and
    ``'stream_sources'`` when the group writes a shortcut."""
    groups: List[dict] = []
    for g in graph.groups:
        members: Dict[tuple, dict] = {}
        for m in g.members:
            role = _role(graph, m.module, m.kind, m.axis)
            key = (m.module, role)
            # a follower is recorded on both axes; list it once
            if key in members:
                continue
            members[key] = dict(
                module=m.module,
                kind=m.kind,
                role=role,
                channels=int(len(m.positions)))
        reasons = Counter(g.pin_reasons.values())
        pinned = g.width - g.prunable
        if g.prunable == 0:
            status = 'pinned: ' + '; '.join(sorted(reasons)) if reasons \
                else 'pinned'
        elif pinned:
            status = f'prunable ({pinned} channels pinned)'
        else:
            status = 'prunable'
        entry = dict(
            name=g.name,
            width=g.width,
            prunable=g.prunable,
            pinned=pinned,
            status=status,
            pin_reasons=dict(sorted(reasons.items())),
            members=list(members.values()))
        if g.reader is not None:  # fine mode: one reader's stream columns
            entry['reader'] = g.reader
        if g.unit > 1:  # GroupNorm: one index = one group of unit channels
            entry['unit'] = g.unit
        sources = graph.stream_sources(g)
        if sources:  # identity side of a residual add (a shortcut)
            entry['stream_sources'] = sources
        groups.append(entry)
    return dict(
        residual_mode=graph.residual_mode,
        num_groups=len(groups),
        num_prunable=sum(1 for g in groups if g['prunable'] > 0),
        groups=groups,
        opaque=dict(graph.opaque),
        fine_fallbacks=list(graph.fine_fallbacks))


def format_groups(desc: dict, members: bool = True) -> str:
    """The text :func:`describe_groups` gives, one block per group."""
    lines = [
        f'{desc["num_groups"]} channel groups '
        f'({desc["num_prunable"]} prunable), residual mode '
        f'{desc["residual_mode"]!r}'
    ]
    for i, g in enumerate(desc['groups']):
        unit = (f' (GroupNorm groups of {g["unit"]} channels)' if g.get(
            'unit', 1) > 1 else '')
        lines.append(f'[{i}] {g["name"]}  width {g["width"]}{unit}  '
                     f'{g["status"]}')
        if g.get('reader'):
            lines.append(f'      stream columns read by {g["reader"]} '
                         f'(gathered)')
        if g.get('stream_sources'):
            lines.append(f'      stream source (shortcut): '
                         f'{", ".join(g["stream_sources"])}')
        if not members:
            continue
        for m in g['members']:
            lines.append(f'      {m["role"]:<21}{m["module"]}  '
                         f'({m["kind"]}, {m["channels"]} ch)')
    for where, why in desc['opaque'].items():
        lines.append(f'opaque: {where}: {why}')
    for f in desc['fine_fallbacks']:
        lines.append(f'fine mode fallback: {f}')
    return '\n'.join(lines)
