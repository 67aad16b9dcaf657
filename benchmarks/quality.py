"""Quality at equal FLOPs: train each (model, protocol, budget, method,
seed) with the real mmengine Runner and record mAP, AP50, FLOPs, params and
wall time.

Protocol 'trained' runs load their model's reference checkpoint
(:mod:`benchmarks.reference`) and fine-tune at
:data:`benchmarks.train_config.FINETUNE_LR_MULT` of the LR; 'scratch' runs
start from random init (:mod:`benchmarks.methods` says when each method
cuts).

One run is one *job*: :func:`quality_jobs` lists them for a preset,
:func:`run_job` trains one (in a child process, ``python -m
benchmarks.quality JOB.json``) and writes its result JSON atomically as
soon as it ends: ``status`` 'ok', 'unreachable' (the method's limits
cannot reach the budget; refused before training) or 'failed' (with the
error). The final model (the EMA weights for YOLOX, what it validates
with) is saved whole (``torch.save`` of the module: a Torch-Pruning model
cannot be rebuilt from a config), so that :func:`measure_group_latency` can
time all models of a table together afterwards, interleaved and with the
machine otherwise idle: latency taken while another run trains beside it
would say more about the neighbour than about the model.
"""
import copy
import json
import math
import os
import os.path as osp
import sys
import time
import traceback
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.env import environment  # noqa: E402
from benchmarks.methods import BUDGET_FREE, LABELS, method_spec  # noqa: E402
from benchmarks.presets import model_setting  # noqa: E402
from benchmarks.presets import run_fields, seeds_for  # noqa: E402

MODEL_FILE = 'final_model.pt'


# ------------------------------------------------------------------ data
def data_dir(root: str, data: dict) -> str:
    """The folder of the synthetic set described by ``data``."""
    return osp.join(
        root, f"{data['difficulty']}_{data['size']}px_"
        f"{data['num_train']}x{data['num_val']}_"
        f"c{data['num_classes']}_s{data['seed']}")


def prepare_data(root: str, data: dict) -> dict:
    """Generate the synthetic set once (reused when its metadata
    matches); returns ``coco_root`` and ``classes``."""
    from mmprune.datasets.synthetic import make_synthetic_dataset
    out = data_dir(root, data)
    meta_file = osp.join(out, 'synthetic_meta.json')
    if osp.isfile(meta_file):
        with open(meta_file) as f:
            meta = json.load(f)
        if all(meta.get(k) == v for k, v in data.items()):
            return dict(
                coco_root=osp.join(osp.abspath(out), 'coco', ''),
                classes=list(meta['classes']))
    made = make_synthetic_dataset(
        out, formats=('coco', ), overwrite=True, **data)
    return dict(coco_root=made['coco_root'], classes=list(made['classes']))


# ------------------------------------------------------------------ jobs
PROTOCOL_TAGS = dict(trained='tr', scratch='sc')


def job_id(model: str,
           budget: float,
           method: str,
           seed: int,
           protocol: str = 'scratch') -> str:
    return (f'{model}__{PROTOCOL_TAGS[protocol]}__f{round(budget * 100):02d}'
            f'__{method}__s{seed}')


