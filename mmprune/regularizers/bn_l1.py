"""BN-gamma L1 sparsity (Network Slimming; FCP's sparsity training).

Paper: Liu et al., "Learning Efficient Convolutional Networks through
Network Slimming", ICCV 2017, https://arxiv.org/abs/1708.06519 (code:
Eric-mingjie/network-slimming: ``grad += lambda_s * sign(gamma)``). FCP
(Chen et al., ICANN 2020, DOI 10.1007/978-3-030-61616-8_1) uses it as its
criterion's training (docs/methods.md §3(a), our choice there).

``L = lambda_s * sum |gamma_c|`` over the BN channels of the prunable
groups. Our choices: only channels that may be pruned are penalised (the
BN channels of unpinned group channels; shrinking a channel that must stay
only hurts accuracy), frozen gammas are skipped, and the term is a loss
(autograd gives the paper's sub-gradient ``lambda_s * sign(gamma)``).
``lambda_s``: 1e-4 (VGG), 1e-5 (ResNet), 2e-5 suggested for YOLOX whose
losses are sums (docs/methods.md §3(e)).
"""
from typing import List, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..registry import REGULARIZERS
from .base import BaseRegularizer

STATE_VERSION = 1


@REGULARIZERS.register_module()
class BNL1Regularizer(BaseRegularizer):
    """``lambda_s * sum |gamma|`` over prunable BN channels.

    Args:
        weight (float): ``lambda_s`` >= 0. Defaults to 1e-5.

    Examples:
        >>> reg = BNL1Regularizer(1e-5)
        >>> reg.attach(graph)
        >>> loss = task_loss + reg.loss(model)
    """

    def __init__(self, weight: float = 1e-5):
        if isinstance(weight,
                      bool) or not (isinstance(weight,
                                               (int, float)) and weight >= 0):
            raise ValueError(f'weight must be a number >= 0, got {weight!r}')
        self.weight = float(weight)
        self._norms: List[Tuple[str, torch.Tensor]] = []

    def attach(self, graph) -> None:
        """Penalise the BN channels of ``graph``'s prunable groups."""
        self._norms = []
        for g in graph.prunable_groups():
            free = np.nonzero(~np.asarray(g.pinned))[0]
            for m in g.members:
                if m.kind != 'norm' or m.axis != 'in':
                    continue
                hit = np.isin(m.group_index, free)
                if hit.any():
                    self._norms.append((m.module,
                                        torch.as_tensor(
                                            np.asarray(m.positions)[hit],
                                            dtype=torch.long)))
        if not self._norms:
            raise ValueError('BNL1Regularizer found no BN channel in the '
                             'prunable groups')

    def loss(self, model: nn.Module) -> torch.Tensor:
        """The sparsity term (0-d); ``model`` unwrapped (no DDP)."""
        if not self._norms:
            raise RuntimeError('call attach(graph) before loss(model)')
        device = next((p.device for p in model.parameters()),
                      torch.device('cpu'))
        total = torch.zeros((), device=device)
        if self.weight == 0:
            return total
        for name, pos in self._norms:
            gamma = getattr(model.get_submodule(name), 'weight', None)
            if gamma is None or not gamma.requires_grad:
                continue
            total = total + gamma.index_select(0, pos.to(
                gamma.device)).abs().sum()
        return self.weight * total

    def state_dict(self) -> dict:
        return dict(version=STATE_VERSION, weight=self.weight)

    def load_state_dict(self, state: dict, graph=None) -> None:
        if not isinstance(state, dict) or \
                state.get('version') != STATE_VERSION:
            raise ValueError(f'not a version {STATE_VERSION} '
                             f'BNL1Regularizer state: {state!r}')
        norms = self._norms
        self.__init__(state.get('weight'))  # validates, keeps attachment
        self._norms = norms
