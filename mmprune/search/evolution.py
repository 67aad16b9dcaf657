"""A small, deterministic genetic algorithm over vectors in a box.

Used by BPC's blend search (docs/methods.md §2B(a)4, our choice): genomes are
calibration factors in [0, 1]. Pure numpy; all randomness comes from one
``numpy.random.Generator`` seeded by ``EAConfig.seed``, so a run is
reproducible given a deterministic fitness.

One run:

1. generation 0: the ``seeds`` (clipped), then uniform random genomes up to
   ``pop_size``;
2. each of ``generations`` rounds keeps the ``elite`` best genomes
   unchanged and fills the population with children: two parents by
   binary tournament over the current population, uniform crossover (each
   gene from the first parent with probability ``crossover_p``), Gaussian
   mutation (each gene with probability ``mutation_p`` gets
   ``N(0, mutation_sigma)``), clipped to the box;
3. fitness is maximised; identical genomes are evaluated once (cache), a
   non-finite fitness counts as ``-inf``.

So ``pop_size + generations * (pop_size - elite)`` evaluations at most, and
the best fitness never decreases from one generation to the next.

A search budget can stop it earlier: ``max_evals`` (fitness calls, so the
result stays reproducible under a seed) and ``time_budget_s`` (wall clock,
checked before each new evaluation; the result then depends on the
machine's speed). The best genome evaluated so far is returned, and
``EAResult.stopped`` says why the run ended.
"""
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np


@dataclass
class EAConfig:
    """EA settings (defaults: docs/methods.md §2B(e)).

    Args:
        pop_size (int): population size. Defaults to 32.
        generations (int): offspring rounds after generation 0. Defaults
            to 20.
        elite (int): genomes carried over unchanged. Defaults to 8.
        crossover_p (float): uniform crossover probability. Defaults to
            0.5.
        mutation_sigma (float): Gaussian mutation std. Defaults to 0.2.
        mutation_p (float): per-gene mutation probability. Defaults to 0.1.
        tournament (int): tournament size for parent selection. Defaults
            to 2.
        low (float): lower bound of every gene. Defaults to 0.
        high (float): upper bound of every gene. Defaults to 1.
        seed (int): seed of the numpy Generator. Defaults to 0.
        max_evals (int | None): stop after this many fitness evaluations
            (cache hits are free). Defaults to None (no cap).
        time_budget_s (float | None): stop starting new evaluations after
            this many seconds. Defaults to None (no cap).
    """
    pop_size: int = 32
    generations: int = 20
    elite: int = 8
    crossover_p: float = 0.5
    mutation_sigma: float = 0.2
    mutation_p: float = 0.1
    tournament: int = 2
    low: float = 0.0
    high: float = 1.0
    seed: int = 0
    max_evals: Optional[int] = None
    time_budget_s: Optional[float] = None

    def __post_init__(self):

        def integer(name, lo):
            v = getattr(self, name)
            if isinstance(
                    v,
                    bool) or not (isinstance(v,
                                             (int, np.integer)) and v >= lo):
                raise ValueError(f'{name} must be an int >= {lo}, got {v!r}')

        integer('pop_size', 2)
        integer('generations', 0)
        integer('elite', 1)
        integer('tournament', 1)
        integer('seed', 0)
        if self.max_evals is not None:
            integer('max_evals', 1)
        t = self.time_budget_s
        number = isinstance(t, (int, float)) and not isinstance(t, bool)
        if t is not None and not (number and t > 0):
            raise ValueError(f'time_budget_s must be a number > 0 or None, '
                             f'got {self.time_budget_s!r}')
        if self.elite >= self.pop_size:
            raise ValueError(f'elite must be < pop_size, got elite='
                             f'{self.elite}, pop_size={self.pop_size}')
        for name in ('crossover_p', 'mutation_p'):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f'{name} must be in [0, 1], got {v!r}')
        if not (isinstance(self.mutation_sigma,
                           (int, float)) and self.mutation_sigma >= 0):
            raise ValueError(f'mutation_sigma must be >= 0, got '
                             f'{self.mutation_sigma!r}')
        if not (math.isfinite(self.low) and math.isfinite(self.high)
                and self.low < self.high):
            raise ValueError(f'need finite low < high, got low={self.low!r}, '
                             f'high={self.high!r}')


@dataclass
class EAResult:
    """Outcome of :func:`evolve`.

    Attributes:
        best (np.ndarray): the best genome found.
        best_fitness (float): its fitness.
        first_best (float): the best fitness of generation 0.
        history (list[dict]): per generation ``gen``, ``best``, ``mean``.
        evaluations (int): fitness calls made (cache hits excluded).
        seconds (float): wall time of the run.
        stopped (str): ``'generations'`` (ran them all), ``'max_evals'``
            or ``'time_budget'``.
    """
    best: np.ndarray
    best_fitness: float
    first_best: float
    history: List[Dict[str, float]] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0
    stopped: str = 'generations'

    def to_dict(self) -> dict:
        d = asdict(self)
        d['best'] = [float(x) for x in self.best]
        return d


