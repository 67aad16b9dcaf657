"""Speed: dense vs compact latency in torch eager and onnxruntime, batch 1
and 8, and the realized speedup over the FLOPs speedup, in coupled and in
fine residual mode.

One job per (model, residual mode). The compact models are L1-pruned to the
budget with the allocator settings of :mod:`benchmarks.graph_and_speed`
(``default``: BudgetAllocator's defaults; ``speed``: ``max_prune_ratio=0.5,
round_to=8``; ``cost_aware``: AdaptiveAllocator ordering expensive
channels first; ``latency_aware``: the same, by the time a channel saves in
a latency table measured first at the job's thread count); weights are
random, which does not change latency. Each
model is exported to ONNX (:func:`mmprune.export.export_onnx`, dynamic
batch) and checked against torch with onnxruntime
(:func:`mmprune.export.verify_onnx`). For each batch size every variant
(dense and compact, torch and onnxruntime) is timed in the *same*
interleaved rounds (:func:`mmprune.costs.latency.measure_latency`), one
intra-op thread each unless told otherwise, so machine noise hits all of
them alike.

``realized_over_flops = (dense_ms / compact_ms) / (dense_flops /
compact_flops)``: 1.0 means latency fell exactly as much as FLOPs did.
"""
import copy
import os.path as osp
import sys
import time
from typing import Dict, List, Sequence

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.env import environment  # noqa: E402

#: speed-suite model name -> mmdet config (single-stage: ONNX export of
#: two-stage detectors is not supported)
SPEED_MODELS = {
    'yolox_tiny': 'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py',
    'yolox_s': 'mmdet::yolox/yolox_s_8xb8-300e_coco.py',
    'retinanet_r18': 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py',
    'retinanet_r50': 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
}


def speed_jobs(preset: dict, results_dir: str, work_root: str, device: str,
               threads: int) -> List[dict]:
    s = preset['speed']
    jobs = []
    for model, size in s['models'].items():
        for mode in s['modes']:
            jid = f'{model}__{mode}'
            jobs.append(
                dict(
                    id=jid,
                    suite='speed',
                    preset=preset['name'],
                    model=model,
                    input_size=list(size),
                    mode=mode,
                    budget=s['budget'],
                    settings=list(s['settings']),
                    batches=list(s['batches']),
                    runs=s['runs'],
                    device=device,
                    threads=threads,
                    work_dir=osp.join(work_root, 'speed', jid),
                    out=osp.join(results_dir, 'speed', jid + '.json')))
    return jobs


def build_model(name: str):
    """The detector of ``name`` from mmdet's config, in eval mode, with no
    remote weights (mmdet's own settings otherwise: RetinaNet's frozen stem
    stays pinned)."""
    import warnings

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from mmprune.apis import load_config
    from mmprune.utils.offline import check_offline_weights
    register_all_modules()
    cfg = load_config(SPEED_MODELS[name])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "pretrained weights removed"
        check_offline_weights(cfg)
    return MODELS.build(cfg.model).eval()


def compact_models(model, mode: str, size: Sequence[int], budget: float,
                   settings: Sequence[str]) -> Dict[str, object]:
    """``{setting: L1-pruned copy of model}`` at ``budget`` FLOPs."""
    from benchmarks.graph_and_speed import SETTINGS, needs_latency
    from mmprune import apis
    from mmprune.criteria import L1Criterion
    from mmprune.registry import ALLOCATORS, build_from
    graph = apis.analyze(model, mode)
    cost = apis.cost_model(model, size, latency=needs_latency(settings))
    scores = L1Criterion().score(model, graph)
    out = {}
    for name in settings:
        if name not in SETTINGS:
            raise ValueError(f'unknown allocator setting {name!r}; valid: '
                             f'{sorted(SETTINGS)}')
        alloc = build_from(ALLOCATORS, dict(SETTINGS[name], ratio=budget),
                           'allocator')
        keep = alloc.allocate(model, graph, scores, cost)
        compact = copy.deepcopy(model)
        apis.prune(compact, apis.make_plan(graph, keep), graph)
        out[name] = compact.eval()
    return out


