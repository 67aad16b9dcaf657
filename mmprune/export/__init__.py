"""Deployment export: compact checkpoint, ONNX, onnxruntime check."""
from .checkpoint import (ExportError, build_detector, checkpoint_structure,
                         compact_checkpoint, load_pruned_detector,
                         read_checkpoint, select_weights)
from .exporter import export_detector
from .onnx import (TensorForward, VerificationError, export_onnx,
                   preprocess_info, random_batch, verify_onnx)

__all__ = [
    'ExportError', 'VerificationError', 'TensorForward', 'build_detector',
    'checkpoint_structure', 'compact_checkpoint', 'export_detector',
    'export_onnx', 'load_pruned_detector', 'preprocess_info', 'random_batch',
    'read_checkpoint', 'select_weights', 'verify_onnx'
]
