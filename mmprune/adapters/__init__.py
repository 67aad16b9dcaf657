from .detector import (fixed_output_module, sync_static_attributes,
                       tensor_forward)

__all__ = ['fixed_output_module', 'sync_static_attributes', 'tensor_forward']
