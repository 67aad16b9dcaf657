"""BaseCriterion: per-channel importance of a channel group.

A criterion returns a (G,) float tensor in the group's index space; larger
means more important. Reading a group's weight slices is written once here
(``group_weight_rows``), so criteria never branch on layer types.
"""
import abc
from typing import Dict, Iterable, Iterator, Optional, Tuple

import torch
import torch.nn as nn


def group_weight_rows(model: nn.Module, group, kinds=('conv', 'linear')
                      ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(rows, group_index)`` for each producer of ``group``:
    ``rows`` (n, k) are the flattened producer filters of the group's
    channels ``group_index`` (n,)."""
    modules = dict(model.named_modules())
    for m in group.members:
        if m.axis != 'out' or m.kind not in kinds:
            continue
        w = modules[m.module].weight.detach()
        pos = torch.as_tensor(m.positions, dtype=torch.long, device=w.device)
        yield (w.index_select(0, pos).flatten(1),
               torch.as_tensor(m.group_index, dtype=torch.long))


class BaseCriterion(metaclass=abc.ABCMeta):
    """Scores the channels of every prunable group.

    Examples:
        >>> crit = L1Criterion()
        >>> scores = crit.score(model, graph)   # {group name: (G,) tensor}
    """

    @abc.abstractmethod
    def score_group(self, model: nn.Module, group) -> torch.Tensor:
        """(G,) importance of ``group``'s channels."""

    def score(self, model: nn.Module, graph,
              names: Optional[Iterable[str]] = None
              ) -> Dict[str, torch.Tensor]:
        """Scores of every prunable group, or only of those in ``names``
        (a method that leaves groups alone must not score them: some
        criteria cannot, e.g. HRank on the RoI head's fully connected
        layers, which have no spatial output)."""
        wanted = None if names is None else set(names)
        return {g.name: self.score_group(model, g).float().cpu()
                for g in graph.prunable_groups()
                if wanted is None or g.name in wanted}
