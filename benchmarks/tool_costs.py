"""Tool costs: how long mmprune's own machinery takes.

Reuses the two earlier scripts (their functions, not their result files):

* graph analysis time vs Torch-Pruning's ``DependencyGraph`` per model
  (:func:`benchmarks.graph_and_speed.graph_times`): mmprune at its default
  128 px trace and at the model's usual input size, Torch-Pruning at that
  size. A model Torch-Pruning cannot trace is recorded with its error;
* the hook overhead (:mod:`benchmarks.hook_overhead`): a masked training
  iteration over a plain one, the time of one prune event, and the wall
  time of a short pruned training run over the dense one.
"""
import os.path as osp
import sys
import time
import traceback
from typing import List

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.env import environment  # noqa: E402

#: short names of the event models (benchmarks.graph_and_speed.CONFIGS)
EVENT_DEFAULT = dict(
    event_config='yolox_s',
    event_size=640,
    run_epochs=4,
    run_size=320,
    run_images=32,
    iter_size=320,
    run_repeats=2)


def tool_jobs(preset: dict, results_dir: str, device: str,
              threads: int) -> List[dict]:
    t = preset['tools']
    jobs = [
        dict(
            id=f'graph__{m}',
            suite='tools',
            kind='graph',
            model=m,
            preset=preset['name'],
            device=device,
            threads=threads,
            out=osp.join(results_dir, 'tools', f'graph__{m}.json'))
        for m in t['graph_models']
    ]
    hook = dict(EVENT_DEFAULT, **t['hook'])
    jobs.append(
        dict(
            id='hook_overhead',
            suite='tools',
            kind='hook',
            preset=preset['name'],
            device=device,
            threads=threads,
            hook=hook,
            out=osp.join(results_dir, 'tools', 'hook_overhead.json')))
    return jobs


def _graph(job: dict) -> dict:
    from benchmarks.graph_and_speed import CONFIGS, build, graph_times
    model = build(job['model'])
    rec = dict(input_size=list(CONFIGS[job['model']][1]))
    rec.update(graph_times(job['model'], model))
    return rec


def _hook(job: dict) -> dict:
    from benchmarks import hook_overhead as H
    from benchmarks.graph_and_speed import CONFIGS
    h = job['hook']
    rec = dict(settings=h)
    rec['masked_iter_ratio'], rec['masked_iter'] = H.masked_iteration_ratio(
        h['iters'], h['iter_size'])
    rec['event_seconds'] = H.event_seconds(CONFIGS[h['event_config']][0],
                                           h['event_size'])
    ratio, times = H.prune_run_ratio(
        h['run_epochs'],
        h['run_size'],
        h['run_images'],
        repeats=h['run_repeats'])
    rec['prune_run_ratio'] = ratio
    rec['prune_run_ratio_latency_aware'] = times['latency_aware'] / \
        times['dense']
    rec['prune_run_seconds'] = times
    return rec


def run_job(job: dict) -> dict:
    import torch

    from mmprune.utils.io import write_json_atomic
    torch.set_num_threads(job['threads'])
    res = dict(
        id=job['id'],
        suite='tools',
        kind=job['kind'],
        preset=job['preset'],
        threads=job['threads'],
        env=environment(job['device']))
    t0 = time.perf_counter()
    try:
        if job['kind'] == 'graph':
            res['model'] = job['model']
            res.update(_graph(job))
        else:
            res.update(_hook(job))
        res['status'] = 'ok'
    except Exception as e:  # noqa: BLE001  (the table shows the failure)
        res.update(
            status='failed',
            error=f'{type(e).__name__}: {e}',
            traceback=traceback.format_exc()[-4000:])
    res['wall_s'] = time.perf_counter() - t0
    write_json_atomic(res, job['out'])
    return res
