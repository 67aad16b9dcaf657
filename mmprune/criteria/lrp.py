"""LRP-alpha-beta for small ReLU CNNs, as an autograd "relevance backward".

Paper: Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier
Decisions by Layer-Wise Relevance Propagation", PLoS ONE 2015,
DOI 10.1371/journal.pone.0130140; rules as used by GCP-FRS (Aketi et al.,
arXiv 2002.09958, code purdue-nrl/Gradual-Channel-Pruning-using-FRS,
docs/methods.md §4(a)).

How: the model's forward runs under a ``TorchFunctionMode`` that swaps every
supported op for an autograd Function whose forward is the op itself and
whose backward *is the relevance rule*. Seeding ``output.backward(R)`` with
the output relevance then leaves, as the "gradient" of every intermediate
tensor, its relevance. Rules (bias ignored, ``W+ = max(W, 1e-9)``,
``W- = min(W, -1e-9)``, ``z`` stabilised by ``eps * sign(z)``):

* conv2d (groups=1) / linear: ``R_in = x * [g(alpha R / z+; W+) +
  g(-beta R / z-; W-)]`` with ``z+- = f(x; W+-)`` and ``g`` the transposed
  op (computed with ``autograd.grad``);
* batch_norm, relu, dropout (eval): relevance passes through unchanged;
* ``a + b`` (residual add, same shapes): ``R_a = a R / y``, ``R_b = b R / y``;
* avg_pool2d / adaptive_avg_pool2d: ``R_in = x * up(R / y)``;
* max_pool2d, view/flatten/reshape, cat/split/chunk, slicing, nearest
  interpolate: ordinary autograd routing, which conserves relevance (max
  pool: the winner takes it all).

Anything else raises ``NotImplementedError`` naming the op and the module
that called it (e.g. SiLU: use ``relevance='grad_x_input'``); so do leaf
modules other than Conv2d/Linear/BatchNorm/ReLU/pools/Flatten/Dropout/
Identity. In-place ops (``out += x``, ``relu(inplace=True)``) are run out of
place: code that relies on an in-place side effect while ignoring the
returned tensor is not supported.

Conservation (sum of relevance is the same at every layer) holds exactly
when inputs to conv/linear are non-negative (post-ReLU) and no ``z``
vanishes; ``alpha - beta = 1`` is required for it.
"""
from contextlib import contextmanager
from typing import Callable, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..graph import op_table

# leaf module types the LRP pass understands
_LEAF_TYPES = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.ReLU,
               nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
               nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)

_ROUTING = frozenset({
    'view',
    'reshape',
    'flatten',
    'view_as',
    'reshape_as',
    '__getitem__',
    'cat',
    'concat',
    'concatenate',
    'split',
    'chunk',
    'split_with_sizes',
    'unbind',
    'narrow',
    'squeeze',
    'unsqueeze',
    'contiguous',
    'clone',
    'max_pool2d',
    '_max_pool2d',
    'max_pool2d_with_indices',
    'adaptive_max_pool2d',
    '_adaptive_max_pool2d',
    'adaptive_max_pool2d_with_indices',
    'permute',
    'transpose',
    't',
    'register_hook',
    'requires_grad_',
    'detach',
    'float',
    'to',
    'type_as',
})
_THROUGH = frozenset({
    'batch_norm', 'relu', 'relu_', 'dropout', 'dropout_', 'dropout2d',
    'feature_dropout'
})
_ADD = frozenset({'add', 'add_', '__add__', '__radd__', '__iadd__'})
_POOL = frozenset({'avg_pool2d', 'adaptive_avg_pool2d'})
_LINEAR = frozenset({'conv2d', 'linear'})


def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