class _OutOfBudget(Exception):
    """Raised inside :func:`evolve` when the next evaluation would exceed
    the budget; never leaves it."""


def evolve(fitness: Callable[[np.ndarray], float],
           dim: int,
           config: Optional[EAConfig] = None,
           seeds: Sequence[Sequence[float]] = (),
           log: Optional[Callable[[str], None]] = None) -> EAResult:
    """Maximise ``fitness`` over genomes of length ``dim`` in the box.

    Args:
        fitness (Callable): genome (dim,) -> float, higher is better.
        dim (int): genome length, >= 1.
        config (EAConfig | None): settings. Defaults to ``EAConfig()``.
        seeds (Sequence): genomes placed in generation 0 first (at most
            ``pop_size`` are used).
        log (Callable | None): called with one line per generation.

    Returns:
        EAResult: the best genome evaluated (ties: the first one found).
    """
    cfg = config or EAConfig()
    if isinstance(dim, bool) or not (isinstance(dim, int) and dim >= 1):
        raise ValueError(f'dim must be an int >= 1, got {dim!r}')
    rng = np.random.default_rng(cfg.seed)
    pop = [
        np.clip(np.asarray(s, dtype=np.float64), cfg.low, cfg.high)
        for s in list(seeds)[:cfg.pop_size]
    ]
    for s in pop:
        if s.shape != (dim, ):
            raise ValueError(f'seed genomes must have shape ({dim},), got '
                             f'{s.shape}')
    while len(pop) < cfg.pop_size:
        pop.append(rng.uniform(cfg.low, cfg.high, dim))
    cache: Dict[bytes, float] = {}
    evaluations = 0
    start = time.perf_counter()
    best = dict(genome=None, fitness=-math.inf)

    def evaluate(g: np.ndarray) -> float:
        nonlocal evaluations
        key = np.round(g, 12).tobytes()
        if key not in cache and evaluations >= 1:
            # the first genome is always evaluated: a result exists
            if cfg.max_evals is not None and evaluations >= cfg.max_evals:
                raise _OutOfBudget('max_evals')
            if cfg.time_budget_s is not None and \
                    time.perf_counter() - start >= cfg.time_budget_s:
                raise _OutOfBudget('time_budget')
        if key not in cache:
            f = float(fitness(g.copy()))
            cache[key] = f if math.isfinite(f) else -math.inf
            evaluations += 1
            if best['genome'] is None or cache[key] > best['fitness']:
                best.update(genome=g.copy(), fitness=cache[key])
        return cache[key]

    def record(gen: int, fit: np.ndarray) -> None:
        finite = fit[np.isfinite(fit)]
        history.append(
            dict(
                gen=gen,
                best=float(fit.max()),
                mean=float(finite.mean()) if len(finite) else -math.inf))
        if log:
            log(f'generation {gen}: best {fit.max():.6g} '
                f'({evaluations} evaluations)')

    history: List[Dict[str, float]] = []
    stopped = 'generations'
    first_best = -math.inf
    try:
        fit = np.array([evaluate(g) for g in pop])
        first_best = float(fit.max())
        record(0, fit)
        for gen in range(1, cfg.generations + 1):
            order = np.argsort(-fit, kind='stable')
            new = [pop[i].copy() for i in order[:cfg.elite]]
            new_fit = [fit[i] for i in order[:cfg.elite]]

            def pick():
                cand = rng.integers(0, len(pop), size=cfg.tournament)
                return pop[int(cand[np.argmax(fit[cand])])]

            while len(new) < cfg.pop_size:
                a, b = pick(), pick()
                take_a = rng.random(dim) < cfg.crossover_p
                child = np.where(take_a, a, b)
                mutate = rng.random(dim) < cfg.mutation_p
                noise = rng.normal(0.0, cfg.mutation_sigma, dim)
                child = np.clip(child + mutate * noise, cfg.low, cfg.high)
                new.append(child)
                new_fit.append(evaluate(child))
            pop, fit = new, np.asarray(new_fit)
            record(gen, fit)
    except _OutOfBudget as e:
        stopped = str(e)
        if log:
            log(f'search budget reached ({stopped}) after {evaluations} '
                f'evaluations')
    if best['genome'] is None:  # cannot happen: max_evals >= 1
        raise RuntimeError('evolve evaluated no genome')
    if not math.isfinite(first_best):
        first_best = best['fitness']  # stopped inside generation 0
    return EAResult(
        best=best['genome'],
        best_fitness=float(best['fitness']),
        first_best=first_best,
        history=history,
        evaluations=evaluations,
        seconds=time.perf_counter() - start,
        stopped=stopped)
