"""Blended criterion (BPC): rank-normalised criteria weighted per stage.

Paper: He, Huang, Liang, Liang, Yang, "Blending Pruning Criteria for
Convolutional Neural Networks", ICANN 2021, LNCS 12894 pp. 3-15,
arXiv 2107.05033 (abstract only: layer-wise clustering of criteria by the
rank of their scores, calibration factors per candidate, an evolutionary
search for the blend). Supporting: Huang et al., "Rethinking the Pruning
Criteria for Convolutional Neural Network", NeurIPS 2021.

Everything concrete is **our choice** (docs/methods.md §2B):

* pool: any registered criteria, default ``DEFAULT_POOL`` = {L1, L2, FPGM,
  BN-gamma, Taylor-FO, HRank};
* normalisation per group: ``rank`` (default) ``rank(s) / (G - 1)`` with
  average ranks for ties, or ``minmax``;
* clustering per group: Spearman correlation (Pearson correlation of
  average ranks, so ties are handled; a constant score vector correlates 0
  with everything), agglomerative average linkage merged while the mean
  pairwise rho >= ``rho_threshold`` (0.9); each cluster's representative
  is its medoid (highest mean rho to the other members, ties to the pool
  order); groups with fewer than 3 channels are skipped;
* stages: calibration factors alpha in [0, 1] are shared within a stage.
  :func:`default_stage` maps a group name to ``backbone.<child>`` (e.g.
  ``backbone.stage2``, ``backbone.layer3``, ``backbone.stem``), ``neck``,
  ``head`` (any top-level name containing ``head``), or else the first
  name component (toy nets). ``stages=[(regex, stage), ...]`` overrides it
  (first match wins). A stage's candidates are the criteria that are
  representatives in at least ``vote`` (half) of its clustered groups
  (at least the most frequent one; all criteria if no group clustered);
* blend: ``I = sum_k alpha_{k, stage} * norm(s_k)``; a stage missing from
  ``alphas`` uses ``alphas['*']``; a stage whose alphas are all zero uses
  equal weights (a blend must rank something).

The blend the search finds is a config dict: ``criterion=dict(
type='BlendedCriterion', **blend)`` works in any hook. Data-driven members
(Taylor, HRank) need ``attach``, a calibration pass, then scoring, exactly
as when used alone; :class:`BlendedCriterion` forwards ``attach``,
``detach``, ``reset`` and ``sync`` to them.
"""
import copy
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..adapters.stages import default_stage
from ..registry import CRITERIA, build_from
from .base import BaseCriterion

DEFAULT_POOL = {
    'l1': dict(type='L1Criterion'),
    'l2': dict(type='L2Criterion'),
    'fpgm': dict(type='FPGMCriterion'),
    'bn_scale': dict(type='BNScaleCriterion'),
    'taylor': dict(type='TaylorCriterion'),
    'hrank': dict(type='HRankCriterion'),
}
_NORMS = ('rank', 'minmax')


# ----------------------------------------------------------------- maths
def average_ranks(s) -> np.ndarray:
    """0-based ranks of ``s`` with ties given their average rank."""
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(s, kind='stable')
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.arange(len(s), dtype=np.float64)
    uniq, inv = np.unique(s, return_inverse=True)
    if len(uniq) < len(s):  # average within ties
        sums = np.bincount(inv, weights=ranks)
        cnt = np.bincount(inv)
        ranks = (sums / cnt)[inv]
    return ranks


def normalize_scores(s, mode: str = 'rank') -> np.ndarray:
    """Scores of one group mapped to [0, 1] (``rank`` or ``minmax``)."""
    s = np.asarray(s, dtype=np.float64)
    if len(s) <= 1:
        return np.ones(len(s))
    if mode == 'rank':
        return average_ranks(s) / (len(s) - 1)
    span = s.max() - s.min()
    return (s - s.min()) / span if span > 0 else np.full(len(s), 0.5)


