"""PruningPlan: which channels of each group to keep, as JSON-safe data.

Groups are named by their first producer's module name, and the index space
is the group's (see :class:`mmprune.graph.ChannelGroup`). Re-tracing the same
config in the same residual mode gives the same names and index spaces, so a
plan replays onto a freshly built dense model.
"""
import json
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

PLAN_VERSION = 1


@dataclass
class PruningPlan:
    """Args:
        keep (dict[str, list[int]]): group name -> kept channel indices.
        residual_mode (str): the residual mode the groups were traced in.
        widths (dict[str, int]): group width when the plan was made (checked
            on replay, so a plan never lands on the wrong model).
        read_pruning (bool): fine mode only: the groups were traced with
            reader groups (``'<reader>:in'``), so a replay traces the same
            way and rebuilds the readers' gathers. Written to the record
            only when True, so older records read back unchanged.
    """
    keep: Dict[str, List[int]] = field(default_factory=dict)
    residual_mode: str = 'coupled'
    widths: Dict[str, int] = field(default_factory=dict)
    version: int = PLAN_VERSION
    read_pruning: bool = False

    def to_dict(self) -> dict:
        d = dict(
            version=self.version,
            residual_mode=self.residual_mode,
            keep={
                k: [int(i) for i in v]
                for k, v in sorted(self.keep.items())
            },
            widths={
                k: int(v)
                for k, v in sorted(self.widths.items())
            })
        if self.read_pruning:
            d['read_pruning'] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'PruningPlan':
        if not isinstance(d, dict):
            raise ValueError(f'pruning plan must be a dict, got {type(d)}')
        if d.get('version') != PLAN_VERSION:
            raise ValueError(f'unsupported pruning plan version '
                             f'{d.get("version")!r} (expected {PLAN_VERSION})')
        keep = d.get('keep')
        if not isinstance(keep, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and all(
                    isinstance(i, int) and i >= 0 for i in v)
                for k, v in keep.items()):
            raise ValueError('pruning plan "keep" must map group names to '
                             'lists of non-negative ints')
        for k, v in keep.items():
            # a tampered or hand-edited plan must never empty a group, and
            # repeated indices would hide a wrong kept count
            if not v:
                raise ValueError(f'pruning plan keeps no channel of group '
                                 f'{k!r}')
            if len(set(v)) != len(v):
                raise ValueError(f'pruning plan lists a channel of group '
                                 f'{k!r} more than once')
        widths = d.get('widths', {})
        if not isinstance(widths, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and v > 0
                for k, v in widths.items()):
            raise ValueError('pruning plan "widths" must map group names to '
                             'positive ints')
        if d.get('residual_mode', 'coupled') not in ('coupled', 'fine'):
            raise ValueError(f'pruning plan residual_mode must be coupled or '
                             f'fine, got {d.get("residual_mode")!r}')
        read_pruning = d.get('read_pruning', False)
        if not isinstance(read_pruning, bool):
            raise ValueError(f'pruning plan "read_pruning" must be a bool, '
                             f'got {read_pruning!r}')
        if read_pruning and d.get('residual_mode') != 'fine':
            raise ValueError('pruning plan "read_pruning" needs residual_mode '
                             '"fine"')
        return cls(
            keep=keep,
            residual_mode=d.get('residual_mode', 'coupled'),
            widths=dict(d.get('widths', {})),
            read_pruning=read_pruning)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def keep_arrays(self) -> Dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.int64) for k, v in self.keep.items()}

    def check_against(self, graph) -> None:
        """Raise a readable error when the plan does not fit ``graph``."""
        problems = []
        if graph.residual_mode != self.residual_mode:
            problems.append(f'plan residual mode {self.residual_mode!r} != '
                            f'graph {graph.residual_mode!r}')
        if getattr(graph, 'read_pruning', False) != self.read_pruning:
            problems.append(f'plan read_pruning={self.read_pruning} != graph '
                            f'read_pruning='
                            f'{getattr(graph, "read_pruning", False)}')
        names = {g.name: g for g in graph.groups}
        for gname, kept in self.keep.items():
            g = names.get(gname)
            if g is None:
                problems.append(f'group {gname!r} not found in the model')
                continue
            want = self.widths.get(gname, g.width)
            if want != g.width:
                problems.append(f'group {gname!r} has width {g.width}, the '
                                f'plan expects {want}')
            elif kept and max(kept) >= g.width:
                problems.append(f'group {gname!r}: index {max(kept)} out of '
                                f'range (width {g.width})')
        if problems:
            raise ValueError('pruning plan does not match the model:\n  ' +
                             '\n  '.join(problems[:20]))
