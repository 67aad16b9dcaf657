"""Real DDP: 2 processes on the gloo backend on CPU, launched by
``tools/dist_train.sh`` (torchrun), pruning YOLOX-tiny at two events with
the latency-aware order. Both ranks
must hold the same structure after each event and order channels by the same
(rank 0's) latency table, and the wrapper must be a (re-built) DDP wrapper
around the pruned model."""
import json
import os
import os.path as osp
import socket
import subprocess

from test_hook_training import pruning_cfg

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_rank_gloo_training_prunes_identically(tmp_path, mmdet_config,
                                                   synth_data):
    # timing differs per process: only a broadcast table keeps ranks alike
    cfg = pruning_cfg(
        mmdet_config,
        synth_data,
        tmp_path / 'work',
        allocator=dict(
            type='AdaptiveAllocator', cost_weight=1.0, cost_measure='latency'))
    cfg.custom_imports = dict(
        imports=['mmprune', 'ddp_probe'], allow_failed_imports=False)
    cfg.custom_hooks = list(
        cfg.custom_hooks) + [dict(type='StructureProbeHook')]
    cfg.train_dataloader.batch_size = 2  # 4 images per step over 2 ranks
    path = str(tmp_path / 'cfg.py')
    cfg.dump(path)
    env = dict(
        os.environ,
        PORT=str(free_port()),
        OMP_NUM_THREADS='1',
        PYTHONPATH=osp.join(ROOT, 'tests'),
        CUDA_VISIBLE_DEVICES='')
    r = subprocess.run([
        'bash',
        osp.join(ROOT, 'tools', 'dist_train.sh'), path, '2', '--work-dir',
        str(tmp_path / 'work')
    ],
                       cwd=ROOT,
                       env=env,
                       capture_output=True,
                       text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [
        json.load(open(tmp_path / 'work' / f'structure_rank{i}.json'))
        for i in range(2)
    ]
    assert ranks[0] == ranks[1]  # same structure on both ranks, each epoch
    params = [row['params'] for row in ranks[0]]
    assert params[0] > params[1] > 0 and params[2] == params[1]  # 2 cuts
    assert {row['ddp'] for row in ranks[0]} == {'MMPruneDDP'}
    assert len({row['latency'] for row in ranks[0]}) == 1
    assert ranks[0][0]['latency'] is not None