def spearman_matrix(scores: Sequence) -> np.ndarray:
    """(K, K) Spearman correlations of K score vectors of one group."""
    r = np.stack([average_ranks(s) for s in scores])
    r = r - r.mean(1, keepdims=True)
    norm = np.linalg.norm(r, axis=1)
    ok = norm > 0
    rho = np.zeros((len(r), len(r)))
    rho[np.ix_(ok, ok)] = (r[ok] @ r[ok].T) / np.outer(norm[ok], norm[ok])
    np.fill_diagonal(rho, 1.0)
    return np.clip(rho, -1.0, 1.0)


def cluster_criteria(rho: np.ndarray,
                     threshold: float = 0.9) -> List[List[int]]:
    """Average-linkage agglomerative clusters of criteria whose mean
    pairwise correlation is >= ``threshold``; clusters and members in pool
    order."""
    clusters = [[i] for i in range(len(rho))]
    while len(clusters) > 1:
        best, pair = -np.inf, None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                link = rho[np.ix_(clusters[a], clusters[b])].mean()
                if link > best + 1e-12:
                    best, pair = link, (a, b)
        if best < threshold:
            break
        a, b = pair
        clusters[a] = sorted(clusters[a] + clusters[b])
        del clusters[b]
    return sorted(clusters)


def medoid(cluster: Sequence[int], rho: np.ndarray) -> int:
    """The member with the highest mean correlation to the others."""
    if len(cluster) == 1:
        return cluster[0]
    means = [np.mean([rho[i, j] for j in cluster if j != i]) for i in cluster]
    return cluster[int(np.argmax(means))]


def make_stage_fn(
    stages: Optional[Sequence[Tuple[str,
                                    str]]] = None) -> Callable[[str], str]:
    """``default_stage``, or the first matching ``(regex, stage)``."""
    if not stages:
        return default_stage
    compiled = []
    for item in stages:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise ValueError(f'stages must be (regex, stage) pairs, got '
                             f'{item!r}')
        compiled.append((re.compile(item[0]), str(item[1])))

    def fn(name: str) -> str:
        for pat, stage in compiled:
            if pat.search(name):
                return stage
        return default_stage(name)

    return fn


def cluster_pool(pool: Dict[str, Dict[str, torch.Tensor]],
                 stage_fn: Callable[[str], str] = default_stage,
                 threshold: float = 0.9,
                 vote: float = 0.5) -> dict:
    """Cluster the pool per group and vote candidates per stage.

    Args:
        pool (dict): ``{criterion key: {group: (G,) scores}}``.

    Returns:
        dict: ``groups``: ``{group: dict(stage, clusters=[[keys]],
        representatives=[keys])}`` (clustered groups only) and ``stages``:
        ``{stage: [candidate keys in pool order]}`` for every stage.
    """
    keys = list(pool)
    if not keys:
        raise ValueError('the criteria pool is empty')
    groups = list(pool[keys[0]])
    per_group, votes, clustered = {}, {}, {}
    stages = {}
    for g in groups:
        stage = stage_fn(g)
        stages.setdefault(stage, None)
        scores = [np.asarray(pool[k][g], dtype=np.float64) for k in keys]
        if len(scores[0]) < 3:
            continue
        rho = spearman_matrix(scores)
        clusters = cluster_criteria(rho, threshold)
        reps = [medoid(c, rho) for c in clusters]
        per_group[g] = dict(
            stage=stage,
            clusters=[[keys[i] for i in c] for c in clusters],
            representatives=[keys[i] for i in reps])
        clustered[stage] = clustered.get(stage, 0) + 1
        for i in reps:
            votes.setdefault(stage, np.zeros(len(keys)))[i] += 1
    for stage in stages:
        if stage not in votes:
            stages[stage] = list(keys)
            continue
        v = votes[stage]
        chosen = [
            k for i, k in enumerate(keys) if v[i] >= vote * clustered[stage]
        ]
        stages[stage] = chosen or [keys[int(np.argmax(v))]]
    return dict(groups=per_group, stages=stages)


