from .compare import compare_with_reference, reference_outputs
from .detector import (dummy_batch, fixed_output_module, flatten_tensors,
                       is_two_stage, output_diff, sync_static_attributes,
                       tensor_forward, tensor_outputs)
from .families import FAMILIES, DetectorFamily, family_of, register_family
from .hooks import no_augmentation_epochs
from .stages import default_stage, stage_of

__all__ = [
    'fixed_output_module', 'flatten_tensors', 'output_diff',
    'sync_static_attributes', 'tensor_forward', 'tensor_outputs',
    'dummy_batch', 'reference_outputs', 'compare_with_reference',
    'is_two_stage', 'no_augmentation_epochs', 'default_stage', 'stage_of',
    'FAMILIES', 'DetectorFamily', 'family_of', 'register_family'
]
