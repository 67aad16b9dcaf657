"""MethodPreset: a named, inspectable bundle of pruning settings.

A preset is plain data (dicts) that a training hook consumes: which
residual mode to trace in, which criterion, allocator and regularisers to
build (registry configs), when to prune (schedule per detector family),
which groups to leave alone, and method-specific options. Nothing here
runs training; ``build_*`` only instantiates components.
"""
import copy
import re
from dataclasses import dataclass, field, replace
from typing import Dict, List, Sequence, Tuple

from ..registry import ALLOCATORS, CRITERIA, REGULARIZERS, build_from


@dataclass(frozen=True)
class MethodPreset:
    """Settings of one pruning method.

    Attributes:
        name (str): short name, e.g. ``'acp_tp'``.
        title (str): the paper title.
        paper (str): citation with DOI/arXiv.
        residual_mode (str): ``'coupled'`` or ``'fine'`` (graph tracing).
        criterion (dict): CRITERIA config.
        allocator (dict): ALLOCATORS config.
        regularizers (tuple[dict]): REGULARIZERS configs.
        schedule (dict): when to score/prune, for ``family``.
        family (str): the detector family ``schedule`` is for.
        schedules (dict): every family's schedule.
        groups (dict): group filter, see :func:`filter_groups`.
        options (dict): method-specific settings for the hook.
        our_choices (tuple[str]): decisions the paper does not fix.
    """
    name: str
    title: str
    paper: str
    residual_mode: str
    criterion: dict
    allocator: dict
    regularizers: Tuple[dict, ...]
    schedules: Dict[str, dict]
    family: str
    groups: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    our_choices: Tuple[str, ...] = ()

    @property
    def schedule(self) -> dict:
        return copy.deepcopy(self.schedules[self.family])

    def for_family(self, family: str) -> 'MethodPreset':
        """The same preset with the schedule of ``family``."""
        if family not in self.schedules:
            raise ValueError(f'{self.name} has no schedule for family '
                             f'{family!r}; valid: {sorted(self.schedules)}')
        return replace(self, family=family)

    def build_criterion(self, **overrides):
        return build_from(CRITERIA, {
            **copy.deepcopy(self.criterion),
            **overrides
        }, 'criterion')

    def build_allocator(self, **overrides):
        return build_from(ALLOCATORS, {
            **copy.deepcopy(self.allocator),
            **overrides
        }, 'allocator')

    def build_regularizers(self) -> List[object]:
        return [
            build_from(REGULARIZERS, copy.deepcopy(c), 'regularizer')
            for c in self.regularizers
        ]

    def to_dict(self) -> dict:
        """A deep copy as plain dicts (for logs and checkpoints)."""
        return copy.deepcopy(
            dict(
                name=self.name,
                title=self.title,
                paper=self.paper,
                residual_mode=self.residual_mode,
                criterion=self.criterion,
                allocator=self.allocator,
                regularizers=list(self.regularizers),
                schedule=self.schedules[self.family],
                family=self.family,
                groups=self.groups,
                options=self.options,
                our_choices=list(self.our_choices)))


def filter_groups(graph,
                  exclude_coupled: bool = False,
                  exclude_shared: bool = False,
                  exclude: Sequence[str] = (),
                  exclude_stream_sources: bool = False,
                  exclude_streams: bool = False) -> List[str]:
    """Names of ``graph``'s prunable groups a method prunes.

    Args:
        exclude_coupled (bool): leave out groups with more than one
            producer (coupled residual streams; in coupled mode also the
            FPN: its laterals are coupled by the top-down adds and its
            output convs by the head that reads every level). Defaults to
            False.
        exclude_shared (bool): leave out groups whose producer runs more
            than once per forward (heads shared across FPN levels, e.g.
            RetinaNet's and the RPN's convs). Defaults to False.
        exclude (Sequence[str]): regexes; a group whose name matches one is
            left out (e.g. ``'^roi_head'``). Defaults to ().
        exclude_stream_sources (bool): leave out groups written by the
            identity side of a residual add (a shortcut, found from the
            graph's structure: YOLOX's CSP ``main_conv``, ResNet's
            ``downsample``; :meth:`ChannelGraph.stream_sources`). Defaults
            to False.
        exclude_streams (bool): leave out groups coupled by an element-wise
            add (residual streams; the FPN laterals and top-down sums in
            coupled mode) but keep groups coupled only by a shared reader
            (the FPN output convs a head shared across levels reads):
            :meth:`ChannelGraph.is_stream`. Defaults to False.
    """
    pats = [re.compile(p) for p in exclude]
    names = []
    for g in graph.prunable_groups():
        prods = g.producers()
        if exclude_coupled and len(prods) > 1:
            continue
        if exclude_shared and any(graph.records[m.module].calls > 1
                                  for m in prods):
            continue
        if exclude_streams and graph.is_stream(g):
            continue
        if exclude_stream_sources and graph.stream_sources(g):
            continue
        if any(p.search(g.name) for p in pats):
            continue
        names.append(g.name)
    return names
