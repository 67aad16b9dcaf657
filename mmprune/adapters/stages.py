"""How mmdet detectors name their stages: two granularities, both here.

Module and group names follow mmdet's attribute layout
(``backbone.stage2.1.main_conv.conv``, ``neck.reduce_layers.0``,
``bbox_head.multi_level_cls_convs.0.0.conv``). Two consumers group them:

* :func:`default_stage`, coarse: ``backbone.<child>``, ``neck``, ``head``.
  BPC shares its calibration factors within such a stage (the paper's
  backbone stages, neck, head; ``criteria/blended.py``);
* :func:`stage_of`, the first two name components: the rows of the
  per-stage channels/FLOPs table in the training log
  (``utils/report.py``, ``utils/plots.py``), finer in the neck and heads.
"""


def default_stage(name: str) -> str:
    """BPC's stage of a group name: ``backbone.<child>`` (e.g.
    ``backbone.stage2``, ``backbone.layer3``, ``backbone.stem``),
    ``neck``, ``head`` (any top-level name containing ``head``), else the
    first name component (toy nets)."""
    parts = name.split('.')
    if parts[0] == 'backbone' and len(parts) > 1:
        return 'backbone.' + parts[1]
    if parts[0] == 'neck':
        return 'neck'
    if 'head' in parts[0]:
        return 'head'
    return parts[0]


def stage_of(name: str) -> str:
    """``backbone.stage2.1.main_conv.conv`` -> ``backbone.stage2``."""
    parts = name.split('.')
    return '.'.join(parts[:2]) if len(parts) > 2 else parts[0]