def quality_jobs(preset: dict,
                 results_dir: str,
                 work_root: str,
                 data: dict,
                 device: str,
                 threads: int,
                 references: Optional[Dict[str, dict]] = None) -> List[dict]:
    """Every quality run of ``preset`` as a JSON-safe job.

    Args:
        references (dict, optional): model -> its reference job
            (:func:`benchmarks.reference.reference_jobs`); needed when the
            preset runs protocol 'trained'.
    """
    q = preset['quality']
    jobs = []
    for protocol in q.get('protocols', ('scratch', )):
        refs = {}
        for model in q['models']:
            refs[model] = None
            if protocol == 'trained':
                if not references or model not in references:
                    raise ValueError(f'protocol trained: no reference job '
                                     f'for {model}')
                r = references[model]
                refs[model] = dict(
                    job=r['id'],
                    key=r['key'],
                    checkpoint=r['checkpoint'],
                    record=r['out'])
        # seed-major order: an interrupted bench (--resume spans sessions)
        # holds whole seeds of every model and the first budget before the
        # second, not every seed of one model and none of the next
        for budget in q['budgets']:
            for seed in seeds_for(q, budget):
                for model, m in q['models'].items():
                    ref = refs[model]
                    epochs = model_setting(q, model, 'epochs')
                    for method in m['methods']:
                        if method in BUDGET_FREE and \
                                budget != q['budgets'][0]:
                            continue  # its FLOPs do not follow the budget
                        jid = job_id(model, budget, method, seed, protocol)
                        jobs.append(
                            dict(
                                id=jid,
                                suite='quality',
                                preset=preset['name'],
                                protocol=protocol,
                                model=model,
                                method=method,
                                budget=budget,
                                seed=seed,
                                epochs=epochs,
                                reference=ref,
                                needs=[ref['job']] if ref else [],
                                work_dir=osp.join(work_root, 'quality', jid),
                                out=osp.join(results_dir, 'quality',
                                             jid + '.json'),
                                **run_fields(q, data, device, threads)))
    return jobs


# ------------------------------------------------------------ one run
def make_record_hook():
    """An mmengine hook (built lazily: mmengine imports are heavy) keeping
    the last validation metrics and the time spent validating, and
    refusing a ``load_from`` checkpoint that does not match the model
    (mmengine loads it non-strictly: a mismatch would only be a warning
    and the run would quietly start from random weights)."""
    from mmengine.hooks import Hook

    class Record(Hook):
        priority = 'LOWEST'

        def __init__(self):
            self.metrics, self.history = None, []
            self.val_s, self._t = 0.0, None
            self.loaded = None

        def after_load_checkpoint(self, runner, checkpoint) -> None:
            from mmprune.runtime.rebind import unwrap
            want = {
                k: tuple(v.shape)
                for k, v in unwrap(runner.model).state_dict().items()
            }
            have = {
                k: tuple(v.shape)
                for k, v in checkpoint.get('state_dict', {}).items()
            }
            bad = sorted(
                k for k in set(want) | set(have) if want.get(k) != have.get(k))
            if bad:
                raise RuntimeError(
                    f'the checkpoint does not match the model: {len(bad)} '
                    f'missing, extra or reshaped tensors, e.g. {bad[:5]}')
            self.loaded = len(have)

        def before_val_epoch(self, runner):
            self._t = time.perf_counter()

        def after_val_epoch(self, runner, metrics=None):
            self.val_s += time.perf_counter() - self._t
            self.metrics = {
                k: float(v)
                for k, v in (metrics or {}).items()
                if isinstance(v, (int, float))
            }
            self.history.append(dict(epoch=runner.epoch, **self.metrics))

    return Record()


def _picklable(obj) -> bool:
    import pickle
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001  (any pickling error means "no")
        return False
    return True


def portable_copy(module):
    """A deep copy of ``module`` that ``torch.save`` can pickle whole.

    Hooks that are part of the model stay (fine residual mode's scatter is
    a module-level forward hook); closures that training left behind go:
    criteria's forward hooks, regulariser loss terms on the model. The
    training hook's ``Prunable<Detector>`` class is created at run time
    (another process could not unpickle it), so the copy gets its detector
    class back: the forward is the same, only ``loss()`` differed.
    """
    from mmprune.models.prunable_detector import PrunableMixin
    clone = copy.deepcopy(module)
    if isinstance(clone, PrunableMixin):
        clone.__class__ = next(
            c for c in type(clone).__mro__ if not issubclass(c, PrunableMixin))
    for m in clone.modules():
        for attr, hooks in list(vars(m).items()):
            if attr.endswith('hooks') and isinstance(hooks, dict):
                for key in [
                        k for k, fn in hooks.items() if not _picklable(fn)
                ]:
                    del hooks[key]
        for attr in [k for k in vars(m) if k.startswith('_mmprune')]:
            if not _picklable(getattr(m, attr)):
                delattr(m, attr)
    return clone


