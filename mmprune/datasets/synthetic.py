# Copyright (c) mmprune contributors. All rights reserved.
"""Deterministic synthetic detection data in COCO and Pascal VOC layouts.

Pruning experiments need a detection dataset that is small enough to
generate on the fly on a CPU-only machine, needs no download, and is still
hard enough that a detector's *capacity* matters: if a tiny pruned model
scores as well as the dense one, the benchmark cannot tell pruning methods
apart. This module draws such a dataset procedurally.

What an image contains
    * A procedural background: a linear or radial colour gradient, multi-
      octave value noise ("perlin-like"), or a low-contrast stripe/checker
      texture, usually under an uneven illumination field, sometimes crossed
      by a field of thin random lines.
    * Clutter that is *not* annotated: straight strokes, arcs, random-walk
      scribbles and irregular textured blobs. Blobs share the objects'
      textures so that "textured" does not mean "object".
    * 2-12 objects from :data:`SYNTH_CLASSES` (filled shapes: circle,
      triangle, star, crescent, ...), each with a random size from 8 px to
      half the image side (log-uniform, so small objects are common), a
      random rotation and a mild aspect jitter, and a random texture
      (solid, stripes, checker, value noise, gradient, dots). Each class has
      a weak preferred hue and texture, but most colours are drawn
      uniformly, so a detector must learn shape, not colour.
    * Objects are painted in order and may occlude earlier ones. An owner
      map records which object each pixel shows; the annotated box is the
      extent of the *visible* pixels, the segmentation polygon is the
      outline of the visible pixels, and an object that ends up more than
      70% hidden (by later objects or the image border) is dropped.
    * A few thin strokes over everything, sensor noise, sometimes a slight
      blur or a grey-scale image, then JPEG compression.

Determinism
    Every image is a pure function of ``(seed, split, index, size,
    num_classes)``: its random generator is
    ``Generator(PCG64(SeedSequence([seed, split_code, index])))``. Images are
    therefore independent of generation order and of how many images the
    other split has, and the first ``n`` train images are the same for any
    ``num_train >= n``. JSON is written with sorted keys and fixed
    separators, XML from a fixed template, JPEGs with fixed quality and
    chroma subsampling and no EXIF or timestamps; no file contains an
    absolute path, so the same arguments give byte-identical trees in any
    directory (with the same Pillow/OpenCV builds).

Atomic output
    Everything is written into a temporary directory beside ``out_dir`` and
    renamed into place at the end, so an interrupted run never leaves a
    half-written dataset behind.

Loading with mmdet 3.x
    COCO::

        dict(type='CocoDataset', data_root=f'{out_dir}/coco/',
             ann_file='annotations/instances_train2017.json',
             data_prefix=dict(img='train2017/'),
             metainfo=dict(classes=SYNTH_CLASSES[:num_classes]))

    VOC (``XMLDataset`` asserts that ``metainfo['classes']`` is set; passing
    it replaces ``VOCDataset.METAINFO``'s 20 Pascal classes, and objects
    whose name is not in the list are silently skipped)::

        dict(type='VOCDataset', data_root=f'{out_dir}/VOCdevkit/',
             ann_file='VOC2007/ImageSets/Main/trainval.txt',  # or test.txt
             data_prefix=dict(sub_data_root='VOC2007/'),
             metainfo=dict(classes=SYNTH_CLASSES[:num_classes]))

    ``VOCDataset`` sets ``metainfo['dataset_type'] = 'VOC2007'`` itself from
    ``sub_data_root``; ``VOCMetric`` then uses the 11-point AP of VOC2007 and
    labels its printed per-class table with the *Pascal* class names. The
    numbers are right (they are indexed by label), only the row names in the
    log are Pascal's.
"""
import colorsys
import io
import json
import math
import os
import os.path as osp
import shutil
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ['SYNTH_CLASSES', 'make_synthetic_dataset']

#: The shape classes, in label order. A dataset with ``num_classes=K`` uses
#: the first ``K`` names; COCO category ids are ``1..K`` in this order.
SYNTH_CLASSES = ('circle', 'triangle', 'square', 'pentagon', 'star', 'cross',
                 'ring', 'ellipse', 'arrow', 'crescent', 'hexagon', 'heart',
                 'diamond', 'trapezoid', 'semicircle', 'chevron', 'lshape',
                 'teardrop', 'hourglass', 'frame')

MIN_CLASSES = 10
MAX_CLASSES = len(SYNTH_CLASSES)
MIN_SIZE = 64
# Larger images would work, but are almost certainly a typo (and slow).
MAX_SIZE = 2048
FORMATS = ('coco', 'voc')

# Bump when the drawing code changes, so caches keyed on the metadata file
# written next to the data notice that old files are stale.
GENERATOR_VERSION = 1

_SPLITS = (('train', 0), ('val', 1))  # (name, code mixed into the seed)
_COCO_IMG_DIRS = {'train': 'train2017', 'val': 'val2017'}
_VOC_SETS = {'train': 'trainval', 'val': 'test'}

