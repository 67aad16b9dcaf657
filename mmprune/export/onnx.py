"""ONNX export of a detector's tensor forward, checked with onnxruntime.

What is exported is ``model(x, None, mode='tensor')``: backbone, neck and
head, ending at the heads' raw per-level maps (YOLOX: ``cls_score``,
``bbox_pred``, ``objectness`` at 3 levels; RetinaNet: ``cls_score``,
``bbox_pred`` at 5), with no box decoding and no NMS. The input is the batch
*after* the config's ``data_preprocessor`` (mean/std, BGR->RGB and padding
are the caller's job; :func:`preprocess_info` lists them).

The TorchScript exporter (``dynamo=False``) is used: the dynamo exporter
needs onnxscript. Fine residual mode's scatter is a static Concat + Gather
(:mod:`mmprune.pruners.scatter`), and a reader that keeps its own subset of
a stream (``read_pruning``) gathers it with ``index_select`` on a constant
index (:mod:`mmprune.pruners.gather`), one Gather before its conv; both
export as ordinary ops (tests/test_read_pruning.py checks onnxruntime).
"""
import warnings
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..adapters.detector import flatten_tensors, is_two_stage
from .checkpoint import ExportError

#: oldest opset accepted (Gather/Concat/Resize as the exporter writes them)
MIN_OPSET = 13


class VerificationError(ExportError):
    """onnxruntime's outputs differ from torch's beyond the tolerance."""


class TensorForward(nn.Module):
    """``detector(x, None, mode='tensor')`` as a flat tuple of tensors.

    Args:
        detector (nn.Module): a single-stage mmdet detector (or any module
            whose ``forward(x)`` returns nested tuples/lists of tensors).
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        if is_two_stage(detector):
            # the RPN's proposal selection (NMS, top-k over a data-dependent
            # count) runs inside the two-stage tensor forward
            raise ExportError(
                f'{type(detector).__name__}: ONNX export of two-stage '
                f'detectors is not supported (their tensor forward runs the '
                f'RPN proposal NMS)')
        self.detector = detector

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(flatten_tensors(_raw_forward(self.detector, x)))


def _raw_forward(model: nn.Module, x: torch.Tensor):
    """The nested tensor-forward output of a detector (or ``model(x)``)."""
    try:
        from mmdet.models.detectors import BaseDetector
    except ImportError:  # plain torch model
        BaseDetector = ()
    if BaseDetector and isinstance(model, BaseDetector):
        return model(x, None, mode='tensor')
    return model(x)


def output_names(model: nn.Module, x: torch.Tensor) -> List[str]:
    """``out{i}_{j}`` for element ``j`` of the ``i``-th item of the tensor
    forward's output (YOLOX: ``out0_*`` class scores, ``out1_*`` boxes,
    ``out2_*`` objectness; ``j`` = FPN level), in flattening order."""
    names: List[str] = []

    def walk(o, path):
        if isinstance(o, torch.Tensor):
            names.append('out' + '_'.join(str(i) for i in path))
        elif isinstance(o, (list, tuple)):
            for i, item in enumerate(o):
                walk(item, path + (i, ))

    with torch.no_grad():
        out = _raw_forward(model, x)
    walk(out if isinstance(out, (list, tuple)) else (out, ), ())
    return names


def preprocess_info(model: nn.Module) -> dict:
    """What the ONNX input expects, read from the model's data
    preprocessor: ``mean``/``std`` (None: no normalisation), ``bgr_to_rgb``
    and ``pad_size_divisor``."""
    pre = getattr(model, 'data_preprocessor', None)
    info = dict(mean=None, std=None, bgr_to_rgb=False, pad_size_divisor=1)
    if pre is None:
        return info
    if hasattr(pre, 'mean') and isinstance(pre.mean, torch.Tensor):
        info['mean'] = [float(v) for v in pre.mean.flatten()]
        info['std'] = [float(v) for v in pre.std.flatten()]
    info['bgr_to_rgb'] = bool(getattr(pre, '_channel_conversion', False))
    info['pad_size_divisor'] = int(getattr(pre, 'pad_size_divisor', 1))
    return info


def random_batch(model: nn.Module,
                 batch: int,
                 size: Tuple[int, int],
                 seed: int = 0) -> torch.Tensor:
    """(batch, 3, H, W) random pixels in [0, 255], normalised as the
    model's data preprocessor would: the value range the network sees."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, *size, generator=gen) * 255
    info = preprocess_info(model)
    if info['mean'] is not None:
        mean = torch.tensor(info['mean']).view(1, -1, 1, 1)
        std = torch.tensor(info['std']).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def export_onnx(model: nn.Module,
                path: str,
                x: torch.Tensor,
                opset: int = 17,
                dynamic_batch: bool = True) -> List[str]:
    """Export ``model``'s tensor forward on input ``x`` to ``path``.

    Args:
        model (nn.Module): the detector, in eval mode.
        path (str): the ONNX file to write (write it through
            :func:`mmprune.utils.io.atomic_write`).
        x (Tensor): (N, 3, H, W) example input; H, W are fixed in the graph.
        opset (int): ONNX opset, >= :data:`MIN_OPSET`.
        dynamic_batch (bool): make the batch axis dynamic.

    Returns:
        list[str]: the output names, in output order.
    """
    if opset < MIN_OPSET:
        raise ExportError(f'opset must be >= {MIN_OPSET}, got {opset}')
    wrapper = TensorForward(model).eval()
    names = output_names(model, x)
    axes = None
    if dynamic_batch:
        axes = {n: {0: 'batch'} for n in ['input'] + names}
    with torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings about Python ints in mmdet heads: shapes are fixed
        # at the export size, which is what a static graph means
        warnings.simplefilter('ignore')
        torch.onnx.export(
            wrapper, (x, ),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=['input'],
            output_names=names,
            dynamic_axes=axes,
            do_constant_folding=True)
    return names