def blend_scores(pool: Dict[str, Dict[str, torch.Tensor]],
                 alphas: Dict[str, Dict[str, float]],
                 stage_fn: Callable[[str], str] = default_stage,
                 normalize: str = 'rank') -> Dict[str, torch.Tensor]:
    """``{group: sum_k alpha_{k,stage} * norm(s_k)}`` from a computed pool."""
    keys = list(pool)
    out = {}
    for g in pool[keys[0]]:
        w = stage_weights(alphas, stage_fn(g), keys)
        total = None
        for k, a in w.items():
            if a == 0:
                continue
            term = a * normalize_scores(pool[k][g], normalize)
            total = term if total is None else total + term
        out[g] = torch.as_tensor(total, dtype=torch.float32)
    return out


def stage_weights(alphas: Dict[str, Dict[str, float]], stage: str,
                  keys: Sequence[str]) -> Dict[str, float]:
    """The alphas of ``stage`` (or ``'*'``); all-zero means equal."""
    if stage in alphas:
        w = alphas[stage]
    elif '*' in alphas:
        w = alphas['*']
    else:
        raise KeyError(f'blend has no alphas for stage {stage!r} and no '
                       f"'*' fallback; stages: {sorted(alphas)}")
    w = {k: float(w.get(k, 0.0)) for k in keys}
    if not any(v > 0 for v in w.values()):
        present = [
            k for k in keys
            if k in (alphas.get(stage) or alphas.get('*') or {})
        ]
        present = present or list(keys)
        w = {k: (1.0 if k in present else 0.0) for k in keys}
    return w


def check_alphas(alphas, keys) -> Dict[str, Dict[str, float]]:
    if not isinstance(alphas, dict) or not alphas:
        raise ValueError(f'alphas must be a non-empty dict stage -> '
                         f'{{criterion: alpha}}, got {alphas!r}')
    out = {}
    for stage, w in alphas.items():
        if not isinstance(w, dict):
            raise ValueError(f'alphas[{stage!r}] must be a dict criterion '
                             f'-> alpha, got {w!r}')
        for k, a in w.items():
            if k not in keys:
                raise ValueError(f'alphas[{stage!r}] names criterion {k!r} '
                                 f'that is not in criteria {sorted(keys)}')
            if not (isinstance(a, (int, float)) and 0 <= a <= 1):
                raise ValueError(f'alphas[{stage!r}][{k!r}] must be in '
                                 f'[0, 1], got {a!r}')
        out[str(stage)] = {k: float(a) for k, a in w.items()}
    return out


