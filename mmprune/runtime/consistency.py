"""Keep ranks in step: one rank decides, every rank checks.

Every rank must apply the same plan (or all of them fail together): a rank
left waiting in a collective hangs the job instead of reporting the error.
"""
import hashlib
import json
from typing import Callable

import torch.nn as nn


def structure_hash(model: nn.Module) -> str:
    """A short hash of every parameter's name and shape."""
    shapes = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def check_ranks(model: nn.Module, when: str) -> None:
    """Compare the structure hash of every rank; all ranks raise together
    (one collective), so none is left waiting."""
    from mmengine.dist import all_gather_object, get_world_size
    if get_world_size() < 2:
        return
    hashes = all_gather_object(structure_hash(model))
    if len(set(hashes)) != 1:
        per_rank = ', '.join(f'rank {i}: {h}' for i, h in enumerate(hashes))
        raise RuntimeError(
            f'mmprune: ranks disagree on the model structure {when} '
            f'({per_rank}); every rank must build, load or resume the same '
            f'model')


def rank0_result(fn: Callable[[], object], what: str):
    """``fn()`` computed on rank 0 and broadcast to every rank. A
    ValueError on rank 0 is raised on every rank (the others would wait in
    the broadcast forever otherwise); ``what`` names the step."""
    from mmengine.dist import broadcast_object_list, get_rank
    value, failure = None, None
    if get_rank() == 0:
        try:
            value = fn()
        except ValueError as e:
            failure = e
    box = [value, None if failure is None else str(failure)]
    broadcast_object_list(box)
    if failure is not None:
        raise failure
    if box[1] is not None:
        raise ValueError(f'mmprune: {what} failed on rank 0: {box[1]}')
    return box[0]