def verify_onnx(path: str,
                model: nn.Module,
                inputs: Sequence[torch.Tensor],
                atol: float = 1e-4,
                threads: int = 1) -> dict:
    """Run ``path`` in onnxruntime and ``model`` in torch on each input.

    Args:
        path (str): the ONNX file (input named ``input``).
        model (nn.Module): the detector it was exported from.
        inputs (Sequence[Tensor]): (N, 3, H, W) batches.
        atol (float): tolerance on ``max |onnx - torch| / max |torch|``,
            per output.
        threads (int): onnxruntime intra-op threads.

    Returns:
        dict: ``outputs`` (per output: name, shape, max_abs_diff, scale,
        rel_diff; the maximum over ``inputs``), ``max_rel_diff``,
        ``passed``, ``failed`` (names above ``atol``).
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(
        path, sess_options=opts, providers=['CPUExecutionProvider'])
    names = [o.name for o in sess.get_outputs()]
    wrapper = TensorForward(model).eval()
    rows = [
        dict(name=n, shape=None, max_abs_diff=0.0, scale=0.0) for n in names
    ]
    for x in inputs:
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            want = [t.numpy() for t in wrapper(x)]
        if len(got) != len(want):
            raise VerificationError(
                f'{path}: onnxruntime gives {len(got)} outputs, torch '
                f'{len(want)}')
        for row, a, b in zip(rows, got, want):
            if a.shape != b.shape:
                raise VerificationError(
                    f'{path}: output {row["name"]} has shape {a.shape} in '
                    f'onnxruntime, {b.shape} in torch (input '
                    f'{tuple(x.shape)})')
            if row['shape'] is None:  # at the first input's batch
                row['shape'] = list(b.shape)
            row['max_abs_diff'] = max(row['max_abs_diff'],
                                      float(np.abs(a - b).max()))
            row['scale'] = max(row['scale'], float(np.abs(b).max()))
    for row in rows:
        row['rel_diff'] = row['max_abs_diff'] / max(row['scale'], 1e-12)
    failed = [r['name'] for r in rows if not r['rel_diff'] <= atol]
    return dict(
        outputs=rows,
        max_rel_diff=max(r['rel_diff'] for r in rows),
        atol=atol,
        passed=not failed,
        failed=failed)
