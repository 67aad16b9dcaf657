"""MMPruneDDP: mmengine's DDP wrapper, usable on CPU (gloo) as well.

mmengine 0.10.7's ``Runner.wrap_model`` always passes
``device_ids=[LOCAL_RANK]``, which torch's DDP rejects for a CPU module. So
``torchrun ... --launcher pytorch`` on CPU fails before the first iteration.
This subclass drops ``device_ids`` when the module lives on the CPU and is
otherwise ``MMDistributedDataParallel`` (it *is* a DDP wrapper, so it belongs
in ``MODEL_WRAPPERS``). Select it with
``model_wrapper_cfg = dict(type='MMPruneDDP')``; ``tools/train.py`` does so
by itself when no GPU is visible.
"""
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class MMPruneDDP(MMDistributedDataParallel):

    def __init__(self, module, device_ids=None, **kwargs):
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        super().__init__(
            module=module, device_ids=None if on_cpu else device_ids, **kwargs)


def init_cpu_dist(launcher: str) -> bool:
    """Start the gloo process group for a CPU-only ``torchrun`` job.

    mmengine 0.10.7's ``init_dist('pytorch')`` calls
    ``torch.cuda.set_device`` first, which a CPU build of torch cannot do.
    When the group already exists the Runner skips its own ``init_dist``, so
    the train/test tools call this before building the Runner. Returns True
    when it initialised the group.
    """
    import torch
    import torch.distributed as dist
    if launcher != 'pytorch' or torch.cuda.is_available() or \
            dist.is_initialized():
        return False
    dist.init_process_group(backend='gloo')  # env:// from torchrun
    return True