def final_model(runner):
    from mmprune.runtime.rebind import find_ema, unwrap
    ema = find_ema(runner)
    return (ema.module, 'ema') if ema is not None else \
        (unwrap(runner.model), 'model')


def run_job(job: dict) -> dict:
    """Train one quality run and write its result JSON (``job['out']``)."""
    import torch
    torch.set_num_threads(job['threads'])
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    import mmprune  # noqa: F401  (registries, torch.load safe globals)
    from benchmarks.tp_peer import TorchPruningHook
    from benchmarks.train_config import FINETUNE_LR_MULT, build_train_config
    from mmprune.apis import cost_model
    from mmprune.utils.io import atomic_write, write_json_atomic
    register_all_modules(init_default_scope=False)
    size = (job['size'], job['size'])
    batches = math.ceil(job['data_spec']['num_train'] / job['batch_size'])
    protocol = job.get('protocol', 'scratch')
    spec = method_spec(job['method'], job['epochs'], job['budget'], size,
                       batches, protocol, job['seed'])
    if spec.get('latency_table'):
        spec['hook']['latency_table'] = latency_table(job,
                                                      spec['latency_table'],
                                                      size)
    hooks = [spec['hook']] if spec['kind'] == 'mmprune' else []
    ref = job.get('reference')
    trained = protocol == 'trained'
    cfg = build_train_config(
        job['model'],
        job['data'],
        job['size'],
        job['epochs'],
        job['batch_size'],
        job['seed'],
        job['work_dir'],
        hooks,
        lr_mult=FINETUNE_LR_MULT if trained else 1.0,
        load_from=ref['checkpoint'] if trained else None)
    res = dict(
        id=job['id'],
        suite='quality',
        preset=job['preset'],
        protocol=protocol,
        reference_key=ref['key'] if trained else None,
        lr_mult=FINETUNE_LR_MULT if trained else 1.0,
        model=job['model'],
        method=job['method'],
        label=LABELS[job['method']],
        kind=spec['kind'],
        budget=job['budget'],
        seed=job['seed'],
        epochs=job['epochs'],
        batch_size=job['batch_size'],
        input_size=list(size),
        data=job['data_spec'],
        pruning=spec['hook'],
        device=job['device'],
        threads=job['threads'],
        env=environment(job['device']))
    t0 = time.perf_counter()
    try:
        if trained:
            _check_reference(ref)
        with DefaultScope.overwrite_default_scope('mmdet'):
            dense = MODELS.build(copy.deepcopy(cfg.model))
        res['dense_flops'] = cost_model(dense, size).flops()
        res['dense_params'] = sum(p.numel() for p in dense.parameters())
        del dense
        t0 = time.perf_counter()
        runner = Runner.from_cfg(cfg)
        tp_hook = None
        if spec['kind'] == 'torch_pruning':
            tp_hook = TorchPruningHook(**spec['hook'])
            runner.register_hook(tp_hook)
        record = make_record_hook()
        runner.register_hook(record)
        runner.train()
    except Exception as e:  # noqa: BLE001  (the table shows the failure)
        msg = f'{type(e).__name__}: {e}'
        res.update(
            status='unreachable' if 'cannot be reached' in msg
            or 'cannot reach' in msg else 'failed',
            error=msg,
            traceback=traceback.format_exc()[-4000:],
            total_wall_s=time.perf_counter() - t0)
        write_json_atomic(res, job['out'])
        return res
    total = time.perf_counter() - t0
    model, which = final_model(runner)
    model = portable_copy(model).eval()
    path = osp.join(job['work_dir'], MODEL_FILE)
    atomic_write(path, lambda tmp: torch.save(model, tmp))
    flops = cost_model(model, size).flops()
    params = sum(p.numel() for p in model.parameters())
    search_s = 0.0
    if tp_hook is not None:
        res['pruning'] = dict(spec['hook'], **tp_hook.record)
        search_s = tp_hook.record.get('search_seconds', 0.0)
    metrics = record.metrics or {}
    # CocoMetric returns no metrics at all when the model detects nothing
    # (an untrained model below the score threshold): that is mAP 0
    empty = not metrics
    res.update(
        status='ok',
        metrics=metrics,
        no_detections=empty,
        val_history=record.history,
        mAP=0.0 if empty else metrics.get('coco/bbox_mAP'),
        AP50=0.0 if empty else metrics.get('coco/bbox_mAP_50'),
        flops=flops,
        params=params,
        flops_ratio=flops / res['dense_flops'],
        params_ratio=params / res['dense_params'],
        total_wall_s=total,
        val_wall_s=record.val_s,
        search_wall_s=search_s,
        train_wall_s=total - record.val_s - search_s,
        iterations=runner.iter,
        loaded_tensors=record.loaded,
        weights=which,
        model_file=path,
        log_dir=osp.join(job['work_dir'], runner.timestamp))
    write_json_atomic(res, job['out'])
    return res


