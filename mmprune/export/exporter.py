"""Pruned checkpoint + config -> compact checkpoint, verified ONNX, report.

:func:`export_detector` is what ``tools/export.py`` runs. It writes into
``work_dir``, each file atomically (:mod:`mmprune.utils.io`):

* ``compact.pth``: ``{'state_dict', 'meta'}`` of the pruned model (see
  :func:`~mmprune.export.checkpoint.compact_checkpoint`);
* ``model.onnx``: the tensor forward (:mod:`mmprune.export.onnx`), written
  only once onnxruntime agrees with torch within ``atol``;
* ``export_report.json``: paths, input shape, per-output differences,
  FLOPs/params of the compact (and the dense) model, versions. Written
  also when verification fails (``passed: false``), so the failure is on
  record; the function then raises :class:`VerificationError`.
"""
import json
import os
import os.path as osp
import tempfile
from typing import Sequence

import torch

from .checkpoint import (ExportError, build_detector, checkpoint_structure,
                         compact_checkpoint, load_pruned_detector,
                         read_checkpoint, select_weights)
from .onnx import (MIN_OPSET, TensorForward, VerificationError, export_onnx,
                   preprocess_info, random_batch, verify_onnx)

COMPACT_NAME = 'compact.pth'
ONNX_NAME = 'model.onnx'
REPORT_NAME = 'export_report.json'


