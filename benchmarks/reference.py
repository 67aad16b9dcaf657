"""Trained dense references for protocol 'trained': train once, cache by a
hash of what made them, reuse.

No weights can be downloaded here, so the benchmark trains its own dense
checkpoint per model on the synthetic set, with the same recipe as every
run (:func:`benchmarks.train_config.build_train_config`), validating every
``val_interval`` epochs so the record shows whether mAP has plateaued.

Cache: ``<cache>/<model>-<key>/reference.pth`` (``{'state_dict': ...,
'meta': ...}``: the weights the model validates with, the EMA copy for
YOLOX; nothing pickled but tensors and plain values, so ``torch.load(...,
weights_only=True)`` reads it) and ``reference.json`` (the record: mAP,
epochs, wall time, validation history, the checkpoint's SHA-256). The JSON
is written last and atomically: it is the commit mark of the cache entry.

The key is the SHA-256 of a canonical JSON of

* the whole training config (mmdet's model config resolved, the recipe's
  pipeline, optimizer, schedule, seed), with the data folder and the work
  folder replaced by placeholders, so moving the repository keeps it;
* the synthetic data arguments and the generator version;
* :data:`RECIPE_VERSION`, for changes to this file that the config does
  not show (what is saved, which weights).

A cache entry is used only if its record names the same key, its
checkpoint's SHA-256 matches the record, and the file loads; anything else
(a truncated copy, a flipped byte, a missing file) is retrained, never
loaded.

    python benchmarks/reference.py --preset session --model yolox_tiny
        [--epochs N] [--val-interval K] [--cache DIR]

trains (or reuses) one reference alone, e.g. to measure where it plateaus.
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import shutil
import sys
import time
import traceback
from typing import List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.env import environment  # noqa: E402
from benchmarks.presets import model_setting, run_fields  # noqa: E402

#: bump when what a reference is changes in a way the config does not show
RECIPE_VERSION = 1
CHECKPOINT = 'reference.pth'
RECORD = 'reference.json'
DEFAULT_CACHE = osp.join(ROOT, 'work_dirs', 'bench', 'references')
_DATA = '<data>/'
_WORK = '<work_dir>'


def _classes(data_spec: dict) -> List[str]:
    from mmprune.datasets.synthetic import SYNTH_CLASSES
    return list(SYNTH_CLASSES[:data_spec['num_classes']])


def reference_config(model: str,
                     ref: dict,
                     data_spec: dict,
                     batch_size: int,
                     data: Optional[dict] = None,
                     work_dir: str = _WORK):
    """The training config of ``model``'s reference (``ref``: ``epochs``,
    ``val_interval``, ``seed``); ``data`` (``coco_root``, ``classes``)
    defaults to placeholders, as hashed."""
    from benchmarks.train_config import build_train_config
    data = data or dict(coco_root=_DATA, classes=_classes(data_spec))
    return build_train_config(
        model,
        data,
        data_spec['size'],
        ref['epochs'],
        batch_size,
        ref['seed'],
        work_dir,
        val_interval=ref.get('val_interval'))


def cache_key(model: str, ref: dict, data_spec: dict, batch_size: int) -> str:
    """16 hex digits of the SHA-256 of everything that made the reference
    (module doc)."""
    from mmprune.datasets.synthetic import GENERATOR_VERSION
    cfg = reference_config(model, ref, data_spec, batch_size)
    what = dict(
        model=model,
        config=cfg.to_dict(),
        data=data_spec,
        generator=GENERATOR_VERSION,
        seed=ref['seed'],
        recipe=RECIPE_VERSION)
    text = json.dumps(what, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def check_cached(cache_dir: str, key: str):
    """``(record, None)`` for a usable cache entry, else ``(None, why)``."""
    import torch
    rec_path = osp.join(cache_dir, RECORD)
    ckpt = osp.join(cache_dir, CHECKPOINT)
    if not osp.isfile(rec_path):
        return None, f'no record {rec_path}'
    try:
        with open(rec_path) as f:
            rec = json.load(f)
    except (OSError, ValueError) as e:
        return None, f'{rec_path}: unreadable ({e})'
    if rec.get('status') != 'ok' or rec.get('key') != key:
        return None, (f"{rec_path}: status {rec.get('status')!r}, key "
                      f"{rec.get('key')!r} (want {key!r})")
    if not osp.isfile(ckpt):
        return None, f'{ckpt}: missing'
    digest = sha256_file(ckpt)
    if digest != rec.get('sha256'):
        return None, (f'{ckpt}: corrupt (SHA-256 {digest[:12]}..., the '
                      f"record says {str(rec.get('sha256'))[:12]}...)")
    try:
        state = torch.load(ckpt, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001  (any load error: retrain)
        return None, f'{ckpt}: does not load ({type(e).__name__}: {e})'
    if not isinstance(state, dict) or not isinstance(
            state.get('state_dict'), dict):
        return None, f'{ckpt}: no state_dict'
    return rec, None


def reference_jobs(preset: dict,
                   results_dir: str,
                   work_root: str,
                   data: dict,
                   device: str,
                   threads: int,
                   cache_root: str = DEFAULT_CACHE) -> List[dict]:
    """One job per model of ``preset`` that protocol 'trained' needs."""
    q = preset['quality']
    if 'trained' not in q.get('protocols', ('scratch', )):
        return []
    jobs = []
    for model in q['models']:
        ref = model_setting(q, model, 'reference')
        for k in ('epochs', 'seed'):
            if k not in ref:
                raise ValueError(f"preset {preset['name']!r}: the reference "
                                 f"of {model} has no {k!r}")
        key = cache_key(model, ref, q['data'], q['batch_size'])
        cache_dir = osp.join(cache_root, f'{model}-{key}')
        jobs.append(
            dict(
                id=f'reference__{model}',
                suite='reference',
                preset=preset['name'],
                model=model,
                key=key,
                reference=ref,
                cache_dir=cache_dir,
                checkpoint=osp.join(cache_dir, CHECKPOINT),
                work_dir=osp.join(work_root, 'references', f'{model}-{key}'),
                out=osp.join(results_dir, 'references', f'{model}.json'),
                **run_fields(q, data, device, threads)))
    return jobs


def run_job(job: dict) -> dict:
    """Reuse ``job``'s cached reference if it is sound, else train it;
    write the record to the cache and to ``job['out']``."""
    from mmprune.utils.io import write_json_atomic
    rec, why = check_cached(job['cache_dir'], job['key'])
    if rec is not None:
        rec = dict(rec, cached=True, out=job['out'])
        write_json_atomic(rec, job['out'])
        print(
            f"[reference] {job['model']}: cached ({job['cache_dir']})",
            flush=True)
        return rec
    print(f"[reference] {job['model']}: training ({why})", flush=True)
    try:
        rec = _train(job)
    except Exception as e:  # noqa: BLE001  (the report shows the failure)
        rec = dict(
            id=job['id'],
            suite='reference',
            model=job['model'],
            key=job['key'],
            status='failed',
            error=f'{type(e).__name__}: {e}',
            traceback=traceback.format_exc()[-4000:])
        write_json_atomic(rec, job['out'])
        return rec
    write_json_atomic(rec, osp.join(job['cache_dir'], RECORD))
    rec = dict(rec, cached=False)
    write_json_atomic(rec, job['out'])
    return rec


def _train(job: dict) -> dict:
    import torch
    torch.set_num_threads(job['threads'])
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    import mmprune  # noqa: F401  (registries, torch.load safe globals)
    from benchmarks.quality import final_model, make_record_hook
    from mmprune.apis import cost_model
    from mmprune.utils.io import atomic_write
    register_all_modules(init_default_scope=False)
    # a stale entry goes first: its record must never vouch for new bytes
    if osp.isdir(job['cache_dir']):
        shutil.rmtree(job['cache_dir'])
    os.makedirs(job['cache_dir'])
    cfg = reference_config(
        job['model'],
        job['reference'],
        job['data_spec'],
        job['batch_size'],
        data=job['data'],
        work_dir=job['work_dir'])
    t0 = time.perf_counter()
    runner = Runner.from_cfg(cfg)
    record = make_record_hook()
    runner.register_hook(record)
    runner.train()
    total = time.perf_counter() - t0
    model, which = final_model(runner)
    state = {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    meta = dict(
        mmprune_bench_reference=dict(
            model=job['model'],
            key=job['key'],
            weights=which,
            epochs=job['reference']['epochs']))
    atomic_write(
        job['checkpoint'],
        lambda tmp: torch.save(dict(state_dict=state, meta=meta), tmp))
    size = (job['size'], job['size'])
    metrics = record.metrics or {}
    hist = record.history
    return dict(
        id=job['id'],
        suite='reference',
        status='ok',
        model=job['model'],
        key=job['key'],
        preset=job['preset'],
        reference=job['reference'],
        data=job['data_spec'],
        batch_size=job['batch_size'],
        input_size=list(size),
        weights=which,
        mAP=metrics.get('coco/bbox_mAP', 0.0),
        AP50=metrics.get('coco/bbox_mAP_50', 0.0),
        epochs=runner.epoch,
        iterations=runner.iter,
        val_history=hist,
        plateau=plateau(hist),
        total_wall_s=total,
        val_wall_s=record.val_s,
        train_wall_s=total - record.val_s,
        flops=cost_model(model, size).flops(),
        params=sum(p.numel() for p in model.parameters()),
        checkpoint=job['checkpoint'],
        sha256=sha256_file(job['checkpoint']),
        threads=job['threads'],
        device=job['device'],
        env=environment(job['device']))


def plateau(history: List[dict]) -> Optional[dict]:
    """mAP gain (points) over the last quarter of the validated epochs:
    near zero means the reference has plateaued."""
    pts = [(h['epoch'], 100 * h['coco/bbox_mAP']) for h in history
           if 'coco/bbox_mAP' in h]
    if len(pts) < 2:
        return None
    last_epoch, last = pts[-1]
    cut = last_epoch * 3 / 4
    prev = [p for p in pts[:-1] if p[0] <= cut]
    e0, m0 = prev[-1] if prev else pts[0]
    return dict(from_epoch=e0, to_epoch=last_epoch, gain=last - m0)


def main(argv=None) -> int:
    from benchmarks.presets import PRESETS, get_preset
    from benchmarks.quality import prepare_data
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--preset', default='session', choices=sorted(PRESETS))
    p.add_argument('--model', required=True)
    p.add_argument('--epochs', type=int, default=None)
    p.add_argument('--val-interval', type=int, default=None)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--cache', default=DEFAULT_CACHE)
    p.add_argument(
        '--data-root', default=osp.join(ROOT, 'data', 'synth_bench'))
    p.add_argument(
        '--out',
        default=None,
        help='record file (default: <cache entry>/'
        'reference.json only)')
    a = p.parse_args(argv)
    preset = get_preset(a.preset)
    q = preset['quality']
    if a.model not in q['models']:
        p.error(f'--model must be one of {sorted(q["models"])}, got '
                f'{a.model!r}')
    q['protocols'] = ('trained', )
    q['models'] = {a.model: q['models'][a.model]}
    ref = dict(model_setting(q, a.model, 'reference'))
    if a.epochs is not None:
        ref['epochs'] = a.epochs
    if a.val_interval is not None:
        ref['val_interval'] = a.val_interval
    q['reference'], q['models'][a.model]['reference'] = ref, None
    data = prepare_data(a.data_root, q['data'])
    out = a.out or osp.join(a.cache, 'last_cli_record.json')
    job, = reference_jobs(
        preset, osp.dirname(out),
        osp.join(ROOT, 'work_dirs', 'bench', 'reference_cli'), data, 'cpu',
        a.threads, a.cache)
    job['out'] = out
    rec = run_job(job)
    print(
        json.dumps(
            {
                k: rec.get(k)
                for k in ('status', 'mAP', 'epochs', 'train_wall_s', 'plateau',
                          'checkpoint', 'error')
            },
            indent=1))
    return 0 if rec.get('status') == 'ok' else 1


if __name__ == '__main__':
    sys.exit(main())