_MIN_OBJECTS, _MAX_OBJECTS = 2, 12
# Difficulty profiles. 'hard' is the benchmark set described above (the
# generator's original behaviour, byte-identical for a given seed). 'easy'
# is for short CPU budgets such as ``make demo``: no clutter, no grey-scale,
# blur or line fields, 1-6 objects of 1/8 to 1/2 of the image side. It has
# the same classes, textures and occlusion rules, so a detector still has to
# learn shapes; it just gets there in minutes instead of hours.
DIFFICULTIES = ('hard', 'easy')
_EASY_OBJECTS = (1, 6)
_EASY_SIZE_FRAC = (1 / 8, 1 / 2)
_MIN_OBJECT_PX = 8
_MAX_OCCLUDED = 0.7  # drop an object when more than this fraction is hidden
# Placement rejects positions that would leave an earlier object with less
# than this visible fraction; without it most dropped objects would remain
# as unannotated fragments (label noise rather than difficulty).
_MIN_KEEP_ON_PLACE = 0.35
_PLACEMENT_TRIES = 8
_MIN_BOX_SIDE = 3  # visible boxes thinner than this are not learnable
_SUPERSAMPLE = 4  # anti-aliasing factor for shape masks
_JPEG_QUALITY = 90
_TEXTURES = ('solid', 'stripes', 'checker', 'noise', 'gradient', 'dots')


class SyntheticArgumentError(ValueError):
    """A bad argument to :func:`make_synthetic_dataset`.

    Args:
        argument (str): Name of the offending argument, so that a CLI can map
            it to its own flag.
        message (str): Human-readable reason; it starts with ``argument``.
    """

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


# --------------------------------------------------------------------------
# Shapes: each builder returns [(polygon (N, 2) in unit coords, filled)].
# Unfilled polygons are holes punched after the filled ones (ring, frame,
# crescent). Parameters are jittered per instance so that a class is a family
# of shapes rather than one template.
# --------------------------------------------------------------------------
def _arc(n: int,
         start: float = 0.0,
         stop: float = 2 * math.pi,
         radius: float = 1.0,
         center=(0.0, 0.0)) -> np.ndarray:
    t = np.linspace(start, stop, n, endpoint=False)
    return np.stack(
        [center[0] + radius * np.cos(t), center[1] + radius * np.sin(t)],
        axis=1)


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    return _arc(n, phase, phase + 2 * math.pi)


def _shape_circle(rng):
    return [(_arc(48), True)]


def _shape_triangle(rng):
    return [(_regular(3, math.pi / 2), True)]


def _shape_square(rng):
    return [(_regular(4, math.pi / 4), True)]


def _shape_pentagon(rng):
    return [(_regular(5, math.pi / 2), True)]


def _shape_star(rng):
    r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
    pts = _regular(10, math.pi / 2) * r[:, None]
    return [(pts, True)]


def _shape_cross(rng):
    a = rng.uniform(0.28, 0.38)  # half-width of the arms
    pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1),
           (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
    return [(np.array(pts, float), True)]


def _shape_ring(rng):
    return [(_arc(48), True), (_arc(40, radius=rng.uniform(0.45,
                                                           0.65)), False)]


def _shape_ellipse(rng):
    # Elongation comes from the per-class aspect range (see _ASPECT).
    return [(_arc(48), True)]


def _shape_arrow(rng):
    w = rng.uniform(0.14, 0.24)  # shaft half-width
    h = rng.uniform(0.4, 0.6)  # head length
    hw = rng.uniform(0.45, 0.65)  # head half-width
    pts = [(-1, -w), (1 - h, -w), (1 - h, -hw), (1, 0), (1 - h, hw),
           (1 - h, w), (-1, w)]
    return [(np.array(pts, float), True)]


def _shape_crescent(rng):
    d = rng.uniform(0.35, 0.55)
    return [(_arc(48), True),
            (_arc(48, radius=rng.uniform(0.8, 0.95), center=(d, 0.0)), False)]


def _shape_hexagon(rng):
    return [(_regular(6), True)]


def _shape_heart(rng):
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x = 16 * np.sin(t)**3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) -
          np.cos(4 * t))  # image y grows downwards
    return [(np.stack([x, y], axis=1) / 16.0, True)]


def _shape_diamond(rng):
    w = rng.uniform(0.45, 0.62)
    return [(np.array([(0, -1), (w, 0), (0, 1), (-w, 0)], float), True)]


def _shape_trapezoid(rng):
    t = rng.uniform(0.3, 0.55)  # half-length of the short side
    h = rng.uniform(0.5, 0.7)
    return [(np.array([(-1, h), (1, h), (t, -h), (-t, -h)], float), True)]


def _shape_semicircle(rng):
    pts = _arc(33, 0.0, math.pi * (1 + 1 / 32))  # includes both ends
    pts[:, 1] -= 0.45  # centre the half-disc on its bounding box
    return [(pts, True)]


def _shape_chevron(rng):
    t = rng.uniform(0.35, 0.55)  # arm thickness
    pts = [(-1, -0.5), (0, 0.5 - t), (1, -0.5), (1, -0.5 + t), (0, 0.5),
           (-1, -0.5 + t)]
    return [(np.array(pts, float), True)]


def _shape_lshape(rng):
    t = 2 * rng.uniform(0.28, 0.4)  # arm width (the shape spans 2 units)
    pts = [(-1, -1), (-1 + t, -1), (-1 + t, 1 - t), (1, 1 - t), (1, 1),
           (-1, 1)]
    return [(np.array(pts, float), True)]


def _shape_teardrop(rng):
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    m = rng.uniform(1.0, 1.6)
    x = np.sin(t) * np.abs(np.sin(t / 2))**m
    y = np.cos(t)
    return [(np.stack([x, y], axis=1), True)]


def _shape_hourglass(rng):
    w = rng.uniform(0.1, 0.22)  # waist half-width
    pts = [(-0.8, -1), (0.8, -1), (w, 0), (0.8, 1), (-0.8, 1), (-w, 0)]
    return [(np.array(pts, float), True)]


def _shape_frame(rng):
    t = rng.uniform(0.22, 0.35)  # border thickness
    outer = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float)
    return [(outer, True), (outer * (1 - t), False)]