# ------------------------------------------------------------- criterion
@CRITERIA.register_module()
class BlendedCriterion(BaseCriterion):
    """BPC blend of rank-normalised criteria with per-stage alphas.

    Args:
        alphas (dict): ``{stage: {criterion key: alpha in [0, 1]}}``, with
            an optional ``'*'`` fallback stage.
        criteria (dict): ``{key: criterion config}``. Defaults to
            ``DEFAULT_POOL`` restricted to the keys ``alphas`` uses.
        stages (Sequence[tuple] | None): ``(regex, stage)`` overrides of
            :func:`default_stage`. Defaults to None.
        normalize (str): ``'rank'`` or ``'minmax'``. Defaults to 'rank'.

    Examples:
        >>> blend = dict(criteria=dict(l1=dict(type='L1Criterion'),
        ...                            bn=dict(type='BNScaleCriterion')),
        ...              alphas={'*': dict(l1=0.7, bn=0.3)})
        >>> crit = BlendedCriterion(**blend)
        >>> scores = crit.score(model, graph)
    """

    def __init__(self,
                 alphas: Dict[str, Dict[str, float]],
                 criteria: Optional[Dict[str, dict]] = None,
                 stages: Optional[Sequence[Tuple[str, str]]] = None,
                 normalize: str = 'rank'):
        if normalize not in _NORMS:
            raise ValueError(f'normalize must be one of {_NORMS}, got '
                             f'{normalize!r}')
        if criteria is None:
            used = {
                k
                for w in (alphas or {}).values() if isinstance(w, dict)
                for k in w
            }
            unknown = used - set(DEFAULT_POOL)
            if unknown:
                raise ValueError(f'alphas name criteria {sorted(unknown)} '
                                 f'that are not in the default pool '
                                 f'{sorted(DEFAULT_POOL)}; pass criteria=')
            criteria = {k: v for k, v in DEFAULT_POOL.items() if k in used}
        if not isinstance(criteria, dict) or not criteria:
            raise ValueError(f'criteria must be a non-empty dict key -> '
                             f'criterion config, got {criteria!r}')
        self.criteria_cfg = copy.deepcopy(dict(criteria))
        self.members = {
            k: build_from(CRITERIA, cfg, 'criterion')
            for k, cfg in self.criteria_cfg.items()
        }
        self.alphas = check_alphas(alphas, list(self.members))
        self.stages = [tuple(s) for s in stages] if stages else None
        self.stage_fn = make_stage_fn(self.stages)
        self.normalize = normalize

    def _each(self, method: str, *args):
        for crit in self.members.values():
            fn = getattr(crit, method, None)
            if callable(fn):
                fn(*args)

    @property
    def data_driven(self) -> bool:
        return any(c.data_driven for c in self.members.values())

    @property
    def needs_scoring_pass(self) -> bool:
        return any(c.needs_scoring_pass for c in self.members.values())

    def attach(self, model, graph) -> None:
        self._each('attach', model, graph)

    def detach(self) -> None:
        self._each('detach')

    def reset(self) -> None:
        self._each('reset')

    def sync(self) -> None:
        self._each('sync')

    def _used(self, stage: str) -> Dict[str, float]:
        return stage_weights(self.alphas, stage, list(self.members))

    def score_group(self, model, group) -> torch.Tensor:
        w = self._used(self.stage_fn(group.name))
        pool = {
            k: {
                group.name: self.members[k].score_group(model, group)
            }
            for k, a in w.items() if a > 0
        }
        return blend_scores(pool, {'*': {
            k: w[k]
            for k in pool
        }}, lambda name: '*', self.normalize)[group.name]

    def config(self) -> dict:
        """The JSON/py-safe kwargs that rebuild this criterion."""
        cfg = dict(
            criteria=copy.deepcopy(self.criteria_cfg),
            alphas=copy.deepcopy(self.alphas),
            normalize=self.normalize)
        if self.stages:
            cfg['stages'] = [list(s) for s in self.stages]
        return cfg


# ----------------------------------------------------------- the genome
class BlendLayout:
    """Maps an EA genome (flat vector in [0, 1]) to blend alphas.

    One gene per (stage, candidate) in a fixed order: stages sorted, their
    candidates in pool order.

    Args:
        stage_candidates (dict): ``{stage: [criterion keys]}``, e.g.
            ``cluster_pool(...)['stages']``.
    """

    def __init__(self, stage_candidates: Dict[str, List[str]]):
        self.genes: List[Tuple[str, str]] = [(s, k)
                                             for s in sorted(stage_candidates)
                                             for k in stage_candidates[s]]
        if not self.genes:
            raise ValueError('no (stage, criterion) gene to search')
        self.keys = list(dict.fromkeys(k for _, k in self.genes))

    def __len__(self):
        return len(self.genes)

    def alphas(self, genome) -> Dict[str, Dict[str, float]]:
        genome = np.asarray(genome, dtype=np.float64)
        if genome.shape != (len(self.genes), ):
            raise ValueError(f'genome must have shape ({len(self.genes)},), '
                             f'got {genome.shape}')
        out: Dict[str, Dict[str, float]] = {}
        for (s, k), a in zip(self.genes, genome):
            out.setdefault(s, {})[k] = round(float(np.clip(a, 0, 1)), 6)
        # fallback for stages this model did not have: mean over stages
        star = {}
        for k in self.keys:
            vals = [out[s][k] for s in out if k in out[s]]
            star[k] = round(float(np.mean(vals)), 6)
        out['*'] = star
        return out

    def seeds(self) -> List[np.ndarray]:
        """One-hot genome per criterion (alpha 1 for it wherever it is a
        candidate) plus the uniform genome."""
        seeds = [
            np.array([1.0 if k == key else 0.0 for _, k in self.genes])
            for key in self.keys
        ]
        seeds.append(np.ones(len(self.genes)))
        return seeds
