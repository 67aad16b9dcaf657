"""A test-only hook (imported through the config's custom_imports in the DDP
test): after every training epoch each rank appends its structure hash and
parameter count to ``<work_dir>/structure_rank<R>.json``, and a hash of the
pruning hook's latency table (the one each rank orders channels by)."""
import hashlib
import json
import os.path as osp

from mmdet.registry import HOOKS
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from mmprune.hooks.channel_pruning_hook import ChannelPruningHook
from mmprune.runtime.consistency import structure_hash
from mmprune.runtime.rebind import unwrap


@HOOKS.register_module()
class StructureProbeHook(Hook):
    priority = 'LOW'  # after ChannelPruningHook (40) in the same stage

    def after_train_epoch(self, runner):
        model = unwrap(runner.model)
        path = osp.join(runner.work_dir, f'structure_rank{get_rank()}.json')
        rows = json.load(open(path)) if osp.exists(path) else []
        hook = [h for h in runner.hooks
                if isinstance(h, ChannelPruningHook)][0]
        table = hook.state.get('latency')
        latency = None if table is None else hashlib.sha1(
            json.dumps(table, sort_keys=True).encode()).hexdigest()
        rows.append(
            dict(
                epoch=runner.epoch + 1,
                latency=latency,
                hash=structure_hash(model),
                params=sum(p.numel() for p in model.parameters()),
                ddp=type(runner.model).__name__))
        json.dump(rows, open(path, 'w'))