def _ort_session(path: str, device: str, threads: int):
    """An onnxruntime session on ``device`` (None when onnxruntime has no
    provider for it)."""
    import onnxruntime as ort
    providers = ['CPUExecutionProvider']
    if device == 'cuda':
        if 'CUDAExecutionProvider' not in ort.get_available_providers():
            return None
        providers = ['CUDAExecutionProvider']
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, sess_options=opts, providers=providers)


def run_job(job: dict) -> dict:
    """Time one (model, mode) job; write its result JSON."""
    import torch

    from mmprune.apis import cost_model
    from mmprune.costs.latency import measure_latency
    from mmprune.export import export_onnx, random_batch, verify_onnx
    from mmprune.utils.io import atomic_write, write_json_atomic
    torch.set_num_threads(job['threads'])
    device, size = job['device'], tuple(job['input_size'])
    t0 = time.perf_counter()
    dense = build_model(job['model'])
    variants = dict(dense=dense)
    variants.update(
        compact_models(dense, job['mode'], size, job['budget'],
                       job['settings']))
    flops = {k: cost_model(m, size).flops() for k, m in variants.items()}
    params = {
        k: sum(p.numel() for p in m.parameters())
        for k, m in variants.items()
    }
    # ONNX: exported at batch 1 with a dynamic batch axis, checked against
    # torch at batch 1 and 2 on CPU before anything moves to the GPU
    onnx = {}
    for k, m in variants.items():
        path = osp.join(job['work_dir'], f'{k}.onnx')
        x = random_batch(m, 1, size)
        atomic_write(path, lambda tmp, m=m, x=x: export_onnx(m, tmp, x))
        check = verify_onnx(
            path,
            m, [x, random_batch(m, 2, size, seed=1)],
            atol=1e-3,
            threads=job['threads'])
        onnx[k] = dict(
            path=path,
            max_rel_diff=check['max_rel_diff'],
            passed=check['passed'])
    sessions = {
        k: _ort_session(v['path'], device, job['threads'])
        for k, v in onnx.items()
    }
    for m in variants.values():
        m.to(device)
    rows = []
    latency = {}
    for batch in job['batches']:
        x = random_batch(dense, batch, size)
        xd, xn = x.to(device), x.numpy()
        fns = {}
        for k, m in variants.items():
            fns[f'torch/{k}'] = _torch_fn(m, xd, device)
            if sessions[k] is not None:
                fns[f'onnxruntime/{k}'] = (
                    lambda s=sessions[k]: s.run(None, {'input': xn}))
        lat = measure_latency(fns, runs=job['runs'], warmup=2)
        latency[str(batch)] = lat
        for backend in ('torch', 'onnxruntime'):
            d = lat.get(f'{backend}/dense')
            if d is None:
                continue
            for k in job['settings']:
                c = lat[f'{backend}/{k}']
                realized = d['median_ms'] / c['median_ms']
                flops_speedup = flops['dense'] / flops[k]
                rows.append(
                    dict(
                        backend=backend,
                        batch=batch,
                        setting=k,
                        dense_ms=d['median_ms'],
                        compact_ms=c['median_ms'],
                        flops_ratio=flops[k] / flops['dense'],
                        realized_speedup=realized,
                        flops_speedup=flops_speedup,
                        realized_over_flops=realized / flops_speedup))
    res = dict(
        id=job['id'],
        suite='speed',
        preset=job['preset'],
        model=job['model'],
        mode=job['mode'],
        input_size=list(size),
        budget=job['budget'],
        device=device,
        threads=job['threads'],
        runs=job['runs'],
        criterion='L1Criterion',
        settings={k: _setting(k)
                  for k in job['settings']},
        flops=flops,
        params=params,
        onnx=onnx,
        latency=latency,
        rows=rows,
        status='ok',
        wall_s=time.perf_counter() - t0,
        env=environment(device))
    write_json_atomic(res, job['out'])
    return res


def _setting(name: str) -> dict:
    from benchmarks.graph_and_speed import SETTINGS
    return dict(SETTINGS[name])


def _torch_fn(model, x, device: str):
    """The tensor forward of ``model`` on ``x``, waiting for the GPU."""
    import torch
    if device == 'cuda':

        def fn():
            model(x, None, mode='tensor')
            torch.cuda.synchronize()

        return fn
    return lambda: model(x, None, mode='tensor')