def latency_table(job: dict, how: dict, size) -> str:
    """Measure (or read from the bench's cache) the latency grid of the
    job's dense model, save it in the job's folder and return that path:
    what a user runs with ``tools/analysis/latency_table.py`` before
    training with ``budget='latency'``. The cache is keyed by the model,
    input, backend, machine and thread count (every seed of a table reuses
    one timing)."""
    import torch
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope

    from benchmarks.train_config import build_train_config
    from mmprune import apis
    from mmprune.costs.latency_backends import make_backend
    from mmprune.costs.latency_grid import measure_grid
    cfg = build_train_config(job['model'], job['data'], job['size'], 1,
                             job['batch_size'], job['seed'], job['work_dir'],
                             [])
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(copy.deepcopy(cfg.model))
    torch.set_num_threads(job['threads'])
    cache = osp.join(
        osp.dirname(osp.dirname(job['work_dir'])), 'latency_tables')
    grid = measure_grid(
        model,
        size,
        how['batch'],
        make_backend(how['backend']),
        apis.analyze(model),
        cache_dir=cache,
        level_runs=how.get('level_runs', 0),
        points=how['points'])
    os.makedirs(job['work_dir'], exist_ok=True)
    path = osp.join(job['work_dir'], 'latency_table.json')
    grid.save(path)
    return path


def _check_reference(ref: dict) -> None:
    """The reference this run starts from must be the one its job was
    planned with (the scheduler runs the reference job first)."""
    try:
        with open(ref['record']) as f:
            rec = json.load(f)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"reference record {ref['record']}: {e}") from None
    if rec.get('status') != 'ok' or rec.get('key') != ref['key']:
        raise RuntimeError(
            f"reference record {ref['record']}: status "
            f"{rec.get('status')!r}, key {rec.get('key')!r}, want "
            f"{ref['key']!r}: run its reference job first")


# ------------------------------------------------------------- latency
def group_key(res: dict) -> str:
    tag = PROTOCOL_TAGS[res.get('protocol', 'scratch')]
    return f"{res['model']}__{tag}__f{round(res['budget'] * 100):02d}"


def measure_group_latency(results: List[dict],
                          runs: int,
                          device: str,
                          threads: int = 1) -> Dict[str, dict]:
    """Latency (batch 1, tensor forward) of the saved final models of
    ``results`` (same model family and input size), interleaved.

    Returns:
        dict: run id -> ``{'median_ms', 'min_ms', 'runs'}``.
    """
    import torch

    from mmprune.adapters.detector import tensor_forward
    from mmprune.costs.latency import measure_latency
    torch.set_num_threads(threads)
    fns = {}
    for r in results:
        model = torch.load(
            r['model_file'], weights_only=False, map_location=device).eval()
        fn, x = tensor_forward(model, tuple(r['input_size']))
        fns[r['id']] = _synced(fn, x[0].to(device), device)
    return measure_latency(fns, runs=runs, warmup=3)


def _synced(fn, x, device):
    """A forward that waits for the GPU, so its time is the forward's."""
    import torch
    if device == 'cuda':
        return lambda: (fn(x), torch.cuda.synchronize())
    return lambda: fn(x)
