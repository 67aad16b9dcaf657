"""mmprune's own small registries (components only mmprune builds).

Hooks and models register into mmdet's ``HOOKS``/``MODELS`` so configs need
no scope prefix; criteria and allocators live here.
"""
from mmengine.registry import Registry

CRITERIA = Registry('pruning criterion', scope='mmprune')
ALLOCATORS = Registry('channel allocator', scope='mmprune')


def build_from(registry: Registry, cfg, what: str):
    """Build ``cfg`` (a str name or a dict with ``type``) from ``registry``
    with an error that lists the valid names."""
    if isinstance(cfg, str):
        cfg = dict(type=cfg)
    cfg = dict(cfg)
    name = cfg.get('type')
    if name not in registry.module_dict:
        valid = sorted(registry.module_dict)
        raise ValueError(f'unknown {what} {name!r}; valid names: {valid}')
    return registry.module_dict[name](**{
        k: v
        for k, v in cfg.items() if k != 'type'
    })


# appended with the regularisers (mmprune/regularizers): training-loss terms
# a pruning hook or model adds (TPP trainability protection, BN-L1)
REGULARIZERS = Registry('pruning regularizer', scope='mmprune')
