"""The scoring pass: a few training batches, no update, for a data-driven
criterion to observe.

Why norm layers use *batch* statistics here: early in training (the first
event after one short epoch) BN's running statistics are far from the
activations' (running_var starts at 1, momentum 0.03 in YOLOX), so an
eval-mode forward blows activations up layer after layer until the losses
and their gradients overflow; every contribution is then non-finite and
skipped, and scoring fails with "no scoring data reached group ..."
(issue 14 item 11). The training forward normalises with the batch's own
statistics, so scoring sees what training sees. :func:`batch_statistics`
does that without touching the running statistics (``track_running_stats``
is switched off for the pass: no running-mean/var update, no
``num_batches_tracked`` increment), so the model after the pass is the
model before it. Norm layers that training itself keeps in eval mode
(mmdet ResNet ``norm_eval=True``) stay in eval mode.
"""
from contextlib import contextmanager
from typing import Iterable, List, Optional

import torch.nn as nn

from ..graph.layers import is_batchnorm
from .base import BaseCriterion


@contextmanager
def batch_statistics(model: nn.Module,
                     norms: Optional[List[nn.Module]] = None):
    """Inside, ``norms`` (default: ``model``'s BN layers now in train
    mode) normalise with batch statistics and update nothing."""
    if norms is None:
        norms = [m for m in model.modules() if is_batchnorm(m) and m.training]
    saved = [(m, m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.training = True
        m.track_running_stats = False
    try:
        yield norms
    finally:
        for m, training, track in saved:
            m.training, m.track_running_stats = training, track


def run_scoring_pass(model: nn.Module,
                     criterion: BaseCriterion,
                     graph,
                     batches: Iterable,
                     num_batches: int,
                     progress=None) -> None:
    """Attach ``criterion`` to ``graph`` and feed it ``num_batches`` of
    ``batches`` (raw dataloader batches) through
    :meth:`~BaseCriterion.scoring_step`, in train mode with
    :func:`batch_statistics`; then :meth:`~BaseCriterion.sync`. Gradients
    are cleared afterwards; no parameter or buffer changes.

    Args:
        model (nn.Module): the unwrapped detector (no DDP: the pass's
            backward must not trigger gradient all-reduces).
        progress (object, optional): anything with ``update()``, called
            once per batch.
    """
    criterion.attach(model, graph)
    was_training = model.training
    # train(): mmdet's own train() keeps norm_eval layers in eval mode
    model.train()
    try:
        with batch_statistics(model):
            for i, batch in enumerate(batches):
                if i >= num_batches:
                    break
                # training=False: no random resize of the scoring images
                data = model.data_preprocessor(batch, False)
                criterion.scoring_step(model, data)
                if progress is not None:
                    progress.update()
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    criterion.sync()


def score_event(model: nn.Module,
                criterion: BaseCriterion,
                graph,
                names: Optional[Iterable[str]],
                batches: Iterable,
                num_batches: Optional[int],
                progress=None) -> dict:
    """A prune event's scores of the groups ``names`` (None: every
    prunable group): a scoring pass first when ``num_batches`` is set and
    the criterion is data-driven, then sync (identical scores on every
    rank), score, and detach the pass's hooks, or, for statistics
    accumulated during training, reset them for the next window."""
    if criterion.data_driven and num_batches:
        run_scoring_pass(model, criterion, graph, batches, num_batches,
                         progress)
    criterion.sync()
    scores = criterion.score(model, graph, names)
    if num_batches:
        criterion.detach()
    else:
        criterion.reset()
    return scores
