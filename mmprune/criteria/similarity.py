"""Weight-similarity importance with greedy de-duplication (ACP-TP).

Paper: Liu et al., "Adaptive Channel Pruning for Trainability Protection",
PRCV 2023, LNCS 14434, DOI 10.1007/978-981-99-8549-4_12 (abstract only:
a "model-weight-based similarity calculation module" removes unnecessary
channels). The formulas below are the project's reconstruction
(docs/methods.md §1B(a)); everything is **our choice**:

* ``v_c``: the concatenated producer filters of group channel ``c`` (all
  producers of a coupled group; depthwise convs are not producers, so their
  9-element filters never enter, §1B(i));
* similarity ``S_cd = u_c . u_d`` with ``u = v / ||v||`` (``'cosine'``,
  default), or ``'gram'``: ``S_cd = v_c . v_d / mean_e ||v_e||^2`` (TPP's
  Gram matrix scaled to the mean self-product); ``rho`` is clipped to 1;
* redundancy ``rho_c = max_{d in K, d != c} |S_cd|`` over the current kept
  set ``K``; importance ``I_c = (||v_c|| / mean_d ||v_d||) * (1 - rho_c)``;
* greedy de-duplication: prune the smallest ``I``, record its partner
  ``p(c) = argmax_{d in K} |S_cd|``, remove ``c`` from ``K`` and update
  ``rho``. With ``protect_partners`` (default) a recorded partner is not
  pruned while any unprotected candidate is left, so both members of a
  near-duplicate pair are never pruned together (and the partner can take
  over the pruned channel's function, §1B(a) "feature correction").

``score_group`` returns the greedy scores: channel ``c``'s ``I`` at the
moment the greedy removes it, made strictly increasing along the greedy
order (each value at least ``1e-5 * max(|previous|, 1e-3)`` above the
previous one). Any
allocator that drops a group's lowest scores therefore drops a prefix of
the greedy order, and the values stay comparable across groups (an
allocator may normalise them, e.g. by the group median for ACP-TP).
``greedy=False`` returns the plain ``I`` with ``K`` = all channels.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..registry import CRITERIA
from .base import BaseCriterion
from .filters import group_filter_matrix

_SIMILARITIES = ('cosine', 'gram')


@CRITERIA.register_module()
class WeightSimilarityCriterion(BaseCriterion):
    """ACP-TP weight-similarity importance ``I_c = norm ratio * (1 - rho)``.

    Args:
        similarity (str): ``'cosine'`` or ``'gram'``. Defaults to 'cosine'.
        greedy (bool): return greedy de-duplication scores (see module
            docstring). Defaults to True.
        protect_partners (bool): never prune a recorded partner while other
            candidates remain. Defaults to True.
    """

    def __init__(self,
                 similarity: str = 'cosine',
                 greedy: bool = True,
                 protect_partners: bool = True):
        if similarity not in _SIMILARITIES:
            raise ValueError(f'similarity must be one of {_SIMILARITIES}, '
                             f'got {similarity!r}')
        self.similarity = similarity
        self.greedy = bool(greedy)
        self.protect_partners = bool(protect_partners)

    # -------------------------------------------------------------- maths
    def matrices(self, model, group) -> Tuple[np.ndarray, np.ndarray]:
        """``(S, ratio)``: (G, G) |similarity| with -1 on the diagonal and
        (G,) norm ratios ``||v_c|| / mean ||v||``."""
        v = group_filter_matrix(model, group).double().numpy()
        norms = np.linalg.norm(v, axis=1)
        mean = norms.mean()
        ratio = norms / mean if mean > 0 else np.zeros_like(norms)
        if self.similarity == 'cosine':
            u = v / np.maximum(norms, 1e-12)[:, None]
            s = np.abs(u @ u.T)
        else:
            msq = (norms**2).mean()
            s = np.abs(v @ v.T) / msq if msq > 0 else np.zeros((len(v), ) * 2)
        # rounding makes exact duplicates exactly 1, so ties between them
        # break by index, not by float noise
        s = np.minimum(np.round(s, 12), 1.0)
        np.fill_diagonal(s, -1.0)
        return s, ratio

    @staticmethod
    def _rho(s: np.ndarray, kept: np.ndarray,
             rows) -> Tuple[np.ndarray, np.ndarray]:
        """max/argmax of ``s[rows]`` over kept columns (self excluded by the
        -1 diagonal); 0 / -1 when no other channel is kept."""
        sub = np.where(kept[None, :], s[rows], -1.0)
        arg = sub.argmax(1)
        val = sub[np.arange(len(arg)), arg]
        arg = np.where(val < 0, -1, arg)
        return np.maximum(val, 0.0), arg

    def _greedy(self, s, ratio, pinned, steps=None):
        """Run the greedy; return (order, values, partners)."""
        g = len(ratio)
        kept = np.ones(g, dtype=bool)
        cand = ~pinned.copy()
        protected = np.zeros(g, dtype=bool)
        rho, arg = self._rho(s, kept, np.arange(g))
        order, values, partners = [], [], {}
        limit = int(cand.sum()) if steps is None else min(
            steps, int(cand.sum()))
        for _ in range(limit):
            pool = cand & ~protected
            if not (self.protect_partners and pool.any()):
                pool = cand
            imp = ratio * (1.0 - rho)
            c = int(np.flatnonzero(pool)[np.argmin(imp[pool])])
            order.append(c)
            values.append(float(imp[c]))
            p = int(arg[c])
            partners[c] = p if p >= 0 else None
            kept[c] = cand[c] = False
            if p >= 0:
                protected[p] = True
            stale = np.flatnonzero(arg == c)
            if len(stale):
                rho[stale], arg[stale] = self._rho(s, kept, stale)
        return order, values, partners

    # ------------------------------------------------------------- public
    def score_group(self, model, group) -> torch.Tensor:
        s, ratio = self.matrices(model, group)
        rho, _ = self._rho(s, np.ones(len(ratio), dtype=bool),
                           np.arange(len(ratio)))
        plain = ratio * (1.0 - rho)
        if not self.greedy:
            return torch.as_tensor(plain, dtype=torch.float32)
        order, values, _ = self._greedy(s, ratio, np.asarray(group.pinned))
        out = plain.copy()
        prev = -np.inf
        for c, val in zip(order, values):
            # strictly increasing along the greedy order (see docstring)
            if np.isfinite(prev):
                val = max(val, prev + 1e-5 * max(abs(prev), 1e-3))
            out[c] = prev = val
        return torch.as_tensor(out, dtype=torch.float32)

    def deduplicate(
            self, model, group,
            num_prune: int) -> Tuple[List[int], Dict[int, Optional[int]]]:
        """Greedily pick ``num_prune`` channels of ``group`` to prune.

        Returns:
            tuple: (pruned group indices in greedy order, ``{c: p(c)}`` the
            partner each had in the kept set when it was removed, or None
            when no other channel was kept).
        """
        if not (isinstance(num_prune, (int, np.integer)) and num_prune >= 0):
            raise ValueError(f'num_prune must be an int >= 0, got '
                             f'{num_prune!r}')
        s, ratio = self.matrices(model, group)
        order, _, partners = self._greedy(
            s, ratio, np.asarray(group.pinned), steps=int(num_prune))
        return order, partners

    def partners(self, model, group,
                 pruned: Sequence[int]) -> Dict[int, Optional[int]]:
        """``{c: argmax_{d kept} |S_cd|}`` for a final pruned set (the
        channel a pruned one is folded into by ``feature_correction=
        'merge'``); None when the group keeps nothing else."""
        s, _ = self.matrices(model, group)
        kept = np.ones(len(s), dtype=bool)
        pruned = [int(c) for c in pruned]
        kept[pruned] = False
        if not pruned:
            return {}
        _, arg = self._rho(s, kept, np.asarray(pruned))
        return {c: (int(a) if a >= 0 else None) for c, a in zip(pruned, arg)}
