"""Which torch ops keep channels aligned, and how.

The tracer intercepts every torch function the detector's tensor forward
calls (``TorchFunctionMode``). Ops are matched by ``func.__name__`` and sorted
into the families below. Anything not listed is *unknown*: the channels it
reads are pinned (never pruned), which is always safe. Adding an op here is
how the analysis learns a new architecture; no per-model table exists.
"""

# Channel-wise ops that map 0 -> 0, so a pruned (zeroed) channel stays zero.
CHANNELWISE_ZERO = frozenset({
    'relu',
    'relu_',
    'relu6',
    'silu',
    'silu_',
    'leaky_relu',
    'leaky_relu_',
    'hardswish',
    'hardswish_',
    'gelu',
    'elu',
    'elu_',
    'selu',
    'celu',
    'mish',
    'tanh',
    'tanh_',
    'hardtanh',
    'hardtanh_',
    'dropout',
    'dropout_',
    'dropout2d',
    'feature_dropout',
    'alpha_dropout',
    'interpolate',
    'upsample',
    'upsample_nearest',
    'upsample_bilinear',
    'max_pool1d',
    'max_pool2d',
    '_max_pool2d',
    'max_pool2d_with_indices',
    'max_pool3d',
    'avg_pool1d',
    'avg_pool2d',
    'avg_pool3d',
    'adaptive_avg_pool1d',
    'adaptive_avg_pool2d',
    'adaptive_max_pool2d',
    '_adaptive_max_pool2d',
    'adaptive_max_pool2d_with_indices',
    'contiguous',
    'clone',
    'detach',
    'float',
    'half',
    'double',
    'bfloat16',
    'to',
    'type',
    'type_as',
    'cpu',
    'cuda',
    'abs',
    'neg',
    '__neg__',
    'requires_grad_',
    'pixel_shuffle_none',
})

# Channel-wise ops with f(0) != 0 (or not guaranteed): channels stay aligned,
# but a writer cannot be scattered back to its stream after them.
CHANNELWISE_OTHER = frozenset({
    'sigmoid',
    'sigmoid_',
    'hardsigmoid',
    'exp',
    'exp_',
    'log',
    'softplus',
    'sqrt',
    'rsqrt',
    'reciprocal',
    'clamp',
    'clamp_',
    'clamp_min',
    'clamp_max',
    'pow',
    '__pow__',
    'square',
    'sign',
    'floor',
    'ceil',
    'round',
    'logsigmoid',
    'erf',
})

# Element-wise binary ops (broadcasting). ``ADDITIVE`` ones create residual
# sums, which the residual mode decides about.
ADDITIVE = frozenset({
    'add',
    'add_',
    '__add__',
    '__radd__',
    '__iadd__',
    'sub',
    'sub_',
    '__sub__',
    '__rsub__',
    '__isub__',
    'rsub',
})
MULTIPLICATIVE = frozenset({
    'mul',
    'mul_',
    '__mul__',
    '__rmul__',
    '__imul__',
    'div',
    'div_',
    '__truediv__',
    '__rtruediv__',
    '__itruediv__',
    'true_divide',
    'maximum',
    'minimum',
})

CONCAT = frozenset({'cat', 'concat', 'concatenate'})
SPLIT = frozenset(
    {'split', 'chunk', 'split_with_sizes', 'tensor_split', 'unbind', 'narrow'})
RESHAPE = frozenset({'view', 'reshape', 'flatten', 'view_as', 'reshape_as'})
REDUCE = frozenset({'mean', 'sum', 'amax', 'amin', 'max', 'min'})

# Calls that read metadata only; never touch labels. (``numpy``, ``tolist``
# and ``item`` are not here: values that leave torch can come back as a
# constant mixing every channel, so the channels they read are pinned.)
IGNORED = frozenset({
    '__get__',
    '__set__',
    'size',
    'dim',
    'numel',
    'ndimension',
    'is_contiguous',
    '__len__',
    '__bool__',
    'data_ptr',
    'element_size',
    'get_device',
    '__repr__',
    '__format__',
    'stride',
    'is_floating_point',
    '__hash__',
    '__eq__',
    '__ne__',
    'equal',
    '__iter__',
    '__index__',
    '__int__',
    '__float__',
    'has_names',
    'storage_offset',
    'new_zeros',
    'new_ones',
    'new_full',
    'new_empty',
    'new_tensor',
    'zeros_like',
    'ones_like',
    'empty_like',
    'full_like',
    'rand_like',
    'randn_like',
    'backward',
})
