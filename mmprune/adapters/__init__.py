from .detector import (fixed_output_module, flatten_tensors, output_diff,
                       sync_static_attributes, tensor_forward, tensor_outputs)

__all__ = [
    'fixed_output_module', 'flatten_tensors', 'output_diff',
    'sync_static_attributes', 'tensor_forward', 'tensor_outputs'
]
