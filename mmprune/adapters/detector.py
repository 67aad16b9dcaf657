"""The only architecture knowledge mmprune has about mmdet detectors.

Two things, by design (everything else is traced):

1. Which modules must keep their output width: prediction convs/linears,
   whose width is fixed by classes, boxes, objectness, centerness or anchors
   (each family names its own, :mod:`mmprune.adapters.families`).
   The tracer also pins whatever reaches the model output, so this list is a
   second line of defence for heads whose outputs are post-processed inside
   the tensor forward (the RPN of a two-stage detector).
2. How to run a detector's tensor forward on a dummy batch, and which static
   width attributes to refresh after surgery.
"""
from typing import Callable, List, Tuple

import torch
import torch.nn as nn

from .families import family_of, prediction_pattern


def fixed_output_module(name: str, module: nn.Module) -> bool:
    """True for prediction layers (their output width never changes): the
    names every registered family declares
    (:mod:`mmprune.adapters.families`)."""
    return bool(prediction_pattern().search(name))


def is_two_stage(model) -> bool:
    """A two-stage detector (an RPN feeding RoI heads): its tensor forward
    needs image meta and runs the RPN's proposal selection."""
    family = family_of(model)
    return family is not None and family.two_stage


def tensor_forward(model: nn.Module,
                   input_size: Tuple[int, int] = (128, 128),
                   batch: int = 1,
                   seed: int = 0) -> Tuple[Callable, List[torch.Tensor]]:
    """``(forward_fn, [x])`` running ``model``'s tensor forward.

    For mmdet detectors this is ``model(x, data_samples, mode='tensor')``;
    two-stage detectors need data samples with image meta for the RPN. Any
    other ``nn.Module`` is called as ``model(x)``.
    """
    x, samples = dummy_batch(model, input_size, batch, seed)
    if _is_detector(model):
        return (lambda t: model(t, samples, mode='tensor')), [x]
    return (lambda t: model(t)), [x]


def _is_detector(model) -> bool:
    try:
        from mmdet.models.detectors import BaseDetector
    except ImportError:  # plain torch model
        return False
    return isinstance(model, BaseDetector)


def dummy_batch(model: nn.Module,
                input_size: Tuple[int, int] = (128, 128),
                batch: int = 1,
                seed: int = 0):
    """``(x, data_samples)``: a seeded random (N, 3, H, W) batch on the
    model's device, and for two-stage detectors data samples with the
    image meta their RPN needs (else None)."""
    h, w = input_size
    gen = torch.Generator().manual_seed(seed)
    device = next((p.device for p in model.parameters()), torch.device('cpu'))
    x = torch.rand(batch, 3, h, w, generator=gen).to(device)
    samples = None
    if _is_detector(model) and is_two_stage(model):
        from mmdet.structures import DetDataSample
        meta = dict(
            img_shape=(h, w),
            ori_shape=(h, w),
            pad_shape=(h, w),
            batch_input_shape=(h, w),
            scale_factor=(1.0, 1.0))
        samples = [DetDataSample(metainfo=meta) for _ in range(batch)]
    return x, samples


def flatten_tensors(out) -> List[torch.Tensor]:
    """The tensors of a (nested tuple/list) tensor-forward output, in order:
    e.g. YOLOX's ``(cls[3], box[3], obj[3])`` → 9 tensors."""
    flat: List[torch.Tensor] = []

    def walk(o):
        if isinstance(o, torch.Tensor):
            flat.append(o)
        elif isinstance(o, (list, tuple)):
            for item in o:
                walk(item)

    walk(out)
    return flat


@torch.no_grad()
def tensor_outputs(model: nn.Module,
                   input_size: Tuple[int, int] = (128, 128),
                   batch: int = 1,
                   seed: int = 0) -> List[torch.Tensor]:
    """The flattened tensor-forward outputs of ``model`` (in eval mode) on a
    seeded random batch: the same input for the same ``seed``."""
    was_training = model.training
    model.eval()
    try:
        fn, x = tensor_forward(model, input_size, batch, seed)
        return flatten_tensors(fn(*x))
    finally:
        model.train(was_training)


def output_diff(a: List[torch.Tensor], b: List[torch.Tensor]) -> dict:
    """Max abs difference of two output lists, absolute and relative to the
    largest magnitude of ``a`` (the "output scale")."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise ValueError(
            f'outputs differ in structure: {[tuple(x.shape) for x in a]} vs '
            f'{[tuple(y.shape) for y in b]}')
    diff = max(
        (float((x.float() - y.float()).abs().max()) for x, y in zip(a, b)),
        default=0.0)
    scale = max((float(x.abs().max()) for x in a), default=0.0)
    return dict(
        max_abs_diff=diff,
        output_scale=scale,
        max_rel_diff=diff / max(scale, 1e-12))


def set_roi_width(model: nn.Module, roi_layer: str, width: int) -> None:
    """After surgery, a RoI layer (``...roi_layers.i``) reads ``width``
    channels: mmdet's RoI extractors allocate their (K, C, 7, 7) output
    from a static ``out_channels``, so the extractor's must follow."""
    parent = roi_layer.rsplit('.roi_layers.', 1)[0]
    ext = dict(model.named_modules()).get(parent)
    if ext is not None and hasattr(ext, 'out_channels'):
        ext.out_channels = width


def sync_static_attributes(model: nn.Module) -> None:
    """Refresh width attributes that wrappers copy from their conv after
    surgery (mmcv ``ConvModule.in_channels/out_channels``), so ``repr`` and
    code reading them stay true. Heads' ``feat_channels`` are left as built:
    no forward of mmdet 3.3 reads them."""
    for mod in model.modules():
        conv = getattr(mod, 'conv', None)
        if isinstance(conv, nn.modules.conv._ConvNd) and mod is not conv:
            if hasattr(mod, 'in_channels'):
                mod.in_channels = conv.in_channels
            if hasattr(mod, 'out_channels'):
                mod.out_channels = conv.out_channels
