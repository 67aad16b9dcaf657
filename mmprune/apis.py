"""High-level entry points: analyse, plan, prune and replay a detector.

    graph = analyze(model)                       # channel groups
    cost = cost_model(model, (640, 640))         # MACs/params
    keep = BudgetAllocator(0.5).allocate(model, graph,
                                         L1Criterion().score(model, graph),
                                         cost)
    plan = make_plan(graph, keep)
    prune(model, plan, graph)                    # a smaller dense model

A pruned checkpoint stores its plans in ``meta['mmprune']``;
:func:`init_pruned_detector` rebuilds the dense model from the config,
replays the plans and loads the weights strictly.

A facade: each function lives with its stage (``graph/analyze.py``,
``costs/``, ``runtime/replay.py``, ``runtime/rebuild.py``,
``structures/model_record.py``) and is re-exported here.
"""
from .costs import cost_model
from .graph.analyze import TRACE_SIZE, analyze
from .runtime.rebuild import load_pruned_detector
from .runtime.replay import make_plan, prune, replay
from .structures import META_KEY, make_meta, read_meta
from .structures.model_record import model_plans, record_plans
from .utils.config import load_config

# the old private name, still called by hooks/channel_pruning_hook.py and
# runtime/resume.py until they call record_plans
_record = record_plans

__all__ = [
    'TRACE_SIZE', 'analyze', 'cost_model', 'make_plan', 'prune', 'replay',
    'model_plans', 'init_pruned_detector', 'load_config', 'META_KEY',
    'make_meta', 'read_meta', 'record_plans'
]


def init_pruned_detector(config, checkpoint: str, device: str = 'cpu'):
    """Build the config's detector, replay the checkpoint's plans and load
    its weights strictly. Works for dense checkpoints too."""
    from mmengine.config import Config
    from mmengine.runner.checkpoint import _load_checkpoint

    cfg = config if isinstance(config, Config) else load_config(config)
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    where = config if isinstance(config, str) else 'the config'
    model = load_pruned_detector(
        cfg,
        ckpt,
        source=checkpoint,
        mismatch='{source}: its pruned structure cannot be rebuilt on the '
        '{model} of ' + where.replace('{', '{{').replace('}', '}}') +
        ' (a checkpoint of another model or config?)')
    return model.to(device).eval()
