"""The methods the quality suite compares, and when each one prunes.

Every run trains from scratch for the same ``epochs`` (the budget of the
comparison is equal epochs, not equal iterations of the compact model):

* ``dense``: no pruning;
* peers, one-shot at epoch ``P`` then fine-tuning to the end:
  ``l1_uniform`` (mmprune's ``ChannelPruningHook`` with the L1 criterion
  and :class:`~mmprune.allocators.UniformAllocator`: every group loses the
  same fraction), ``tp_magnitude`` and ``tp_taylor`` (Torch-Pruning 1.6,
  global ranking, :mod:`benchmarks.tp_peer`);
* mmprune's four method presets through ``ChannelPruningHook(method=...)``:
  ``bpc`` and ``fcp`` prune once at ``P`` (FCP's BN-L1 sparsity term is on
  from the start), ``acp_tp`` (soft events, TPP penalty, each selection
  removed at the next position) and ``gcp_frs`` (hard events) prune
  gradually from epoch ``b`` to ``P``;
* ``l1_coupled`` / ``l1_fine``: L1 with the hook's default global
  :class:`~mmprune.allocators.BudgetAllocator`, one-shot at ``P``, in
  coupled and in fine residual mode (the ResNet comparison).

``P = round(0.4 * epochs)`` (at least 1, at most ``epochs - 1``): the
papers' schedules assume a pretrained model or hundreds of epochs; with a
few epochs from scratch a cut after 40 % of training leaves the rest to
recover. ``b = round(0.1 * epochs)`` (at least 1).
"""
from typing import Sequence

#: mmprune's method presets
MMPRUNE_METHODS = ('acp_tp', 'bpc', 'fcp', 'gcp_frs')
#: the baselines mmprune's best method is compared with
PEER_METHODS = ('l1_uniform', 'tp_magnitude', 'tp_taylor')
RESIDUAL_METHODS = ('l1_coupled', 'l1_fine')
ALL_METHODS = ('dense', ) + PEER_METHODS + MMPRUNE_METHODS + \
    RESIDUAL_METHODS

LABELS = dict(
    dense='dense', l1_uniform='L1 uniform (one-shot)',
    tp_magnitude='Torch-Pruning magnitude (global)',
    tp_taylor='Torch-Pruning Taylor (global)', acp_tp='mmprune ACP-TP',
    bpc='mmprune BPC', fcp='mmprune FCP', gcp_frs='mmprune GCP-FRS',
    l1_coupled='L1 global, coupled residuals',
    l1_fine='L1 global, fine residuals')

PRUNE_FRACTION = 0.4
BEGIN_FRACTION = 0.1
#: at most this many gradual events (the short schedules have few epochs)
MAX_GRADUAL_EVENTS = 4
#: batches the Taylor peer backpropagates to score (no optimizer step)
TP_TAYLOR_BATCHES = 8


def prune_epoch(epochs: int) -> int:
    """``P``: the one-shot cut, and the last gradual event."""
    return max(1, min(epochs - 1 if epochs > 1 else 1,
                      round(PRUNE_FRACTION * epochs)))


def gradual_positions(epochs: int, soft: bool) -> dict:
    """``begin``/``end``/``interval`` for gradual events ending at ``P``
    (soft events are cut one interval later, which must stay within
    training)."""
    end = prune_epoch(epochs)
    begin = min(end, max(1, round(BEGIN_FRACTION * epochs)))
    span = end - begin
    interval = max(1, -(-span // (MAX_GRADUAL_EVENTS - 1))) if span else 1
    end = begin + (span // interval) * interval
    if soft:
        while end + interval > epochs and end > begin:
            end -= interval
    return dict(begin=begin, end=end, interval=interval)


def method_spec(method: str, epochs: int, target: float,
                input_size: Sequence[int], batches_per_epoch: int) -> dict:
    """How a quality run of ``method`` prunes.

    Returns:
        dict: ``kind`` ('dense', 'mmprune' or 'torch_pruning') and
        ``hook``: a ``ChannelPruningHook`` config (mmprune) or the
        :class:`benchmarks.tp_peer.TorchPruningHook` arguments.
    """
    if method not in ALL_METHODS:
        raise ValueError(f'unknown benchmark method {method!r}; valid: '
                         f'{ALL_METHODS}')
    if method == 'dense':
        return dict(kind='dense', hook=None)
    size = tuple(input_size)
    p = prune_epoch(epochs)
    if method.startswith('tp_'):
        return dict(kind='torch_pruning', hook=dict(
            importance=method[3:], target=target, epoch=p, input_size=size,
            taylor_batches=min(TP_TAYLOR_BATCHES, batches_per_epoch)))
    hook = dict(type='ChannelPruningHook', target=target, input_size=size)
    if method == 'l1_uniform':
        hook.update(criterion='L1Criterion',
                    allocator=dict(type='UniformAllocator'), begin=p)
    elif method in RESIDUAL_METHODS:
        hook.update(criterion='L1Criterion', begin=p,
                    residual_mode=method.split('_')[1])
    elif method in ('bpc', 'fcp'):
        hook.update(method=method, begin=p)
        if method == 'bpc':  # the preset's 32 calibration batches
            hook['scoring_batches'] = min(32, batches_per_epoch)
    elif method == 'acp_tp':
        hook.update(method=method, **gradual_positions(epochs, soft=True))
    elif method == 'gcp_frs':
        hook.update(method=method, **gradual_positions(epochs, soft=False),
                    scoring_batches=min(16, batches_per_epoch))
    return dict(kind='mmprune', hook=hook)