_SHAPES = {name: globals()[f'_shape_{name}'] for name in SYNTH_CLASSES}

# Aspect-ratio jitter (x/y stretch before rotation). Shapes whose identity
# is their isotropy get a narrow range so that e.g. a stretched circle never
# looks like an ellipse; the ellipse is defined by its elongation.
_DEFAULT_ASPECT = (0.8, 1.25)
_ASPECT = {
    'circle': (0.93, 1.07),
    'square': (0.9, 1.11),
    'pentagon': (0.9, 1.11),
    'hexagon': (0.9, 1.11),
    'star': (0.9, 1.11),
    'ring': (0.9, 1.11),
    'ellipse': (0.4, 0.65),
    'frame': (0.9, 1.11),
}


# --------------------------------------------------------------------------
# Pixel helpers. All float images are float32 RGB in [0, 1].
# --------------------------------------------------------------------------
def _random_colour(rng, hue: Optional[float] = None) -> np.ndarray:
    h = rng.uniform() if hue is None else hue % 1.0
    s = rng.uniform(0.15, 1.0)
    v = rng.uniform(0.2, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def _value_noise(rng, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1]: random lattice, smoothstep-bilinear.

    Done with gathers and element-wise maths rather than a resize or a
    matrix product, so the result never depends on a BLAS build or its
    thread count.
    """
    cell = max(float(cell), 1.0)
    # +3: one cell for the random phase, one for the right-hand neighbour.
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    grid = rng.uniform(size=(gh, gw)).astype(np.float32)
    ys = np.arange(h, dtype=np.float32) / cell + rng.uniform()
    xs = np.arange(w, dtype=np.float32) / cell + rng.uniform()
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = ys - y0, xs - x0
    fy = (fy * fy * (3 - 2 * fy))[:, None]
    fx = (fx * fx * (3 - 2 * fx))[None, :]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    top = g00 + (g01 - g00) * fx
    bottom = g10 + (g11 - g10) * fx
    return top + (bottom - top) * fy


def _fractal_noise(rng, h: int, w: int, base_cell: float) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    total = 0.0
    for octave, amp in enumerate((0.55, 0.3, 0.15)):
        out += amp * _value_noise(rng, h, w, base_cell / 2.5**octave)
        total += amp
    return out / total


def _ramp(rng, h: int, w: int) -> np.ndarray:
    """A linear ramp in [0, 1] along a random direction."""
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * math.cos(theta) + yy * math.sin(theta)
    t -= t.min()
    return t / max(float(t.max()), 1e-6)


def _rotated_coords(rng, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    theta = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = math.cos(theta), math.sin(theta)
    return xx * c + yy * s, -xx * s + yy * c


def _lerp(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> np.ndarray:
    return c1 + (c2 - c1) * t[..., None]


def _lerp_img(img: np.ndarray, colour: np.ndarray,
              t: np.ndarray) -> np.ndarray:
    return img + (colour - img) * t[..., None]


def _texture(rng, h: int, w: int, kind: str, c1: np.ndarray, c2: np.ndarray,
             scale: float) -> np.ndarray:
    """Fill an (h, w, 3) patch with a two-colour texture.

    ``scale`` is the object's size in pixels; pattern periods follow it so a
    texture stays visible on small objects and is not a uniform blur on
    large ones.
    """
    if kind == 'solid':
        return np.broadcast_to(c1, (h, w, 3)).astype(np.float32)
    if kind == 'stripes':
        u, _ = _rotated_coords(rng, h, w)
        period = rng.uniform(3.0, max(4.0, scale / 3))
        t = 0.5 + 0.5 * np.sin(2 * math.pi * u / period)
        if rng.uniform() < 0.5:
            t = (t > 0.5).astype(np.float32)  # hard-edged stripes
        return _lerp(c1, c2, t)
    if kind == 'checker':
        u, v = _rotated_coords(rng, h, w)
        period = rng.uniform(2.5, max(3.0, scale / 4))
        t = (np.floor(u / period) + np.floor(v / period)) % 2
        return _lerp(c1, c2, t.astype(np.float32))
    if kind == 'noise':
        t = _value_noise(rng, h, w, rng.uniform(2.0, max(2.5, scale / 3)))
        return _lerp(c1, c2, t)
    if kind == 'gradient':
        return _lerp(c1, c2, _ramp(rng, h, w))
    if kind == 'dots':
        u, v = _rotated_coords(rng, h, w)
        period = rng.uniform(3.0, max(4.0, scale / 3))
        t = (np.sin(2 * math.pi * u / period) *
             np.sin(2 * math.pi * v / period)) > 0.35
        return _lerp(c1, c2, t.astype(np.float32))
    raise AssertionError(f'unknown texture {kind!r}')


def _render_mask(polys: List[Tuple[np.ndarray, bool]], w: int,
                 h: int) -> np.ndarray:
    """Anti-aliased coverage (h, w) in [0, 1] of polygons in local px.

    Drawn at ``_SUPERSAMPLE``x with PIL and box-filtered down, which gives
    soft edges without any resampling filter whose output could differ
    between library versions.
    """
    ss = _SUPERSAMPLE
    canvas = Image.new('L', (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for pts, filled in polys:
        draw.polygon([(x * ss, y * ss) for x, y in pts],
                     fill=255 if filled else 0)
    big = np.asarray(canvas, dtype=np.float32)
    return big.reshape(h, ss, w, ss).mean(axis=(1, 3)) / 255.0


def _rasterize(polys, frac) -> Tuple[np.ndarray, int, int]:
    """Rasterise pixel-unit polygons centred near the origin.

    ``frac`` (2,) is a sub-pixel offset in [0, 1). Returns ``(alpha, ox,
    oy)``: ``alpha[0, 0]`` lands ``(ox, oy)`` pixels from the integer pixel
    the shape is placed at. Rendering once and then moving by whole pixels
    lets placement retry positions without redrawing.
    """
    allpts = np.concatenate([p for p, f in polys if f]) + frac
    lo = np.floor(allpts.min(axis=0)).astype(np.int64) - 1
    hi = np.ceil(allpts.max(axis=0)).astype(np.int64) + 1
    local = [(p + frac - lo, f) for p, f in polys]
    alpha = _render_mask(local, int(hi[0] - lo[0]), int(hi[1] - lo[1]))
    return alpha, int(lo[0]), int(lo[1])


def _place_shape(polys, size_px: float, aspect: float, angle: float):
    """Stretch, rotate and scale unit polygons to pixel units.

    The result is centred on its bounding box and its longer bounding-box
    side equals ``size_px``, so the sampled size is the object's box size
    (before occlusion) whatever the shape and rotation.
    """
    sx, sy = math.sqrt(aspect), 1.0 / math.sqrt(aspect)
    c, s = math.cos(angle), math.sin(angle)
    out = []
    for pts, filled in polys:
        x, y = pts[:, 0] * sx, pts[:, 1] * sy
        # Element-wise rather than ``pts @ rot.T``, like _value_noise: no
        # BLAS kernel choice can nudge a vertex across a pixel boundary.
        out.append((np.stack([x * c - y * s, x * s + y * c], axis=1), filled))
    allpts = np.concatenate([p for p, f in out if f])
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    k = size_px / float((hi - lo).max())
    mid = (lo + hi) / 2
    return [((p - mid) * k, f) for p, f in out]


def _blob_polygon(rng, radius: float) -> np.ndarray:
    """An irregular closed outline: a circle with strong low-order wobble.

    The wobble amplitude keeps blobs clearly non-circular, so they act as
    hard negatives rather than unlabelled circles.
    """
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 6):
        amp, phase = rng.uniform(0.1, 0.3), rng.uniform(0, 2 * math.pi)
        r += amp * np.cos(k * t + phase)
    r = np.clip(r, 0.25, None)
    return np.stack([np.cos(t) * r, np.sin(t) * r], axis=1) * radius


# --------------------------------------------------------------------------
# Image composition
# --------------------------------------------------------------------------
def _background(rng, size: int) -> np.ndarray:
    c1, c2 = _random_colour(rng), _random_colour(rng)
    kind = rng.choice(('gradient', 'noise', 'texture'))
    if kind == 'gradient':
        if rng.uniform() < 0.3:  # radial
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
            cx, cy = rng.uniform(0, size, 2)
            t = np.hypot(xx - cx, yy - cy)
            t /= max(float(t.max()), 1e-6)
        else:
            t = _ramp(rng, size, size)
        img = _lerp(c1, c2, t)
    elif kind == 'noise':
        t = _fractal_noise(rng, size, size, rng.uniform(size / 6, size / 2))
        img = _lerp(c1, c2, t)
        if rng.uniform() < 0.5:  # a third colour in the noise's high range
            c3 = _random_colour(rng)
            t2 = np.clip((t - 0.6) * 4, 0, 1)
            img = _lerp_img(img, c3, t2)
    else:
        # Mostly low contrast so the texture reads as background.
        c2 = c1 + (c2 - c1) * rng.uniform(0.15, 0.5)
        # (No 'dots': a dot lattice reads as a field of tiny circles.)
        tex = str(rng.choice(('stripes', 'checker', 'noise')))
        img = _texture(rng, size, size, tex, c1, c2, size / 2)
    if rng.uniform() < 0.7:  # uneven illumination
        light = _value_noise(rng, size, size, size / rng.uniform(1.0, 3.0))
        img = img * (0.65 + 0.6 * light)[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _colour_tuple(rng) -> Tuple[int, int, int]:
    return tuple(int(v) for v in _to_uint8(_random_colour(rng)))


def _draw_strokes(rng, draw: ImageDraw.ImageDraw, size: int, count: int,
                  max_width: int) -> None:
    """Unannotated lines, arcs and scribbles (clutter)."""
    for _ in range(count):
        kind = rng.choice(('line', 'arc', 'scribble'))
        colour = _colour_tuple(rng)
        width = int(rng.integers(1, max_width + 1))
        if kind == 'line':
            p = rng.uniform(-0.1 * size, 1.1 * size, 4)
            draw.line([(p[0], p[1]), (p[2], p[3])], fill=colour, width=width)
        elif kind == 'arc':
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(4, size / 4)
            a0 = rng.uniform(0, 360)
            a1 = a0 + rng.uniform(30, 200)  # never a full (circle-like) loop
            draw.arc([cx - r, cy - r, cx + r, cy + r],
                     a0,
                     a1,
                     fill=colour,
                     width=width)
        else:
            n = int(rng.integers(3, 9))
            steps = rng.normal(0, size / 12, (n, 2))
            pts = np.cumsum(steps, axis=0) + rng.uniform(0, size, 2)
            draw.line([tuple(p) for p in pts],
                      fill=colour,
                      width=width,
                      joint='curve')


def _composite(img: np.ndarray, alpha: np.ndarray, tex: np.ndarray, x0: int,
               y0: int) -> None:
    """Alpha-blend ``tex`` into ``img`` at (x0, y0), clipped to the image."""
    h, w = alpha.shape
    H, W = img.shape[:2]
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + w, W), min(y0 + h, H)
    if ix0 >= ix1 or iy0 >= iy1:
        return
    a = alpha[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0, None]
    t = tex[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    region = img[iy0:iy1, ix0:ix1]
    region += (t - region) * a


def _object_texture(rng, label: int, h: int, w: int,
                    size_px: float) -> np.ndarray:
    """A class-flavoured but mostly random texture for one object.

    Each class has a preferred hue and texture (its own colour/texture
    statistics), used only part of the time so colour alone is a weak cue.
    """
    class_hue = label / MAX_CLASSES
    hue = class_hue + rng.normal(0, 0.05) if rng.uniform() < 0.35 else None
    c1 = _random_colour(rng, hue)
    c2 = _random_colour(rng)
    weights = np.ones(len(_TEXTURES))
    weights[label % len(_TEXTURES)] += 1.5
    kind = _TEXTURES[int(
        rng.choice(len(_TEXTURES), p=weights / weights.sum()))]
    tex = _texture(rng, h, w, kind, c1, c2, size_px)
    # Soft shading across the object so flat fills are not perfectly flat.
    shade = 0.8 + 0.4 * _ramp(rng, h, w)
    return np.clip(tex * shade[..., None], 0, 1).astype(np.float32)


class _Obj:
    """Book-keeping for one painted object (pixel coords, local crop)."""

    __slots__ = ('label', 'x0', 'y0', 'mask', 'full_area', 'visible')

    def __init__(self, label, x0, y0, mask, full_area):
        self.label = label
        self.x0, self.y0 = x0, y0
        self.mask = mask  # (h, w) bool, alpha > 0.5, unclipped
        self.full_area = full_area
        self.visible = 0


def _clip_box(x0, y0, h, w, size):
    return max(x0, 0), max(y0, 0), min(x0 + w, size), min(y0 + h, size)


def _paint_objects(rng, img: np.ndarray, size: int, num_classes: int,
                   count: int, log_lo: float, log_hi: float):
    """Paint up to ``count`` objects into ``img`` (in place), sides
    log-uniform in ``[exp(log_lo), exp(log_hi)]`` px. ``owner[y, x]`` is the
    index of the object that shows at that pixel (-1: background); later
    objects occlude earlier ones. Returns ``(objs, owner)``.
    """
    owner = np.full((size, size), -1, np.int32)
    objs: List[_Obj] = []
    for _ in range(count):
        label = int(rng.integers(0, num_classes))
        name = SYNTH_CLASSES[label]
        size_px = math.exp(rng.uniform(log_lo, log_hi))
        # The random rotation makes an aspect a and 1/a equivalent.
        aspect = rng.uniform(*_ASPECT.get(name, _DEFAULT_ASPECT))
        polys = _place_shape(_SHAPES[name](rng), size_px, aspect,
                             rng.uniform(0, 2 * math.pi))
        alpha, ox, oy = _rasterize(polys, rng.uniform(0, 1, 2))
        mask = alpha > 0.5
        full_area = int(mask.sum())
        if full_area == 0:
            continue
        ah, aw = alpha.shape

        placed = None
        for _try in range(_PLACEMENT_TRIES):
            # Centres keep at least ~70% of the object inside the image.
            margin = 0.2 * size_px
            x0 = int(round(rng.uniform(margin, size - margin))) + ox
            y0 = int(round(rng.uniform(margin, size - margin))) + oy
            bx0, by0, bx1, by1 = _clip_box(x0, y0, ah, aw, size)
            m = mask[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0]
            under = owner[by0:by1, bx0:bx1][m]
            covered = np.bincount(under + 1, minlength=len(objs) + 1)[1:]
            keeps_others = all(o.visible - c >= _MIN_KEEP_ON_PLACE *
                               o.full_area for o, c in zip(objs, covered) if c)
            if m.any() and keeps_others:
                placed = (x0, y0, bx0, by0, bx1, by1, m, covered)
                break
        if placed is None:
            continue  # too crowded here: skip rather than bury others
        x0, y0, bx0, by0, bx1, by1, m, covered = placed

        tex = _object_texture(rng, label, ah, aw, size_px)
        # Keep the object distinguishable from what lies under it: if the
        # mean colours are too close, push the texture's brightness away.
        under_mean = img[by0:by1, bx0:bx1][m].mean(axis=0)
        tex_mean = tex[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0][m].mean(axis=0)
        if np.abs(under_mean - tex_mean).mean() < 0.12:
            if under_mean.mean() > 0.5:
                tex = tex * 0.45
            else:
                tex = 0.55 + 0.45 * tex
        _composite(img, alpha, tex, x0, y0)

        for o, c in zip(objs, covered):
            o.visible -= int(c)
        obj = _Obj(label, x0, y0, mask, full_area)
        obj.visible = int(m.sum())
        owner[by0:by1, bx0:bx1][m] = len(objs)
        objs.append(obj)
    return objs, owner


def _render_image(seed: int,
                  split_code: int,
                  index: int,
                  size: int,
                  num_classes: int,
                  difficulty: str = 'hard'):
    """Draw one image. Returns (uint8 HxWx3, list of annotation dicts)."""
    ss = np.random.SeedSequence([seed, split_code, index])
    rng = np.random.Generator(np.random.PCG64(ss))

    img = _background(rng, size)
    if difficulty == 'easy':
        return _render_objects_easy(rng, img, size, num_classes)

    # Clutter under the objects: PIL strokes on an 8-bit copy...
    pil = Image.fromarray(_to_uint8(img))
    draw = ImageDraw.Draw(pil)
    if rng.uniform() < 0.4:  # a field of faint random lines
        tint = img.mean(axis=(0, 1)) + rng.uniform(-0.2, 0.2, 3)
        base = tuple(int(v) for v in _to_uint8(tint))
        for _ in range(int(rng.integers(10, 40))):
            p = rng.uniform(0, size, 4)
            draw.line([(p[0], p[1]), (p[2], p[3])], fill=base, width=1)
    _draw_strokes(rng, draw, size, int(rng.integers(1, 9)), max_width=4)
    img = np.asarray(pil, dtype=np.float32) / 255.0  # a new, writable array

    # ...and textured blobs, which look like objects' material but not
    # like any class.
    for _ in range(int(rng.integers(0, 5))):
        r = rng.uniform(3, size / 10)
        alpha, ox, oy = _rasterize([(_blob_polygon(rng, r), True)],
                                   rng.uniform(0, 1, 2))
        x0 = int(rng.integers(0, size)) + ox
        y0 = int(rng.integers(0, size)) + oy
        tex = _object_texture(rng, int(rng.integers(0, MAX_CLASSES)),
                              alpha.shape[0], alpha.shape[1], 2 * r)
        _composite(img, alpha, tex, x0, y0)

    # Objects (see _paint_objects), small ones common: log-uniform sizes.
    log_lo, log_hi = math.log(_MIN_OBJECT_PX), math.log(size / 2)
    count = int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))
    objs, owner = _paint_objects(rng, img, size, num_classes, count, log_lo,
                                 log_hi)

    # A few thin strokes over everything (they do not change annotations:
    # a 1-2 px line does not hide an object's extent).
    if rng.uniform() < 0.35:
        pil = Image.fromarray(_to_uint8(img))
        _draw_strokes(
            rng,
            ImageDraw.Draw(pil),
            size,
            int(rng.integers(1, 4)),
            max_width=2)
        img = np.asarray(pil, dtype=np.float32) / 255.0

    if rng.uniform() < 0.1:  # grey-scale: colour carries no information
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    sigma = rng.uniform(0.0, 0.035)
    img = img + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    out = Image.fromarray(_to_uint8(img))
    if rng.uniform() < 0.25:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))

    anns = []
    for k, o in enumerate(objs):
        ann = _annotate(o, k, owner, size)
        if ann is not None:
            anns.append(ann)
    return np.asarray(out), anns


def _render_objects_easy(rng, img: np.ndarray, size: int, num_classes: int):
    """The 'easy' profile: objects on the plain background, then light
    sensor noise. Same shapes, textures, occlusion and annotation rules as
    the hard profile (:func:`_paint_objects`)."""
    lo, hi = (f * size for f in _EASY_SIZE_FRAC)
    count = int(rng.integers(_EASY_OBJECTS[0], _EASY_OBJECTS[1] + 1))
    objs, owner = _paint_objects(rng, img, size, num_classes, count,
                                 math.log(max(lo, _MIN_OBJECT_PX)),
                                 math.log(hi))
    img = img + rng.normal(0.0, 0.01, img.shape).astype(np.float32)
    anns = [
        a for a in (_annotate(o, k, owner, size) for k, o in enumerate(objs))
        if a is not None
    ]
    return _to_uint8(img), anns


def _annotate(o: _Obj, k: int, owner: np.ndarray, size: int):
    """Box/polygon of the visible part of object ``k``, or None to drop."""
    h, w = o.mask.shape
    bx0, by0, bx1, by1 = _clip_box(o.x0, o.y0, h, w, size)
    vis = owner[by0:by1, bx0:bx1] == k
    area = int(vis.sum())
    # Both occlusion and the image border count as hidden.
    if area < (1.0 - _MAX_OCCLUDED) * o.full_area or area == 0:
        return None
    rows = np.flatnonzero(vis.any(axis=1))
    cols = np.flatnonzero(vis.any(axis=0))
    # Inclusive pixel indices of the visible extent.
    xmin, xmax = bx0 + int(cols[0]), bx0 + int(cols[-1])
    ymin, ymax = by0 + int(rows[0]), by0 + int(rows[-1])
    if xmax - xmin + 1 < _MIN_BOX_SIDE or ymax - ymin + 1 < _MIN_BOX_SIDE:
        return None
    inside = int(o.mask[by0 - o.y0:by1 - o.y0, bx0 - o.x0:bx1 - o.x0].sum())
    return dict(
        label=o.label,
        xmin=xmin,
        ymin=ymin,
        xmax=xmax,
        ymax=ymax,
        area=area,
        truncated=int(inside < o.full_area),
        polygons=_outline(vis, bx0, by0, xmin, ymin, xmax, ymax))


def _outline(vis: np.ndarray, ox: int, oy: int, xmin, ymin, xmax,
             ymax) -> List[List[float]]:
    """COCO polygons tracing the visible pixels (box if none is usable)."""
    import cv2  # a dependency of mmcv; imported late to keep import light
    contours, _ = cv2.findContours(
        vis.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = c.reshape(-1, 2)
        if len(c) < 3:
            continue
        # Contours run through pixel indices; +0.5 puts them on pixel
        # centres, inside the [x, x + w] box in COCO's continuous coords.
        polys.append([float(v) + 0.5 for v in (c + (ox, oy)).reshape(-1)])
    if not polys:
        x0, y0, x1, y1 = xmin, ymin, xmax + 1, ymax + 1
        polys = [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]
    # Sort for a deterministic order independent of OpenCV's traversal.
    return sorted(polys)


def _encode_jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Every option that could default differently across Pillow versions is
    # pinned; Pillow writes no EXIF and no timestamp unless asked.
    Image.fromarray(arr).save(
        buf,
        format='JPEG',
        quality=_JPEG_QUALITY,
        subsampling=2,
        optimize=False,
        progressive=False)
    return buf.getvalue()


# --------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------
def _dump_json(obj) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(',', ':'),
        ensure_ascii=True).encode('ascii')


def _coco_json(images: List[dict], classes: Sequence[str]) -> bytes:
    coco_images, coco_anns = [], []
    ann_id = 1
    for img in images:
        coco_images.append(
            dict(
                id=img['id'],
                file_name=img['file_name'],
                width=img['width'],
                height=img['height']))
        for a in img['anns']:
            w = a['xmax'] - a['xmin'] + 1
            h = a['ymax'] - a['ymin'] + 1
            coco_anns.append(
                dict(
                    id=ann_id,
                    image_id=img['id'],
                    category_id=a['label'] + 1,
                    bbox=[a['xmin'], a['ymin'], w, h],
                    area=a['area'],
                    iscrowd=0,
                    segmentation=a['polygons']))
            ann_id += 1
    return _dump_json(
        dict(
            info=dict(
                description='mmprune synthetic shapes',
                version=str(GENERATOR_VERSION)),
            licenses=[],
            images=coco_images,
            annotations=coco_anns,
            categories=[
                dict(id=i + 1, name=n, supercategory='shape')
                for i, n in enumerate(classes)
            ]))


def _voc_xml(img: dict, classes: Sequence[str]) -> bytes:
    objects = []
    for a in img['anns']:
        # VOC boxes are 1-based inclusive pixel indices.
        objects.append('  <object>\n'
                       f'    <name>{classes[a["label"]]}</name>\n'
                       '    <pose>Unspecified</pose>\n'
                       f'    <truncated>{a["truncated"]}</truncated>\n'
                       '    <difficult>0</difficult>\n'
                       '    <bndbox>\n'
                       f'      <xmin>{a["xmin"] + 1}</xmin>\n'
                       f'      <ymin>{a["ymin"] + 1}</ymin>\n'
                       f'      <xmax>{a["xmax"] + 1}</xmax>\n'
                       f'      <ymax>{a["ymax"] + 1}</ymax>\n'
                       '    </bndbox>\n'
                       '  </object>\n')
    return ('<annotation>\n'
            '  <folder>VOC2007</folder>\n'
            f'  <filename>{img["file_name"]}</filename>\n'
            '  <source>\n'
            '    <database>mmprune synthetic shapes</database>\n'
            '  </source>\n'
            '  <size>\n'
            f'    <width>{img["width"]}</width>\n'
            f'    <height>{img["height"]}</height>\n'
            '    <depth>3</depth>\n'
            '  </size>\n'
            '  <segmented>0</segmented>\n' + ''.join(objects) +
            '</annotation>\n').encode('ascii')


def _write(path: str, data: bytes) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_args(out_dir,
                num_train,
                num_val,
                size,
                seed,
                num_classes,
                formats,
                overwrite,
                difficulty='hard') -> Tuple[str, ...]:

    def bad(name, why):
        raise SyntheticArgumentError(name, f'{name}: {why}')

    if difficulty not in DIFFICULTIES:
        bad('difficulty', f'must be one of {list(DIFFICULTIES)}, got '
            f'{difficulty!r}')

    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        bad('out_dir', f'expected a non-empty path, got {out_dir!r}')
    for name, value, lo in (('num_train', num_train, 1), ('num_val', num_val,
                                                          1)):
        if not _is_int(value) or value < lo:
            bad(name, f'must be an integer >= {lo}, got {value!r}')
    if not _is_int(size) or not MIN_SIZE <= size <= MAX_SIZE:
        bad('size',
            f'must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}')
    if not _is_int(seed) or seed < 0:
        bad('seed', f'must be a non-negative integer, got {seed!r}')
    if not _is_int(num_classes) or not (MIN_CLASSES <= num_classes <=
                                        MAX_CLASSES):
        bad(
            'num_classes', f'must be an integer in [{MIN_CLASSES}, '
            f'{MAX_CLASSES}], got {num_classes!r}')
    if isinstance(formats, str):
        formats = (formats, )
    try:
        fmts = tuple(formats)
    except TypeError:
        fmts = None
    if not fmts or any(f not in FORMATS for f in fmts):
        bad('formats', f'must be a non-empty subset of {FORMATS}, got '
            f'{formats!r}')
    out_dir = os.fspath(out_dir)
    if osp.lexists(out_dir):
        if not osp.isdir(out_dir) or osp.islink(out_dir):
            bad('out_dir', f'{out_dir!r} exists and is not a directory')
        if os.listdir(out_dir) and not overwrite:
            bad(
                'out_dir', f'{out_dir!r} exists and is not empty; pass '
                'overwrite=True to replace it')
    # Keep the caller's order but drop duplicates.
    return tuple(dict.fromkeys(fmts))


def make_synthetic_dataset(out_dir,
                           num_train: int = 200,
                           num_val: int = 50,
                           size: int = 320,
                           seed: int = 0,
                           num_classes: int = 12,
                           formats: Iterable[str] = ('coco', 'voc'),
                           overwrite: bool = False,
                           difficulty: str = 'hard') -> Dict:
    """Write a synthetic shape-detection dataset in COCO and/or VOC layout.

    Layout under ``out_dir``::

        coco/train2017/*.jpg  coco/val2017/*.jpg
        coco/annotations/instances_{train,val}2017.json
        VOCdevkit/VOC2007/{JPEGImages,Annotations}/
        VOCdevkit/VOC2007/ImageSets/Main/{trainval,test}.txt
        synthetic_meta.json   # arguments, counts, generator version

    Train images are named ``train_NNNNNN`` and go to ``train2017`` and
    ``trainval.txt``; val images are ``val_NNNNNN`` in ``val2017`` and
    ``test.txt``. The two formats describe the same boxes: COCO's
    ``[x, y, w, h]`` covers pixels ``x .. x + w - 1``; VOC's ``xmin .. xmax``
    are the same pixels, 1-based.

    Args:
        out_dir (str | PathLike): Destination directory. Must not exist or
            be empty, unless ``overwrite`` is True.
        num_train (int): Number of training images. Defaults to 200.
        num_val (int): Number of validation images. Defaults to 50.
        size (int): Side of the square images in pixels, >= 64.
            Defaults to 320.
        seed (int): Non-negative random seed. Defaults to 0.
        num_classes (int): Number of classes, in [10, 20]; the first
            ``num_classes`` names of :data:`SYNTH_CLASSES` are used.
            Defaults to 12.
        formats (Iterable[str]): Any of ``'coco'``, ``'voc'``.
            Defaults to ``('coco', 'voc')``.
        overwrite (bool): Replace an existing non-empty ``out_dir``.
            Defaults to False.
        difficulty (str): ``'hard'`` (the benchmark set: clutter, small
            objects, up to 12 per image) or ``'easy'`` (no clutter, 1-6
            larger objects; for short CPU budgets). Defaults to 'hard'.

    Returns:
        dict: ``out_dir``; ``coco_root`` and ``voc_root`` (with a trailing
        separator, ready for ``data_root``; None for a format not written);
        ``coco_ann_files`` (``{'train': ..., 'val': ...}`` relative to
        ``coco_root``); ``voc_set_files`` (relative to ``voc_root``);
        ``classes`` (list of names); ``num_classes``, ``num_train``,
        ``num_val``, ``num_train_instances``, ``num_val_instances``,
        ``size``, ``seed`` and ``formats``.

    Raises:
        ValueError: (:class:`SyntheticArgumentError`) naming the bad
            argument.
    """
    fmts = _check_args(out_dir, num_train, num_val, size, seed, num_classes,
                       formats, overwrite, difficulty)
    out_dir = osp.abspath(os.fspath(out_dir))
    classes = list(SYNTH_CLASSES[:num_classes])
    counts = {'train': int(num_train), 'val': int(num_val)}

    parent = osp.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(out_dir)}.tmp-', dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would be surprising
        coco_dir = osp.join(tmp, 'coco')
        voc_dir = osp.join(tmp, 'VOCdevkit', 'VOC2007')
        instances = {}
        for split, code in _SPLITS:
            records = []
            for i in range(counts[split]):
                arr, anns = _render_image(
                    int(seed), code, i, int(size), int(num_classes),
                    difficulty)
                stem = f'{split}_{i + 1:06d}'
                jpg = _encode_jpeg(arr)
                records.append(
                    dict(
                        id=i + 1,
                        stem=stem,
                        file_name=f'{stem}.jpg',
                        width=arr.shape[1],
                        height=arr.shape[0],
                        anns=anns))
                if 'coco' in fmts:
                    _write(
                        osp.join(coco_dir, _COCO_IMG_DIRS[split],
                                 f'{stem}.jpg'), jpg)
                if 'voc' in fmts:
                    _write(osp.join(voc_dir, 'JPEGImages', f'{stem}.jpg'), jpg)
                    _write(
                        osp.join(voc_dir, 'Annotations', f'{stem}.xml'),
                        _voc_xml(records[-1], classes))
            instances[split] = sum(len(r['anns']) for r in records)
            if 'coco' in fmts:
                _write(
                    osp.join(coco_dir, 'annotations',
                             f'instances_{_COCO_IMG_DIRS[split]}.json'),
                    _coco_json(records, classes))
            if 'voc' in fmts:
                _write(
                    osp.join(voc_dir, 'ImageSets', 'Main',
                             f'{_VOC_SETS[split]}.txt'),
                    ''.join(f'{r["stem"]}\n' for r in records).encode())

        meta = dict(
            generator='mmprune.datasets.synthetic',
            generator_version=GENERATOR_VERSION,
            seed=int(seed),
            difficulty=difficulty,
            size=int(size),
            num_train=counts['train'],
            num_val=counts['val'],
            num_classes=int(num_classes),
            classes=classes,
            formats=list(fmts),
            num_train_instances=instances['train'],
            num_val_instances=instances['val'])
        _write(osp.join(tmp, 'synthetic_meta.json'), _dump_json(meta))
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    return dict(
        out_dir=out_dir,
        coco_root=osp.join(out_dir, 'coco', '') if 'coco' in fmts else None,
        voc_root=(osp.join(out_dir, 'VOCdevkit', '')
                  if 'voc' in fmts else None),
        coco_ann_files={
            s: f'annotations/instances_{d}.json'
            for s, d in _COCO_IMG_DIRS.items()
        },
        voc_set_files={
            s: f'VOC2007/ImageSets/Main/{n}.txt'
            for s, n in _VOC_SETS.items()
        },
        classes=classes,
        num_classes=int(num_classes),
        num_train=counts['train'],
        num_val=counts['val'],
        num_train_instances=instances['train'],
        num_val_instances=instances['val'],
        size=int(size),
        seed=int(seed),
        formats=list(fmts),
        difficulty=difficulty)


def _publish(tmp: str, out_dir: str) -> None:
    """Move the finished tree into place; the old one goes only after."""
    old = None
    if osp.isdir(out_dir):
        if os.listdir(out_dir):  # overwrite=True was checked by the caller
            old = tempfile.mkdtemp(
                prefix=f'.{osp.basename(out_dir)}.old-',
                dir=osp.dirname(out_dir))
            os.rmdir(old)  # only the unique name is needed
            os.rename(out_dir, old)
        else:
            os.rmdir(out_dir)
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
