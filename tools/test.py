# Copyright (c) mmprune contributors. All rights reserved.
"""Evaluate a checkpoint with mmengine's Runner (mmdet-compatible command
line).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out x.pkl]
        [--show-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]

``import mmprune`` comes first, so checkpoints load with ``weights_only=True``
under torch>=2.6 (see :mod:`mmprune.compat`). The checkpoint replaces every
pretrained ``init_cfg``, so only a remote CHECKPOINT itself is checked against
the local caches (an error, never a download; see
:mod:`mmprune.utils.offline`).
"""
import argparse
import os
import os.path as osp

import torch
from mmdet.evaluation import DumpDetResults
from mmdet.utils import register_all_modules
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmprune  # noqa: F401  (first: torch.load safe globals, registries)
from mmprune.runtime.ddp import init_cpu_dist
from mmprune.utils.cli import check_checkpoint_arg, check_config_arg
from mmprune.utils.offline import check_offline_weights


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save the file containing metrics')
    parser.add_argument(
        '--out', help='dump the predictions to this pickle file (.pkl)')
    parser.add_argument(
        '--show-dir',
        help='save images with predictions drawn to this dir (relative to '
        'the run\'s timestamped folder in the work dir)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value (xxx=[a,b] for lists)')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must be a .pkl file, got {args.out!r}')
    # a missing config or a file that is not a checkpoint: one line, exit 2
    check_config_arg(parser, args.config)
    check_checkpoint_arg(parser, args.checkpoint)
    return args


def build_cfg(args) -> Config:
    """Merge the command line into the config (pure: no runner is built)."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.setdefault('default_scope', 'mmdet')

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    cfg.load_from = args.checkpoint
    if args.show_dir is not None:
        hooks = cfg.get('default_hooks', {})
        if 'visualization' not in hooks:
            raise RuntimeError(
                '--show-dir needs a `visualization` entry (mmdet\'s '
                'DetVisualizationHook) in `default_hooks`')
        hooks.visualization.draw = True
        hooks.visualization.test_out_dir = args.show_dir

    if args.launcher != 'none' and not torch.cuda.is_available() and \
            cfg.get('model_wrapper_cfg') is None:
        # CPU (gloo) DDP: mmengine's default wrapping passes device_ids
        cfg.model_wrapper_cfg = dict(type='MMPruneDDP')
    return check_offline_weights(cfg, strict=True, check_init_cfg=False)


def main(argv=None):
    args = parse_args(argv)
    register_all_modules(init_default_scope=False)
    init_cpu_dist(args.launcher)  # CPU torchrun: gloo, no cuda calls
    cfg = build_cfg(args)
    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    if args.out is not None:
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))
    return runner.test()


if __name__ == '__main__':
    main()
