"""Fine residual mode with reader pruning: a reader gathers its own subset of
a residual stream.

FCP (Chen et al., ICANN 2020) lets every channel be pruned on its own. In
fine mode the writers into a stream are scattered back to full stream width
(:mod:`mmprune.pruners.scatter`); with ``read_pruning`` each reader of the
stream also keeps its own input columns ``R`` and reads only them.

How: the reader's weight is sliced to its kept columns (W: (C_out, |R|, k,
k)) and a forward pre-hook gathers the matching incoming channels,
``x.index_select(1, gather)``: (N, C_inc, H, W) -> (N, |R|, H, W). Why a
Gather and not the alternatives:

* keeping the full-width weight with zero columns saves no FLOPs;
* ``index_select`` with a constant index exports to ONNX as one ``Gather``
  on the channel axis, which every runtime runs as a copy of the kept
  channels (memory-bound, small next to the conv it feeds), and the conv
  then runs at its reduced in-width;
* a slice per contiguous run plus a Concat would export as several ops for
  the same copy.

The map lives in a non-persistent buffer (format:
:mod:`mmprune.graph.read_map`), so state_dict keys do not change and a
structure replay re-creates it (:func:`mmprune.apis.replay`).
"""
import torch
import torch.nn as nn

from ..graph.read_map import BUFFER


def _gather_hook(module: nn.Module, args):
    gather = getattr(module, BUFFER)
    # args[0]: (N, C_inc, ...) -> (N, C_w, ...), the columns the weight keeps
    return (args[0].index_select(1, gather), ) + tuple(args[1:])


def set_read_gather(module: nn.Module, gather: torch.Tensor,
                    incoming: int) -> None:
    """Make ``module`` read channels ``gather`` ((C_w,) LongTensor of
    positions in its (N, ``incoming``, ...) input) instead of its whole
    input. ``gather`` is in the coordinates of the input as it will arrive
    (the caller composes it with any earlier map); an identity map on a
    module without one installs nothing."""
    gather = torch.as_tensor(gather, dtype=torch.long)
    if not hasattr(module, BUFFER) and len(gather) == incoming and \
            torch.equal(gather, torch.arange(incoming)):
        return
    if len(gather) and (int(gather.min()) < 0
                        or int(gather.max()) >= incoming):
        raise ValueError(f'read gather of {type(module).__name__} indexes '
                         f'outside its {incoming} input channels')
    device = next((t.device for t in module.parameters()), gather.device)
    if hasattr(module, BUFFER):
        setattr(module, BUFFER, gather.to(device))
    else:
        module.register_buffer(BUFFER, gather.to(device), persistent=False)
        module.register_forward_pre_hook(_gather_hook)


def read_gather(module: nn.Module):
    """The (C_w,) gather map of a reader, or None."""
    return getattr(module, BUFFER, None)
