# Copyright (c) mmprune contributors. All rights reserved.
"""Load mmengine/mmdet checkpoints with ``torch.load(weights_only=True)``.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``. mmengine
0.10.7 calls ``torch.load(filename, map_location=...)`` without the argument
(``mmengine/runner/checkpoint.py``, ``load_from_local``), so
``--resume``/``load_from`` of a checkpoint written by mmengine's own
CheckpointHook fails with ``Weights only load failed ... HistoryBuffer``.

The fix is to allow-list, with :func:`torch.serialization.add_safe_globals`,
exactly the globals those checkpoints contain, and nothing else. We keep
``weights_only=True``: a checkpoint that pickles any other class still fails
to load. The list was found empirically. We trained YOLOX-tiny (SGD with
momentum, mmdet's QuadraticWarmupLR/CosineAnnealingLR/ConstantLR schedule,
EMAHook, CocoMetric) and RetinaNet R18-FPN (VOCMetric) with mmengine's
Runner and the default hooks (CheckpointHook, also with ``save_best``). We
saved checkpoints after training and after validation, then called
``torch.load(path, weights_only=True)`` repeatedly and added only what it
complained about. Pinned stack: torch 2.13, numpy 1.26.4, mmengine 0.10.7,
mmdet 3.3.0. ``tests/test_stack_e2e.py`` re-checks that every entry is still
needed.

Each entry, and the part of the checkpoint it comes from:

* ``mmengine.logging.history_buffer.HistoryBuffer``: ``message_hub``
  ``log_scalars`` (the loss/lr/time histories) is a dict of HistoryBuffer
  objects. They are rebuilt through NEWOBJ + BUILD, and BUILD calls
  ``HistoryBuffer.__setstate__``.
* ``numpy.core.multiarray._reconstruct`` and ``numpy.ndarray``: a
  HistoryBuffer keeps its history in two numpy arrays, ``_log_history`` and
  ``_count_history``. An ndarray pickles as ``_reconstruct(ndarray, ...)``
  followed by BUILD.
* ``numpy.dtype``, ``numpy.dtypes.Float64DType`` and
  ``numpy.dtypes.Int64DType``: the dtypes of those arrays (float64 values,
  int64 counts). ``numpy.dtype(...)`` returns an instance of the concrete
  dtype class, and BUILD on that instance needs the class itself.
* ``numpy.core.multiarray.scalar``: ``message_hub.runtime_info['eta']`` is a
  ``numpy.float64`` (written by LoggerHook), and a numpy scalar pickles as
  ``scalar(dtype, bytes)``.
* ``builtins.getattr``, mapped to :func:`_history_buffer_getattr`, **not** to
  the real ``getattr``. ``HistoryBuffer.__getstate__`` stores its statistics
  functions (``HistoryBuffer.min/max/current/mean``). With torch.save's
  pickle protocol 2, a function with a dotted qualname pickles as
  ``getattr(HistoryBuffer, 'min')``. Allowing the real ``getattr`` would let a
  crafted file reach any attribute of any allowed object (for example a
  function's ``__globals__``). The stand-in resolves only those four names
  on HistoryBuffer and raises for anything else.

Things not on the list, because no checkpoint needed them:
``collections.OrderedDict`` (torch allows it already), other numpy dtypes,
object arrays, and mmdet classes (mmdet checkpoints contain only builtins,
tensors and the entries above). A checkpoint that needs more fails loudly
with torch's "Unsupported global" message. Add the entry here, with its
reason, only after checking that it is data and not code.

Note:
    This module is imported by ``import mmprune`` and by
    ``custom_imports=dict(imports=['mmprune'])``. Registration is
    idempotent: torch keeps the allow-list as a set, and
    :func:`register_safe_globals` only adds entries that are missing.
"""
import pickle

import numpy as np
import torch.serialization
from mmengine.logging.history_buffer import HistoryBuffer

# HistoryBuffer._set_default_statistics registers exactly these four methods;
# they are what HistoryBuffer.__getstate__ pickles as getattr(cls, name).
_HISTORY_BUFFER_STATISTICS = frozenset(('min', 'max', 'current', 'mean'))


def _history_buffer_getattr(obj, name):
    """``getattr`` restricted to ``HistoryBuffer.{min,max,current,mean}``.

    Registered as ``builtins.getattr`` for ``weights_only`` loads only: it is
    what a checkpoint's ``getattr`` global resolves to (see the module
    docstring).

    Raises:
        pickle.UnpicklingError: For any other object or attribute name.
    """
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not allowed in a weights_only load; '
        'mmprune.compat only allows getattr(HistoryBuffer, '
        f'{sorted(_HISTORY_BUFFER_STATISTICS)})')


# The allow-list. Each entry is explained in the module docstring.
SAFE_GLOBALS = (
    HistoryBuffer,
    np.core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Int64DType,
    np.core.multiarray.scalar,
    (_history_buffer_getattr, 'builtins.getattr'),
)


def register_safe_globals() -> None:
    """Add :data:`SAFE_GLOBALS` to torch's ``weights_only`` allow-list.

    Cheap and idempotent: only missing entries are added, so calling it again
    after ``torch.serialization.clear_safe_globals()`` restores them.
    """
    present = set(torch.serialization.get_safe_globals())
    missing = [g for g in SAFE_GLOBALS if g not in present]
    if missing:
        torch.serialization.add_safe_globals(missing)


register_safe_globals()
