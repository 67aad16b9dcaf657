"""BaseCriterion: per-channel importance of a channel group.

A criterion returns a (G,) float tensor in the group's index space; larger
means more important. Reading a group's weight slices is written once here
(``group_weight_rows``), so criteria never branch on layer types.
"""
import abc
from typing import Dict, Iterable, Iterator, Optional, Tuple

import torch
import torch.nn as nn


def group_weight_rows(
    model: nn.Module, group, kinds=('conv', 'linear')
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

    Lifecycle (declared here so a hook never probes for it): a criterion
    that reads only weights needs nothing; a *data-driven* one
    (:attr:`data_driven`) collects statistics between :meth:`attach` and
    :meth:`detach`, either during ordinary training backward passes
    (Taylor) or in a scoring pass the caller runs at the event
    (:attr:`needs_scoring_pass`; one :meth:`scoring_step` per batch). Then
    :meth:`sync` (all-reduce over ranks), :meth:`score`, and :meth:`reset`
    before the next window. All of these are no-ops here.

    Examples:
        >>> crit = L1Criterion()
        >>> scores = crit.score(model, graph)   # {group name: (G,) tensor}
        >>> crit = TaylorCriterion()              # data-driven
        >>> crit.attach(model, graph)            # ... backward passes ...
        >>> crit.sync(); scores = crit.score(model, graph); crit.reset()
    """

    #: whether :meth:`score_group` can score a reader group (fine mode
    #: with ``read_pruning``: one reader's stream columns, no producer
    #: rows). Criteria that cannot leave such groups unscored, so the
    #: allocators keep them whole instead of reading zeros as unimportant.
    scores_readers = False

    #: AMP loss scale (number or callable) that gradient-reading criteria
    #: divide each backward's contribution by; None: unscaled
    loss_scale = None

    @property
    def data_driven(self) -> bool:
        """Whether scores need activations/gradients collected after
        :meth:`attach` (False: weights only)."""
        return False

    @property
    def needs_scoring_pass(self) -> bool:
        """Whether statistics can only come from a dedicated scoring pass
        (:meth:`scoring_step`), not from training backward passes."""
        return False

    def check_model(self, model: nn.Module) -> None:
        """Raise a clear error, before any training, when this criterion
        cannot score ``model`` (e.g. LRP on SiLU networks)."""

    def attach(self, model: nn.Module, graph) -> None:
        """Start collecting statistics on ``graph``'s groups (resets)."""

    def detach(self) -> None:
        """Stop collecting (remove hooks); collected statistics stay."""

    def reset(self) -> None:
        """Forget the collected statistics."""

    def sync(self) -> None:
        """All-reduce the statistics over ranks (idempotent)."""

    def scoring_step(self, model: nn.Module, data: dict) -> None:
        """One scoring-pass batch: ``data`` is the data preprocessor's
        output (``inputs``, ``data_samples``). Default: backward of the
        model's training loss, which gradient-reading criteria observe
        through their hooks (no optimizer step is taken)."""
        losses = model(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        loss.backward()

    @abc.abstractmethod
    def score_group(self, model: nn.Module, group) -> torch.Tensor:
        """(G,) importance of ``group``'s channels."""

    def score(
            self,
            model: nn.Module,
            graph,
            names: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
        """Scores of every prunable group, or only of those in ``names``
        (a method that leaves groups alone must not score them: some
        criteria cannot, e.g. HRank on the RoI head's fully connected
        layers, which have no spatial output)."""
        wanted = None if names is None else set(names)
        return {
            g.name: self.score_group(model, g).float().cpu()
            for g in graph.prunable_groups()
            if (wanted is None or g.name in wanted) and (
                getattr(g, 'reader', None) is None or self.scores_readers)
        }
