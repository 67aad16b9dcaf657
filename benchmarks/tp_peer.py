"""Torch-Pruning (1.6) as a peer in the quality suite: a one-shot cut of the
live model inside an mmengine training run, then fine-tuning.

Torch-Pruning is a bench-only dependency (``requirements/bench.txt``); it is
used through its public API (``MetaPruner`` with ``global_pruning=True``
and ``GroupMagnitudeImportance`` or ``GroupTaylorImportance``, their
defaults otherwise), never imported by mmprune.

Matching a FLOPs target: Torch-Pruning's ``pruning_ratio`` is a fraction of
channels, not of FLOPs, so the ratio is bisected on deep copies of the model
until mmprune's cost model (the same one every other run is measured with)
gives the target within ``FLOPS_TOL``; the live model is then pruned with
that ratio (the ranking is deterministic, so the copy and the live model get
the same cut). ``max_pruning_ratio`` is 0.8, mmprune's default.

What Torch-Pruning does not do, and this hook does instead (say so beside
the numbers): it replaces pruned parameters in place and knows nothing of
the optimizer or the EMA copy. After the cut

* the optimizer keeps its param groups (learning rates, the paramwise
  weight-decay multipliers, the scheduler's bookkeeping) with each
  parameter swapped for its pruned successor by name, and its per-parameter
  state (Adam moments, momentum) *reset*: the index maps are Torch-Pruning
  internals;
* mmengine's EMA model is *rebuilt* from the pruned weights (its step count
  kept, so the momentum schedule continues); the average of the dense
  weights is lost.

mmprune's own hook slices the optimizer state and cuts the EMA copy with
the same plan instead (:mod:`mmprune.runtime.rebind`).
"""
import copy
import logging
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.hooks import Hook

logger = logging.getLogger('mmprune.bench')

#: the FLOPs fraction reached must be within this of the target
FLOPS_TOL = 0.01
BISECT_STEPS = 14
MAX_PRUNING_RATIO = 0.8
IMPORTANCES = ('magnitude', 'taylor')


def _unwrap(model: nn.Module) -> nn.Module:
    from mmengine.model import is_model_wrapper
    return model.module if is_model_wrapper(model) else model


def _importance(kind: str):
    import torch_pruning as tp
    if kind == 'magnitude':
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == 'taylor':
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f'importance must be one of {IMPORTANCES}, got '
                     f'{kind!r}')


def _flat_sum(out) -> torch.Tensor:
    from mmprune.adapters.detector import flatten_tensors
    return sum(t.sum() for t in flatten_tensors(out))


def tp_prune(model: nn.Module, kind: str, ratio: float,
             input_size: Sequence[int]) -> None:
    """Prune ``model`` in place with Torch-Pruning at channel ``ratio``
    (global ranking; prediction layers are ignored, as mmprune pins
    them). Taylor importance reads the gradients already in ``model``."""
    import torch_pruning as tp

    from mmprune.adapters.detector import fixed_output_module
    device = next(model.parameters()).device
    ignored = [
        m for n, m in model.named_modules() if n and fixed_output_module(n, m)
    ]
    was_training = model.training
    model.eval()  # the trace must not update BN statistics
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            torch.rand(1, 3, *input_size, device=device),
            importance=_importance(kind),
            global_pruning=True,
            pruning_ratio=ratio,
            max_pruning_ratio=MAX_PRUNING_RATIO,
            ignored_layers=ignored,
            forward_fn=lambda m, x: m(x, None, mode='tensor'),
            output_transform=_flat_sum)
        pruner.step()
    finally:
        model.train(was_training)


def _copy_with_grads(model: nn.Module) -> nn.Module:
    """``deepcopy`` drops ``.grad``; Taylor importance needs it."""
    clone = copy.deepcopy(model)
    grads = {n: p.grad for n, p in model.named_parameters()}
    for n, p in clone.named_parameters():
        if grads.get(n) is not None:
            p.grad = grads[n].detach().clone()
    return clone


def find_ratio(model: nn.Module,
               kind: str,
               target: float,
               input_size: Sequence[int],
               dense_flops: float,
               trace_size: Optional[Sequence[int]] = None) -> dict:
    """Bisect Torch-Pruning's channel ratio for ``target`` x dense FLOPs
    (counted at ``input_size``; Torch-Pruning traces at ``trace_size``,
    default ``input_size``: its channel groups do not depend on the size,
    and a full-size trace of a large detector costs seconds per trial).

    Returns:
        dict: ``ratio``, ``flops_ratio`` reached, ``trials``.
    """
    from mmprune.apis import cost_model
    lo, hi = 0.0, MAX_PRUNING_RATIO
    best = None
    trials = []
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        clone = _copy_with_grads(model)
        tp_prune(clone, kind, mid, trace_size or input_size)
        frac = cost_model(clone, input_size).flops() / dense_flops
        trials.append([round(mid, 5), round(frac, 5)])
        if frac > target:
            lo = mid
        else:
            hi = mid
            best = (mid, frac)  # the lightest ratio meeting the target
        if abs(frac - target) <= FLOPS_TOL and frac <= target + 1e-9:
            break
    if best is None:
        raise RuntimeError(
            f'Torch-Pruning ({kind}) cannot reach {target} of the dense '
            f'FLOPs with max_pruning_ratio={MAX_PRUNING_RATIO}: trials '
            f'(ratio, FLOPs fraction) {trials}')
    return dict(ratio=best[0], flops_ratio=best[1], trials=trials)