class _Through(torch.autograd.Function):
    """Forward ``fn(x)``; relevance passes through unchanged."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, r):
        return r, None


class _ZRule(torch.autograd.Function):
    """Forward ``fn(x)`` (a positive linear map, e.g. average pooling);
    backward ``x * fn^T(R / y)`` (LRP-0)."""

    @staticmethod
    def forward(ctx, x, fn, eps):
        ctx.save_for_backward(x)
        ctx.fn, ctx.eps = fn, eps
        return fn(x)

    @staticmethod
    def backward(ctx, r):
        x, = ctx.saved_tensors
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            y = ctx.fn(xd)
            g, = torch.autograd.grad(y, xd, r / _stab(y.detach(), ctx.eps))
        return x * g, None, None


class _AlphaBeta(torch.autograd.Function):
    """Forward ``fn(x, W, b)``; backward the alpha-beta rule with ``lin(x,
    W)`` (the same op without bias)."""

    @staticmethod
    def forward(ctx, x, fn, lin, weight, alpha, beta, eps):
        ctx.save_for_backward(x, weight)
        ctx.lin, ctx.alpha, ctx.beta, ctx.eps = lin, alpha, beta, eps
        return fn(x)

    @staticmethod
    def backward(ctx, r):
        x, w = ctx.saved_tensors
        wp, wn = w.clamp(min=1e-9), w.clamp(max=-1e-9)
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            zp = ctx.lin(xd, wp)
            gp, = torch.autograd.grad(
                zp, xd, ctx.alpha * r / _stab(zp.detach(), ctx.eps))
            xd = x.detach().requires_grad_(True)
            zn = ctx.lin(xd, wn)
            gn, = torch.autograd.grad(
                zn, xd, -ctx.beta * r / _stab(zn.detach(), ctx.eps))
        return x * (gp + gn), None, None, None, None, None, None


class _Add(torch.autograd.Function):
    """``y = a + b``; ``R_a = a R / y``, ``R_b = b R / y``."""

    @staticmethod
    def forward(ctx, a, b, eps):
        ctx.save_for_backward(a, b)
        ctx.eps = eps
        return a + b

    @staticmethod
    def backward(ctx, r):
        a, b = ctx.saved_tensors
        s = r / _stab((a + b), ctx.eps)
        return a * s, b * s, None


_CONV_ARGS = ('input', 'weight', 'bias', 'stride', 'padding', 'dilation',
              'groups')
_LINEAR_ARGS = ('input', 'weight', 'bias')


class _LRPMode(TorchFunctionMode):

    def __init__(self, alpha, beta, eps, where: Callable[[], str]):
        super().__init__()
        self.alpha, self.beta, self.eps = alpha, beta, eps
        self.where = where

    def _unsupported(self, name, why=''):
        raise NotImplementedError(
            f'LRP relevance does not support op {name!r} in module '
            f'{self.where()!r}{why}; it covers ReLU CNNs of conv2d/linear/'
            f'batch_norm/relu/pooling/residual add (use relevance='
            f"'grad_x_input' for other models)")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', str(func))
        if name in op_table.IGNORED or name in _ROUTING:
            return func(*args, **kwargs)
        if name == 'interpolate':
            if kwargs.get('mode', 'nearest') != 'nearest':
                self._unsupported(name, ' (only mode="nearest")')
            return func(*args, **kwargs)
        if name in _THROUGH:
            if name.startswith('dropout') or name == 'feature_dropout':
                training = kwargs.get('training',
                                      args[2] if len(args) > 2 else True)
                if training:
                    self._unsupported(name, ' (in training mode)')
            kw = {k: v for k, v in kwargs.items() if k != 'inplace'}
            rest = args[1:]
            if name.startswith('relu'):
                fn = (lambda t: F.relu(t))
            else:
                fn = (lambda t: func(t, *rest, **kw))
            return _Through.apply(args[0], fn)
        if name in _ADD:
            a, b = args[0], args[1]
            if kwargs.get(
                    'alpha',
                    1) != 1 or not (isinstance(a, torch.Tensor) and isinstance(
                        b, torch.Tensor) and a.shape == b.shape):
                self._unsupported(name, ' (only tensor + tensor of one '
                                  'shape)')
            return _Add.apply(a, b, self.eps)
        if name in _POOL:
            rest = args[1:]
            return _ZRule.apply(args[0], lambda t: func(t, *rest, **kwargs),
                                self.eps)
        if name in _LINEAR:
            keys = _CONV_ARGS if name == 'conv2d' else _LINEAR_ARGS
            p = dict(zip(keys, args))
            p.update(kwargs)
            if p.get('groups', 1) != 1:
                self._unsupported(name, ' (grouped/depthwise conv)')
            x, w = p.pop('input'), p.pop('weight')
            bias = p.pop('bias', None)

            def full(t, func=func, w=w, bias=bias, p=p):
                return func(t, w, bias, **p)

            def lin(t, wt, func=func, p=p):
                return func(t, wt, None, **p)

            return _AlphaBeta.apply(x, full, lin, w.detach(), self.alpha,
                                    self.beta, self.eps)
        self._unsupported(name)


def check_modules(model: nn.Module) -> None:
    """Raise ``NotImplementedError`` naming the first unsupported leaf."""
    for name, m in model.named_modules():
        if next(m.children(), None) is not None:
            continue  # containers: their functional ops are checked live
        if not isinstance(m, _LEAF_TYPES):
            raise NotImplementedError(
                f'LRP relevance does not support module {name!r} '
                f'({type(m).__name__}); use relevance=\'grad_x_input\'')
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise NotImplementedError(
                f'LRP relevance does not support grouped/depthwise conv '
                f'{name!r} (groups={m.groups})')


@contextmanager
def lrp_forward(model: nn.Module,
                alpha: float = 2.0,
                beta: float = 1.0,
                eps: float = 1e-9):
    """Context in which ``model(x)`` builds a relevance graph: calling
    ``out.backward(R_out)`` afterwards propagates relevance, and a tensor
    hook on any intermediate output receives that tensor's relevance.
    The model runs in eval mode inside the context."""
    check_modules(model)
    stack: List[str] = []
    names = {m: n for n, m in model.named_modules()}
    handles = []

    def push(mod, inp):
        stack.append(names[mod])

    def pop(mod, inp, out):
        stack.pop()  # returns None: the output is left alone

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(push))
        handles.append(m.register_forward_hook(pop))
    was_training = model.training
    model.eval()
    try:
        with _LRPMode(
                alpha, beta, eps, lambda: (stack[-1] or '<root>')
                if stack else '<top level>'):
            yield
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
