"""RandomCriterion: uniform random channel scores, the floor of a benchmark.

Why it exists: a criterion is only worth its cost if it beats choosing
channels at random under the same budget and allocator. On small data the
margin can be tiny (a held-out ResNet-20 check: global L1 beat random
selection by -0.1 to +1.4 points at 50 % and 30 % FLOPs), so a benchmark
that ranks criteria must show this row; when the best method does not beat
it by more than the seeds' spread, the benchmark cannot tell methods apart
at that size (:mod:`benchmarks.report` says so).

Determinism: the scores of a group depend only on ``seed``, the group's
name and its current width, not on the order groups are scored in, the
process, or the global torch RNG (which training consumes differently per
run). So two runs with the same seed cut the same channels, and changing
the seed is the only way to draw another random subset.
"""
import hashlib

import torch

from ..registry import CRITERIA
from .base import BaseCriterion


@CRITERIA.register_module()
class RandomCriterion(BaseCriterion):
    """Uniform random scores in [0, 1), one draw per channel.

    Args:
        seed (int): the draw; the same seed gives the same scores for the
            same group name and width. Defaults to 0.

    Examples:
        >>> crit = RandomCriterion(seed=1)
        >>> scores = crit.score(model, graph)  # {group name: (G,) tensor}
    """

    def __init__(self, seed: int = 0):
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f'seed must be a non-negative int, got '
                             f'{seed!r}')
        self.seed = seed

    def _generator(self, name: str, width: int) -> torch.Generator:
        # a stable digest: Python's hash() of a str changes per process
        key = f'{self.seed}:{name}:{width}'.encode()
        digest = hashlib.sha256(key).digest()
        return torch.Generator().manual_seed(
            int.from_bytes(digest[:8], 'little') & (2**63 - 1))

    def score_group(self, model, group) -> torch.Tensor:
        # (G,) scores in the group's index space
        return torch.rand(
            group.width, generator=self._generator(group.name, group.width))
