"""A test-only hook (imported through the config's custom_imports in the DDP
test): after every training epoch each rank appends its structure hash and
parameter count to ``<work_dir>/structure_rank<R>.json``."""
import json
import os.path as osp

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmdet.registry import HOOKS

from mmprune.hooks.channel_pruning_hook import ChannelPruningHook
from mmprune.runtime.rebind import unwrap


@HOOKS.register_module()
class StructureProbeHook(Hook):
    priority = 'LOW'  # after ChannelPruningHook (40) in the same stage

    def after_train_epoch(self, runner):
        model = unwrap(runner.model)
        path = osp.join(runner.work_dir, f'structure_rank{get_rank()}.json')
        rows = json.load(open(path)) if osp.exists(path) else []
        rows.append(dict(epoch=runner.epoch + 1,
                         hash=ChannelPruningHook.structure_hash(model),
                         params=sum(p.numel() for p in model.parameters()),
                         ddp=type(runner.model).__name__))
        json.dump(rows, open(path, 'w'))