def check_writable_dir(folder: str) -> None:
    """Create ``folder`` and write a probe file in it, before any slow
    work; an :class:`ExportError` naming it when that fails."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix='.probe_')
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ExportError(f'cannot write to work dir {folder!r}: '
                          f'{e.strerror or e}') from e


def _write(path: str, write) -> None:
    """:func:`atomic_write`, with any failure re-raised naming ``path``
    (the writer's own error may name only the temporary file)."""
    from ..utils.io import atomic_write
    try:
        atomic_write(path, write)
    except ExportError:
        raise
    except Exception as e:
        msg = str(e)
        if repr(path) not in msg:
            msg = f'cannot write {path!r}: {msg}'
        raise ExportError(msg) from e


def _text_writer(text: str):

    def write(path):
        with open(path, 'w') as f:
            f.write(text)

    return write


def export_detector(config: str,
                    checkpoint: str,
                    work_dir: str,
                    input_size: Sequence[int] = (640, 640),
                    batch_size: int = 1,
                    opset: int = 17,
                    use_ema: bool = False,
                    atol: float = 1e-4,
                    seed: int = 0,
                    cfg=None) -> dict:
    """Export a pruned (or dense) detector checkpoint.

    Args:
        config (str): the model's config file (or ``mmdet::`` path).
        checkpoint (str): ``pruned.pth`` of ``tools/prune.py`` or a
            checkpoint of a run with ``ChannelPruningHook``.
        work_dir (str): output folder (created).
        input_size (Sequence[int]): (H, W) of the ONNX input, a multiple of
            the config's ``pad_size_divisor``. Defaults to (640, 640).
        batch_size (int): batch of the example input; the ONNX batch axis
            is dynamic and is checked at ``batch_size`` and
            ``batch_size + 1``. Defaults to 1.
        opset (int): ONNX opset, >= 13. Defaults to 17.
        use_ema (bool): export the EMA weights (see
            :func:`~mmprune.export.checkpoint.select_weights`).
        atol (float): tolerance on each output's max abs difference,
            relative to that output's max magnitude. Defaults to 1e-4.
        seed (int): seed of the random check inputs.
        cfg (Config, optional): the loaded ``config`` (skips loading).

    Returns:
        dict: the report written to ``export_report.json``.
    """
    from ..costs import cost_model
    from ..utils.config import load_config
    h, w = (int(s) for s in input_size)
    if min(h, w) < 32:
        raise ExportError(f'input size must be at least 32x32, got {h}x{w}')
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ExportError(f'batch size must be an int >= 1, got '
                          f'{batch_size!r}')
    if opset < MIN_OPSET:
        raise ExportError(f'opset must be >= {MIN_OPSET}, got {opset}')
    if not atol > 0:
        raise ExportError(f'atol must be > 0, got {atol}')
    check_writable_dir(work_dir)
    if cfg is None:
        if '::' not in config and not osp.isfile(config):
            raise ExportError(f'config {config!r} does not exist')
        cfg = load_config(config)
    ckpt = read_checkpoint(checkpoint)
    select_weights(ckpt, use_ema, checkpoint)  # --use-ema fails early

    dense = build_detector(cfg)
    TensorForward(dense)  # an unsupported detector fails before any work
    pre = preprocess_info(dense)
    div = pre['pad_size_divisor']
    if h % div or w % div:
        raise ExportError(
            f'input size {h}x{w} must be a multiple of the config\'s '
            f'pad_size_divisor ({div}): the detector never sees other sizes')
    dense_cost = cost_model(dense, (h, w))
    dense_flops, dense_params = dense_cost.flops(), dense_cost.params(dense)
    model, which = load_pruned_detector(
        cfg, ckpt, use_ema, checkpoint, dense=dense)
    plans, trace_size = checkpoint_structure(ckpt)
    cost = cost_model(model, (h, w))
    flops, params = cost.flops(), cost.params(model)

    compact_path = osp.join(work_dir, COMPACT_NAME)
    onnx_path = osp.join(work_dir, ONNX_NAME)
    report_path = osp.join(work_dir, REPORT_NAME)
    compact = compact_checkpoint(model, ckpt, which, checkpoint)
    _write(compact_path, lambda p: torch.save(compact, p))

    # the example input fixes H, W in the graph; the check runs a second
    # batch size to exercise the dynamic batch axis
    x = random_batch(model, batch_size, (h, w), seed)
    checks = [x, random_batch(model, batch_size + 1, (h, w), seed + 1)]
    result = {}

    def write_onnx(tmp):
        try:
            export_onnx(model, tmp, x, opset)
        except Exception as e:
            raise ExportError(f'ONNX export of {type(model).__name__} to '
                              f'{onnx_path!r} failed: {type(e).__name__}: '
                              f'{e}') from e
        result['check'] = verify_onnx(tmp, model, checks, atol)
        if not result['check']['passed']:
            # nothing lands at onnx_path: a failed model is not deployed
            raise VerificationError('verification failed')

    try:
        _write(onnx_path, write_onnx)
    except ExportError as e:
        if 'check' not in result:
            raise
        failure = e
    else:
        failure = None
    check = result['check']

    import onnx
    import onnxruntime
    from mmdet import __version__ as mmdet_version
    from mmengine import __version__ as mmengine_version

    from ..version import __version__ as mmprune_version
    report = dict(
        config=config,
        checkpoint=checkpoint,
        weights=which,
        compact_checkpoint=compact_path,
        onnx=onnx_path if failure is None else None,
        input_name='input',
        input_shape=[batch_size, 3, h, w],
        dynamic_axes=dict(input=[0]),
        opset=opset,
        input_note=('the batch after the data preprocessor: pixels '
                    'normalised with mean/std (when set), channel order '
                    'converted, padded to pad_size_divisor'),
        preprocess=pre,
        outputs=check['outputs'],
        max_rel_diff=check['max_rel_diff'],
        atol=atol,
        passed=check['passed'],
        check_inputs=[list(t.shape) for t in checks],
        flops=flops,
        params=params,
        dense_flops=dense_flops,
        dense_params=dense_params,
        flops_ratio=flops / max(dense_flops, 1),
        params_ratio=params / max(dense_params, 1),
        flops_note=(f'MACs of conv/linear plus BN ops, batch 1 at {h}x{w} '
                    f'(mmprune.apis.cost_model)'),
        num_plans=len(plans),
        residual_modes=[p.residual_mode for p in plans],
        trace_size=list(trace_size),
        versions=dict(
            onnxruntime=onnxruntime.__version__,
            onnx=onnx.__version__,
            torch=torch.__version__,
            mmdet=mmdet_version,
            mmengine=mmengine_version,
            mmprune=mmprune_version),
    )
    text = json.dumps(report, indent=2, sort_keys=True) + '\n'
    _write(report_path, _text_writer(text))
    if failure is not None:
        worst = max(check['outputs'], key=lambda r: r['rel_diff'])
        raise VerificationError(
            f'onnxruntime disagrees with torch: output {worst["name"]} '
            f'differs by {worst["rel_diff"]:.3g} of its scale (> atol '
            f'{atol:g}; failing outputs: {check["failed"]}). {onnx_path!r} '
            f'was not written; details in {report_path!r}')
    return report
