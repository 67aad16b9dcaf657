"""The run plan ``benchmarks/run.py`` prints before it starts: how many
runs, how long each is expected to take, and the wall time with ``--jobs``
runs at a time.

The estimate is a cost model fitted by hand to measured runs on the 2-core
machine (two runs side by side, one torch thread each), so it says whether a
preset fits a session, not to the minute:

* training seconds per image at 160 px, :data:`SECONDS_PER_IMAGE`
  (``quick`` preset results: dense YOLOX-tiny 189 s for 320 iterations x 8
  images, RetinaNet R18 272 s for 120 x 8, rounded up), of which only
  :data:`PIXEL_SHARE` scales with the pixels: at 128 px YOLOX-tiny still
  took 0.56-0.72 s per batch of 8 (the data pipeline, SimOTA assignment
  and the optimizer step do not shrink with the image);
* a pruned model trains at ``0.6 + 0.4 * kept FLOPs`` of the dense time
  (measured: 150-160 s vs 189 s at 50 % FLOPs: the data pipeline, the
  loss and the optimizer do not shrink with the channels);
* validation costs about a third of a training image per image, and each
  run pays a fixed :data:`OVERHEAD_S` (process start, config, model build,
  graph trace, evaluator).

The wall time is a greedy list schedule of the jobs in their order (a job
waits for the reference it needs), the same policy as
:func:`benchmarks.run.run_jobs`.
"""
import heapq
import math
from typing import Dict, List

SECONDS_PER_IMAGE = dict(yolox_tiny=0.08, retinanet_r18=0.3)
PIXEL_SHARE = 0.6
OVERHEAD_S = dict(yolox_tiny=25.0, retinanet_r18=35.0)
VAL_COST = 1 / 3
#: a reference job found in the cache: start, hash, load check
CACHED_REFERENCE_S = 15.0


def _per_image(model: str, size: int) -> float:
    if model not in SECONDS_PER_IMAGE:
        raise ValueError(f'no cost estimate for model {model!r}; known: '
                         f'{sorted(SECONDS_PER_IMAGE)}')
    return SECONDS_PER_IMAGE[model] * (1 - PIXEL_SHARE + PIXEL_SHARE *
                                       (size / 160)**2)


def job_seconds(job: dict, cached: bool = False) -> float:
    """Expected wall seconds of one quality or reference job."""
    d = job['data_spec']
    per = _per_image(job['model'], d['size'])
    if job['suite'] == 'reference':
        if cached:
            return CACHED_REFERENCE_S
        ref = job['reference']
        vals = math.ceil(ref['epochs'] /
                         (ref.get('val_interval') or ref['epochs']))
        return (OVERHEAD_S[job['model']] +
                ref['epochs'] * d['num_train'] * per +
                vals * d['num_val'] * per * VAL_COST)
    kept = 1.0 if job['method'] == 'dense' else job['budget']
    # scratch runs prune at 40 % of training: dense speed until then
    pruned_share = 1.0 if job.get('protocol') == 'trained' else 0.6
    speed = (1 - pruned_share) + pruned_share * (0.6 + 0.4 * kept)
    return (OVERHEAD_S[job['model']] +
            job['epochs'] * d['num_train'] * per * speed +
            d['num_val'] * per * VAL_COST)


def schedule(jobs: List[dict],
             parallel: int,
             cached: Dict[str, bool] = None) -> dict:
    """``{'runs', 'job_seconds', 'wall_seconds', 'by_suite'}`` of running
    ``jobs`` ``parallel`` at a time, in order, dependencies respected."""
    cached = cached or {}
    cost = {j['id']: job_seconds(j, cached.get(j['id'], False)) for j in jobs}
    finish = {}
    slots = [0.0] * max(1, parallel)
    heapq.heapify(slots)
    pending = list(jobs)
    while pending:
        free = heapq.heappop(slots)
        # the first job whose needs are planned; it starts when they end
        job = next((j for j in pending if all(
            n in finish or n not in cost for n in j.get('needs', ()))),
                   pending[0])
        pending.remove(job)
        start = max([free] +
                    [finish[n] for n in job.get('needs', ()) if n in finish])
        finish[job['id']] = start + cost[job['id']]
        heapq.heappush(slots, finish[job['id']])
    by_suite = {}
    for j in jobs:
        by_suite.setdefault(j['suite'], [0, 0.0])
        by_suite[j['suite']][0] += 1
        by_suite[j['suite']][1] += cost[j['id']]
    return dict(
        runs=len(jobs),
        job_seconds=sum(cost.values()),
        wall_seconds=max(finish.values(), default=0.0),
        by_suite=by_suite)


def describe(plan: dict, parallel: int) -> str:
    lines = [
        f"[bench] plan: {plan['runs']} job(s), {parallel} at a time; "
        f"estimated {plan['wall_seconds'] / 60:.0f} min wall "
        f"({plan['job_seconds'] / 60:.0f} job-minutes; a cost model "
        f"of the 2-core machine, see benchmarks/plan.py)"
    ]
    for suite, (n, s) in sorted(plan['by_suite'].items()):
        lines.append(f'[bench]   {suite}: {n} job(s), ~{s / 60:.0f} '
                     f'job-minutes')
    return '\n'.join(lines)
