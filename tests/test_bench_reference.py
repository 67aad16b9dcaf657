"""benchmarks/reference.py: the cache key follows what made a reference,
a sound cache entry is reused without training, a corrupt one is
retrained, never loaded."""
import json
import os
import os.path as osp
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import reference as REF  # noqa: E402

DATA = dict(
    difficulty='easy', size=64, num_train=8, num_val=4, num_classes=10, seed=0)
REFSPEC = dict(epochs=1, seed=0)


def test_cache_key_follows_config_data_seed_and_recipe(monkeypatch):
    import benchmarks.train_config as TC
    key = REF.cache_key('yolox_tiny', REFSPEC, DATA, 4)
    assert key == REF.cache_key('yolox_tiny', dict(REFSPEC), dict(DATA), 4)
    assert len(key) == 16
    changed = {
        'data size':
        REF.cache_key('yolox_tiny', REFSPEC, dict(DATA, num_train=9), 4),
        'data profile':
        REF.cache_key('yolox_tiny', REFSPEC, dict(DATA, difficulty='hard'), 4),
        'seed':
        REF.cache_key('yolox_tiny', dict(REFSPEC, seed=1), DATA, 4),
        'epochs':
        REF.cache_key('yolox_tiny', dict(REFSPEC, epochs=2), DATA, 4),
        'batch':
        REF.cache_key('yolox_tiny', REFSPEC, DATA, 8),
        'model':
        REF.cache_key('retinanet_r18', REFSPEC, DATA, 4),
    }
    # the model config itself (same name, another mmdet config or LR)
    monkeypatch.setitem(TC.MODELS, 'yolox_tiny',
                        ('mmdet::yolox/yolox_s_8xb8-300e_coco.py', 0.002))
    changed['mmdet config'] = REF.cache_key('yolox_tiny', REFSPEC, DATA, 4)
    monkeypatch.setitem(TC.MODELS, 'yolox_tiny',
                        ('mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', 0.003))
    changed['learning rate'] = REF.cache_key('yolox_tiny', REFSPEC, DATA, 4)
    monkeypatch.undo()
    # the recipe: a change to the shared training recipe shows in the
    # config; one that does not is what RECIPE_VERSION is for
    import mmprune.datasets.short_recipe as SR
    orig = SR.short_cpu_config

    def warmer(*a, **kw):
        cfg = orig(*a, **kw)
        cfg.optim_wrapper['optimizer']['weight_decay'] = 0.01
        return cfg

    monkeypatch.setattr(SR, 'short_cpu_config', warmer)
    changed['recipe config'] = REF.cache_key('yolox_tiny', REFSPEC, DATA, 4)
    monkeypatch.undo()
    monkeypatch.setattr(REF, 'RECIPE_VERSION', REF.RECIPE_VERSION + 1)
    changed['recipe version'] = REF.cache_key('yolox_tiny', REFSPEC, DATA, 4)
    monkeypatch.undo()
    assert REF.cache_key('yolox_tiny', REFSPEC, DATA, 4) == key
    for what, k in changed.items():
        assert k != key, what
    assert len(set(changed.values())) == len(changed)


def _job(tmp_path, data):
    preset = dict(
        name='test',
        quality=dict(
            protocols=('trained', ),
            data=DATA,
            batch_size=4,
            reference=dict(REFSPEC, val_interval=1),
            models=dict(yolox_tiny=dict(methods=('dense', )))))
    job, = REF.reference_jobs(
        preset,
        str(tmp_path / 'results'),
        str(tmp_path / 'work'),
        data,
        'cpu',
        1,
        cache_root=str(tmp_path / 'cache'))
    return job


def test_reference_is_trained_once_and_a_corrupt_one_retrained(tmp_path):
    from benchmarks.quality import prepare_data
    data = prepare_data(str(tmp_path / 'data'), DATA)
    job = _job(tmp_path, data)
    rec = REF.run_job(job)
    assert rec['status'] == 'ok', rec.get('traceback')
    assert rec['cached'] is False and rec['epochs'] == 1
    assert rec['iterations'] == 2 and 0 <= rec['mAP'] <= 1
    assert rec['train_wall_s'] > 0 and len(rec['val_history']) == 1
    ckpt = job['checkpoint']
    state = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert rec['weights'] == 'ema'  # YOLOX validates with its EMA copy
    assert set(state['state_dict']) and \
        state['meta']['mmprune_bench_reference']['key'] == job['key']
    with open(job['out']) as f:
        assert json.load(f)['sha256'] == REF.sha256_file(ckpt)

    # reused: no training, the same bytes
    mtime = os.stat(ckpt).st_mtime_ns
    again = REF.run_job(_job(tmp_path, data))
    assert again['cached'] is True and again['sha256'] == rec['sha256']
    assert os.stat(ckpt).st_mtime_ns == mtime

    # one flipped byte in the middle: detected, retrained, sound again
    with open(ckpt, 'r+b') as f:
        f.seek(os.path.getsize(ckpt) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    found, why = REF.check_cached(job['cache_dir'], job['key'])
    assert found is None and 'corrupt' in why
    fresh = REF.run_job(_job(tmp_path, data))
    assert fresh['status'] == 'ok' and fresh['cached'] is False
    assert REF.check_cached(job['cache_dir'], job['key'])[0] is not None
    assert REF.sha256_file(ckpt) == fresh['sha256']

    # truncated, and a record for another key: both retrained, not loaded
    with open(ckpt, 'r+b') as f:
        f.truncate(1000)
    assert 'corrupt' in REF.check_cached(job['cache_dir'], job['key'])[1]
    found, why = REF.check_cached(job['cache_dir'], 'f' * 16)
    assert found is None and 'key' in why


def test_reference_jobs_need_their_settings(tmp_path):
    preset = dict(
        name='bad',
        quality=dict(
            protocols=('trained', ),
            data=DATA,
            batch_size=4,
            reference=dict(epochs=1),
            models=dict(yolox_tiny=dict(methods=('dense', )))))
    with pytest.raises(ValueError, match="no 'seed'"):
        REF.reference_jobs(preset, str(tmp_path), str(tmp_path), {}, 'cpu', 1,
                           str(tmp_path))
    preset['quality']['protocols'] = ('scratch', )
    assert REF.reference_jobs(preset, str(tmp_path), str(tmp_path), {}, 'cpu',
                              1, str(tmp_path)) == []
