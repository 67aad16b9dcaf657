from .ddp import MMPruneDDP
from .rebind import (find_ema, prune_ema, prune_runner, rebind_optimizer,
                     rewrap, unwrap)

__all__ = ['MMPruneDDP', 'find_ema', 'prune_ema', 'prune_runner',
           'rebind_optimizer', 'rewrap', 'unwrap']