def rebuild_optimizer(optimizer: torch.optim.Optimizer, names: List[List[str]],
                      new: Dict[str, nn.Parameter]) -> None:
    """Swap each param group's parameters for ``new[name]`` (``names``: the
    groups' parameter names before the cut) and reset the state."""
    for group, group_names in zip(optimizer.param_groups, names):
        group['params'] = [new[n] for n in group_names]
    optimizer.state.clear()


def rebuild_ema(runner) -> bool:
    """Rebuild mmengine's EMA model from the (pruned) source model."""
    from mmengine.registry import MODELS
    for hook in runner.hooks:
        if type(hook).__name__ == 'EMAHook' and hasattr(hook, 'ema_model'):
            steps = hook.ema_model.steps.clone()
            hook.ema_model = MODELS.build(
                hook.ema_cfg, default_args=dict(model=hook.src_model))
            hook.ema_model.steps.copy_(steps)
            return True
    return False


class TorchPruningHook(Hook):
    """Prune once with Torch-Pruning after epoch ``epoch`` or after
    training iteration ``iteration`` (exactly one of the two).

    Args:
        importance (str): 'magnitude' (L2 of the group's weights, Torch-
            Pruning's default) or 'taylor' (first-order Taylor, |w * dL/dw|
            over ``taylor_batches`` training batches).
        target (float): fraction of the dense FLOPs to keep.
        epoch (int, optional): prune after this (1-based) epoch.
        iteration (int, optional): prune after this (1-based) training
            iteration instead: the 'trained' protocol cuts at the start.
        input_size (tuple): (H, W) for FLOPs and the trace.
        taylor_batches (int): batches backpropagated (eval-mode BN, no
            optimizer step) for the Taylor scores.
    """

    priority = 40  # before EMAHook (49), like ChannelPruningHook

    def __init__(self,
                 importance: str,
                 target: float,
                 input_size: Sequence[int],
                 epoch: Optional[int] = None,
                 iteration: Optional[int] = None,
                 taylor_batches: int = 8):
        if (epoch is None) == (iteration is None):
            raise ValueError(f'give exactly one of epoch and iteration, got '
                             f'epoch={epoch!r}, iteration={iteration!r}')
        for name, v in (('epoch', epoch), ('iteration', iteration)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f'{name} must be an int >= 1, got {v!r}')
        if importance not in IMPORTANCES:
            raise ValueError(f'importance must be one of {IMPORTANCES}, '
                             f'got {importance!r}')
        if not 0 < target < 1:
            raise ValueError(f'target must be in (0, 1), got {target!r}')
        self.importance, self.target = importance, target
        self.epoch, self.iteration = epoch, iteration
        self.input_size = tuple(input_size)
        self.taylor_batches = taylor_batches
        self.record = dict(
            tool='torch_pruning',
            importance=importance,
            global_pruning=True,
            max_pruning_ratio=MAX_PRUNING_RATIO,
            optimizer='param groups kept, state reset',
            ema='rebuilt from the pruned weights')

    def before_train(self, runner) -> None:
        from importlib.metadata import version

        from mmprune.apis import cost_model
        if self.epoch is not None and self.epoch > runner.max_epochs:
            raise ValueError(f'TorchPruningHook: epoch {self.epoch} is after '
                             f'training ends ({runner.max_epochs})')
        if self.iteration is not None and self.iteration > runner.max_iters:
            raise ValueError(f'TorchPruningHook: iteration {self.iteration} '
                             f'is after training ends ({runner.max_iters})')
        model = _unwrap(runner.model)
        self.dense_flops = cost_model(model, self.input_size).flops()
        self.record['torch_pruning_version'] = version('torch-pruning')

    def _taylor_grads(self, runner, model) -> None:
        """Accumulate dL/dw over ``taylor_batches`` training batches."""
        model.zero_grad(set_to_none=True)
        was_training = model.training
        model.eval()
        try:
            for i, batch in enumerate(runner.train_dataloader):
                if i >= self.taylor_batches:
                    break
                data = model.data_preprocessor(batch, False)
                loss, _ = model.parse_losses(model(**data, mode='loss'))
                loss.backward()
        finally:
            model.train(was_training)

    def after_train_epoch(self, runner) -> None:
        if self.epoch is not None and runner.epoch + 1 == self.epoch:
            self._cut(runner)

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None) -> None:
        if self.iteration is not None and runner.iter + 1 == self.iteration:
            self._cut(runner)

    def _cut(self, runner) -> None:
        t0 = time.perf_counter()
        model = _unwrap(runner.model)
        if self.importance == 'taylor':
            self._taylor_grads(runner, model)
        t_search = time.perf_counter()
        found = find_ratio(model, self.importance, self.target,
                           self.input_size, self.dense_flops)
        # the bisection is the benchmark's way to meet a FLOPs target, not
        # a cost of Torch-Pruning: reported apart from the training time
        found['search_seconds'] = time.perf_counter() - t_search
        by_id = {id(p): n for n, p in model.named_parameters()}
        optimizer = runner.optim_wrapper.optimizer
        names = [[by_id[id(p)] for p in g['params']]
                 for g in optimizer.param_groups]
        tp_prune(model, self.importance, found['ratio'], self.input_size)
        model.zero_grad(set_to_none=True)
        rebuild_optimizer(optimizer, names, dict(model.named_parameters()))
        self.record['ema_rebuilt'] = rebuild_ema(runner)
        self.record.update(
            found,
            event_seconds=time.perf_counter() - t0,
            epoch=self.epoch,
            iteration=self.iteration)
        runner.logger.info(
            f'Torch-Pruning ({self.importance}): channel ratio '
            f'{found["ratio"]:.4f} -> {found["flops_ratio"]:.3f} of the '
            f'dense FLOPs (target {self.target}); optimizer state reset, EMA '
            f'rebuilt')
