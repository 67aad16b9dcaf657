"""BaseRegularizer: a training-loss term a pruning method adds.

The contract a hook relies on (declared here, never probed):

* :meth:`loss` ``(model) -> 0-d tensor``, added to the detector's losses
  every iteration (``model`` unwrapped);
* :meth:`step` after every training iteration (ramps, e.g. TPP's lambda);
* :meth:`attach` ``(graph)`` whenever the structure changes (a cut), so
  channel positions refer to the current widths;
* :attr:`selective`: whether the term acts on a *selection* of channels
  given at soft events (:meth:`set_selection`, TPP) rather than on every
  prunable channel all along (BN-L1);
* :meth:`state_dict` / :meth:`load_state_dict`: the *whole* JSON-safe state
  (hyper-parameters that the run changes, ramps, selections), so a resumed
  run continues exactly where the interrupted one was (issue 14 item 4).
"""
import abc
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn


class BaseRegularizer(metaclass=abc.ABCMeta):
    """A pruning regulariser; see the module docstring for the contract.

    Examples:
        >>> reg = BNL1Regularizer(1e-5)
        >>> reg.attach(graph)
        >>> loss = task_loss + reg.loss(model); reg.step()
        >>> state = reg.state_dict()   # JSON-safe, into the checkpoint
    """

    @property
    def selective(self) -> bool:
        """True when the term acts on a selection (:meth:`set_selection`)."""
        return False

    @abc.abstractmethod
    def loss(self, model: nn.Module) -> torch.Tensor:
        """The term (0-d tensor) for ``model`` (unwrapped)."""

    def step(self, n: int = 1) -> None:
        """Called after each training iteration (``n`` of them)."""

    def attach(self, graph) -> None:
        """Bind to ``graph``, the model's current channel groups."""

    def set_selection(self,
                      graph,
                      selection: Dict[str, Sequence[int]],
                      window: Optional[int] = None) -> None:
        """Penalise ``selection`` (``{group: to-prune group indices}``) of
        ``graph`` from now on, over ``window`` iterations until it is
        removed (None: no window)."""
        raise NotImplementedError(f'{type(self).__name__} is not selective')

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """The whole JSON-safe state, with a ``version``."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict, graph=None) -> None:
        """Restore :meth:`state_dict` output; ``graph`` resolves group
        names of a selection (ignored by terms that have none)."""
