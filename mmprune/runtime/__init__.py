from .atomic_checkpoint import AtomicLocalBackend, make_checkpoints_atomic
from .ddp import MMPruneDDP
from .rebind import (find_ema, prune_ema, prune_runner, rebind_optimizer,
                     rewrap, unwrap)
from .resume import record_runner, replay_runner

__all__ = [
    'AtomicLocalBackend', 'make_checkpoints_atomic', 'MMPruneDDP', 'find_ema',
    'prune_ema', 'prune_runner', 'rebind_optimizer', 'record_runner',
    'replay_runner', 'rewrap', 'unwrap'
]
