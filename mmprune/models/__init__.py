from .prunable_detector import (PrunableMixin, build_prunable_detector,
                                make_prunable)

__all__ = ['PrunableMixin', 'build_prunable_detector', 'make_prunable']
