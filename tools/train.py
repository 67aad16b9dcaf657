# Copyright (c) mmprune contributors. All rights reserved.
"""Train a detector with mmengine's Runner (mmdet-compatible command line).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]

Differences from mmdet's ``tools/train.py``: ``import mmprune`` comes first
(checkpoints resume under torch>=2.6, see :mod:`mmprune.compat`), and
pretrained weights that cannot be found offline are removed with a warning
(or are an error with ``--strict-offline``) instead of hanging on a download
(see :mod:`mmprune.utils.offline`).
"""
import argparse
import os
import os.path as osp

from mmdet.utils import register_all_modules
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmprune  # noqa: F401  (first: torch.load safe globals, registries)
from mmprune.runtime.ddp import init_cpu_dist
from mmprune.utils.cli import check_checkpoint_arg, check_config_arg
from mmprune.utils.offline import check_offline_weights


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint; without a path, resume from the '
        'latest checkpoint in the work dir')
    parser.add_argument(
        '--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by the actual batch size')
    parser.add_argument(
        '--strict-offline',
        action='store_true',
        help='fail when pretrained weights are not in a local cache, '
        'instead of training those modules from scratch')
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
    # torch.distributed.launch passes --local-rank (torch>=2.0) or
    # --local_rank; torchrun only sets the LOCAL_RANK environment variable.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    # a missing config or a file that is not a checkpoint: one line, exit 2
    check_config_arg(parser, args.config)
    if args.resume not in (None, 'auto'):
        check_checkpoint_arg(parser, args.resume, '--resume')
    return args


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def build_cfg(args) -> Config:
    """Merge the command line into the config (pure: no runner is built)."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.setdefault('default_scope', 'mmdet')

    # work_dir priority: command line > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.launcher != 'none' and not _cuda_available() and \
            cfg.get('model_wrapper_cfg') is None:
        # mmengine's default DDP wrapping passes device_ids, which CPU
        # (gloo) DDP rejects; MMPruneDDP is the same wrapper without them
        cfg.model_wrapper_cfg = dict(type='MMPruneDDP')
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
        cfg.env_cfg.dist_cfg['backend'] = 'gloo'

    if args.auto_scale_lr:
        if ('auto_scale_lr' not in cfg or 'enable' not in cfg.auto_scale_lr
                or 'base_batch_size' not in cfg.auto_scale_lr):
            raise RuntimeError('--auto-scale-lr needs `auto_scale_lr = dict('
                               'enable=..., base_batch_size=...)` in the '
                               f'config {args.config}')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    return check_offline_weights(cfg, strict=args.strict_offline)


def main(argv=None):
    args = parse_args(argv)
    register_all_modules(init_default_scope=False)
    init_cpu_dist(args.launcher)  # CPU torchrun: gloo, no cuda calls
    cfg = build_cfg(args)
    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


if __name__ == '__main__':
    main()
