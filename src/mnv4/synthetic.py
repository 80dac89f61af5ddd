"""Procedural image sets, deterministic from a seed: shapes on textured canvases, with clutter and occlusion.

``synthetic_shapes(root)`` writes an ImageFolder (``root/train/<class>/*.png``, ``root/val/<class>/*.png``) that
every mnv4 command reads: 12 classes of shapes (disc, ring, square, frame, ...), each image one large *target* shape
among a few small *clutter* shapes of any class (under or over it), sometimes crossed by an *occluder* bar, every
layer (and the background) filled with a random colour or a two-colour texture (stripes, checks, smooth noise), plus
pixel noise. The class
is the target's shape; colour, texture, position, scale, rotation and aspect are nuisances. Nothing is downloaded:
the same seed and settings give the same bytes on any machine (numpy's PCG64 streams, fixed-size chunks).

It exists to make architecture measurable on a CPU (docs/nas.md): one image of the 5,000 validation images is 0.02
points, and recognising a rotated, textured, partly hidden shape among smaller ones needs receptive field and
capacity, where a data set like the 8x8 digits does not.

The renderer is layered so that each object's per-pixel mask is available (``render``): every object is an
anti-aliased alpha mask computed from a signed distance function, layers are composited back to front, and
``Scenes.visible_masks`` gives what each object shows after the layers above it.

``synthetic_segmentation(root)`` draws a segmentation set from the same renderer (docs/segmentation.md): images and
PNG label masks in the mask-folder layout ``mnv4 segment train`` reads, the background and five of the shapes (or
any of them) as classes, every pixel labelled with the class of what covers most of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError

VERSION = 1  # bump when the rendering changes: it is part of the data set's fingerprint
CHUNK = 256  # images per random stream: the bytes do not depend on how many images are asked for at once
TRAIN_STREAM, VAL_STREAM = 1, 2
FILL_SOLID, FILL_STRIPES, FILL_CHECKS, FILL_NOISE = range(4)


# --------------------------------------------------------------------------------------------- shapes
# Signed distance functions (negative inside) in the object's own frame, where the shape fits the unit disc. After
# Inigo Quilez's 2D distance functions (iquilezles.org/articles/distfunctions2d); only the sign and the distance near
# the edge matter here (anti-aliasing), so unions and cut-outs use min / max.
def _box(x, y, hx, hy):
    qx, qy = np.abs(x) - hx, np.abs(y) - hy
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _disc(x, y):
    return np.hypot(x, y) - 0.95


def _ring(x, y):
    return np.abs(np.hypot(x, y) - 0.7) - 0.25


def _square(x, y):
    return _box(x, y, 0.72, 0.72)


def _frame(x, y):
    return np.abs(_box(x, y, 0.62, 0.62)) - 0.18


def _triangle(x, y):
    # equilateral, circumradius 1, apex up
    k = np.sqrt(3.0)
    r = 0.5
    x = np.abs(x) - r * k
    y = -y + r
    flip = x + k * y > 0
    x, y = np.where(flip, (x - k * y) / 2, x), np.where(flip, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * r * k, 0)
    return -np.hypot(x, y) * np.sign(y)


def _star(x, y):
    # five points, outer radius 1, inner radius ~0.45 (IQ's sdStar5 with rf = 0.45)
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x = -k1x
    x = np.abs(x)
    d = np.maximum(k1x * x + k1y * y, 0)
    x, y = x - 2 * d * k1x, y - 2 * d * k1y
    d = np.maximum(k2x * x + k1y * y, 0)
    x, y = x - 2 * d * k2x, y - 2 * d * k1y
    x = np.abs(x)
    y = y - 1.0
    bax, bay = 0.45 * -k1y, 0.45 * k1x - 1.0
    h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0.0, 1.0)
    return np.hypot(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)


def _plus(x, y):
    return np.minimum(_box(x, y, 0.9, 0.26), _box(x, y, 0.26, 0.9))


def _crescent(x, y):
    return np.maximum(np.hypot(x, y) - 0.95, -(np.hypot(x - 0.5, y) - 0.75))


def _hexagon(x, y):
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    r = 0.82
    x, y = np.abs(x), np.abs(y)
    d = 2 * np.minimum(kx * x + ky * y, 0)
    x, y = x - d * kx, y - d * ky
    x = x - np.clip(x, -kz * r, kz * r)
    y = y - r
    return np.hypot(x, y) * np.sign(y)


def _arrow(x, y):
    shaft = _box(x + 0.3, y, 0.6, 0.18)
    head = np.maximum(np.maximum(-(x - 0.05), (x - 0.95) + 0.55 * np.abs(y) * 1.6), np.abs(y) - 0.6)
    return np.minimum(shaft, head)


def _tee(x, y):
    return np.minimum(_box(x, y - 0.65, 0.85, 0.22), _box(x, y + 0.15, 0.22, 0.8))


def _ellipse(x, y):
    # approximate distance (exact on the axes): enough for a one-pixel anti-aliased edge
    ax, ay = 0.95, 0.45
    k = np.hypot(x / ax, y / ay)
    return (k - 1.0) * np.minimum(ax, ay)


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": _disc, "ring": _ring, "square": _square, "frame": _frame, "triangle": _triangle, "star": _star,
    "plus": _plus, "crescent": _crescent, "hexagon": _hexagon, "arrow": _arrow, "tee": _tee, "ellipse": _ellipse,
}
CLASSES = tuple(SHAPES)


# --------------------------------------------------------------------------------------------- the look
@dataclass(frozen=True)
class ShapesStyle:
    """What a scene looks like. Sizes are radii as fractions of the image's half-width (1 = touches the borders).

    The defaults were fixed before any search result was looked at (docs/nas.md: the proxy's design)."""

    target_radius: tuple[float, float] = (0.5, 0.85)
    target_offset: float = 0.3  # the target's centre is uniform in [-offset, offset]^2
    aspect: tuple[float, float] = (0.8, 1.25)  # each object stretched along one axis by this factor
    clutter: tuple[int, int] = (1, 3)  # clutter objects per image (inclusive), drawn over or under the target
    clutter_radius: tuple[float, float] = (0.1, 0.2)
    clutter_on_top: float = 0.5  # probability that a clutter object lies above the target
    occluder_prob: float = 0.3  # a bar across the target's region, above everything
    occluder_width: tuple[float, float] = (0.08, 0.2)
    min_contrast: float = 0.5  # least RGB distance (0..sqrt 3) between an object's colour and the background's
    noise: float = 0.02  # std of Gaussian pixel noise (pixel values in [0, 1])
    textured: float = 0.2  # probability that a layer's fill is a two-colour texture instead of one colour

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Scenes:
    """A batch of rendered scenes. Layers are back to front: the background is not a layer; ``masks[:, j]`` is
    object j's full alpha (as if nothing were above it), ``classes[:, j]`` its shape class, -1 for the occluder bar
    (not a shape). ``target`` is the layer index of the labelled object in each scene."""

    images: np.ndarray  # (n, H, W, 3) uint8
    labels: np.ndarray  # (n,) int64, the target's class
    masks: np.ndarray  # (n, layers, H, W) float32 alpha in [0, 1]
    classes: np.ndarray  # (n, layers) int64
    target: np.ndarray  # (n,) int64

    def visible_masks(self) -> np.ndarray:
        """(n, layers, H, W): what each object shows, its alpha times the transparency of every layer above it."""
        above = np.ones_like(self.masks[:, 0])
        out = np.empty_like(self.masks)
        for j in range(self.masks.shape[1] - 1, -1, -1):
            out[:, j] = self.masks[:, j] * above
            above = above * (1 - self.masks[:, j])
        return out


# --------------------------------------------------------------------------------------------- rendering
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1], y up."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return c[None, :].repeat(size, 0), -c[:, None].repeat(size, 1)


def _colours(rng: np.random.Generator, n: int, background: np.ndarray | None, min_contrast: float) -> np.ndarray:
    """(n, 3) random colours; with ``background`` each at least ``min_contrast`` away from it (rejection, then a
    push away for the rare leftovers so the loop is bounded)."""
    out = rng.random((n, 3), dtype=np.float32)
    if background is None:
        return out
    for _ in range(8):
        bad = np.linalg.norm(out - background, axis=1) < min_contrast
        if not bad.any():
            return out
        out[bad] = rng.random((int(bad.sum()), 3), dtype=np.float32)
    d = out - background
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    bad = norm[:, 0] < min_contrast
    direction = np.where(norm > 1e-6, d / np.maximum(norm, 1e-6), 1 / np.sqrt(3))
    out[bad] = np.clip(background[bad] + direction[bad] * min_contrast, 0, 1)
    return out


def _smooth_noise(grid: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size) in [0, 1]: each (cells + 1)^2 random ``grid`` bilinearly upsampled."""
    cells = grid.shape[1] - 1
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * cells
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    rows = grid[:, i] * (1 - f)[None, :, None] + grid[:, i + 1] * f[None, :, None]  # (n, size, cells + 1)
    return rows[:, :, i] * (1 - f) + rows[:, :, i + 1] * f


def _fill(rng: np.random.Generator, n: int, size: int, base: np.ndarray, textured: float, min_contrast: float,
          rows: np.ndarray) -> np.ndarray:
    """(len(rows), H, W, 3): the fill of one layer for the scenes ``rows`` (every scene's draws are taken, so the
    stream does not depend on which scenes need a fill): ``base`` colour, or a texture between it and a second one."""
    kind = np.where(rng.random(n) < textured, rng.integers(FILL_STRIPES, FILL_NOISE + 1, n), FILL_SOLID)
    second = _colours(rng, n, base, min_contrast * 0.5)
    angle = rng.uniform(0, np.pi, n).astype(np.float32)
    freq = rng.uniform(2.0, 6.0, n).astype(np.float32) * np.pi
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    grid = rng.random((n, 6, 6), dtype=np.float32)
    kind, base, second, angle, freq, phase, grid = (a[rows] for a in (kind, base, second, angle, freq, phase, grid))
    t = np.zeros((len(rows), size, size), dtype=np.float32)
    x, y = _grid(size)
    wave = np.flatnonzero((kind == FILL_STRIPES) | (kind == FILL_CHECKS))
    if len(wave):
        c, s = np.cos(angle[wave])[:, None, None], np.sin(angle[wave])[:, None, None]
        f, p = freq[wave, None, None], phase[wave, None, None]
        along = np.sin(f * (x * c + y * s) + p) > 0
        across = np.sin(f * (y * c - x * s)) > 0
        t[wave] = np.where((kind[wave] == FILL_CHECKS)[:, None, None], along ^ across, along)
    noisy = np.flatnonzero(kind == FILL_NOISE)
    if len(noisy):
        t[noisy] = _smooth_noise(grid[noisy], size)
    return base[:, None, None, :] + (second - base)[:, None, None, :] * t[..., None]


def _shape_alpha(rng: np.random.Generator, classes: np.ndarray, size: int, centre: np.ndarray, radius: np.ndarray,
                 aspect: tuple[float, float]) -> np.ndarray:
    """(n, H, W) anti-aliased alpha of shape ``classes[i]`` at ``centre[i]``, radius, random rotation and aspect."""
    n = len(classes)
    x, y = _grid(size)
    angle = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    stretch = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]), n)).astype(np.float32)
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    dx, dy = x[None] - centre[:, 0, None, None], y[None] - centre[:, 1, None, None]
    r = radius[:, None, None].astype(np.float32)
    u = (c * dx + s * dy) / (r * stretch[:, None, None])
    v = (-s * dx + c * dy) / (r / stretch[:, None, None])
    distance = np.empty((n, size, size), dtype=np.float32)
    for k, sdf in enumerate(SHAPES.values()):
        rows = np.flatnonzero(classes == k)
        if len(rows):
            distance[rows] = sdf(u[rows], v[rows])
    pixels = distance * r * np.minimum(stretch, 1 / stretch)[:, None, None] * (size / 2)  # -> distance in pixels
    return np.clip(0.5 - pixels, 0.0, 1.0)


def _bar_alpha(rng: np.random.Generator, n: int, size: int, near: np.ndarray, width: tuple[float, float]):
    """(n, H, W) alpha of a straight bar through a point near ``near`` (the target's centre)."""
    x, y = _grid(size)
    angle = rng.uniform(0, np.pi, n).astype(np.float32)
    shift = rng.uniform(-0.35, 0.35, n).astype(np.float32)
    half = rng.uniform(*width, n).astype(np.float32) / 2
    dist = np.abs(-(x[None] - near[:, 0, None, None]) * np.sin(angle)[:, None, None]
                  + (y[None] - near[:, 1, None, None]) * np.cos(angle)[:, None, None] - shift[:, None, None])
    return np.clip(0.5 - (dist - half[:, None, None]) * (size / 2), 0.0, 1.0)


def render(labels: np.ndarray, size: int, rng: np.random.Generator, style: ShapesStyle = ShapesStyle(),
           clutter_classes: np.ndarray | None = None) -> Scenes:
    """Render one scene per label (a class index of ``CLASSES``) with the draws of ``rng``. Layers: the clutter
    below the target, the target, the clutter above it, the occluder bar (alpha 0 where a scene has none); a scene
    with fewer clutter objects than the most has empty (alpha 0) layers. Clutter shapes are of any class, or of
    ``clutter_classes`` (class indices) when given."""
    labels = np.asarray(labels, dtype=np.int64)
    n, st = len(labels), style
    background = _colours(rng, n, None, 0.0)
    image = _fill(rng, n, size, background, st.textured, st.min_contrast, np.arange(n))
    centre = rng.uniform(-st.target_offset, st.target_offset, (n, 2)).astype(np.float32)
    radius = rng.uniform(*st.target_radius, n).astype(np.float32)

    n_clutter = rng.integers(st.clutter[0], st.clutter[1] + 1, n)
    most = st.clutter[1]
    on_top = rng.random((n, most)) < st.clutter_on_top
    present = np.arange(most)[None, :] < n_clutter[:, None]
    if clutter_classes is None:
        clutter_classes = rng.integers(0, len(CLASSES), (n, most))
    else:
        clutter_classes = np.asarray(clutter_classes, dtype=np.int64)[rng.integers(0, len(clutter_classes), (n, most))]
    clutter_centres = rng.uniform(-0.85, 0.85, (n, most, 2)).astype(np.float32)
    clutter_radius = rng.uniform(*st.clutter_radius, (n, most)).astype(np.float32)
    has_bar = rng.random(n) < st.occluder_prob

    # back to front: the under-clutter slots, the target, the over-clutter slots, the bar
    order = [("clutter", j, False) for j in range(most)] + [("target",)] + \
            [("clutter", j, True) for j in range(most)] + [("bar",)]
    masks = np.zeros((n, len(order), size, size), dtype=np.float32)
    classes = np.full((n, len(order)), -1, dtype=np.int64)
    for layer, what in enumerate(order):
        if what[0] == "target":
            alpha = _shape_alpha(rng, labels, size, centre, radius, st.aspect)
            classes[:, layer] = labels
        elif what[0] == "clutter":
            j, top = what[1], what[2]
            alpha = _shape_alpha(rng, clutter_classes[:, j], size, clutter_centres[:, j], clutter_radius[:, j],
                                 st.aspect)
            alpha *= (present[:, j] & (on_top[:, j] == top)).astype(np.float32)[:, None, None]
            classes[:, layer] = np.where(alpha.reshape(n, -1).max(1) > 0, clutter_classes[:, j], -1)
        else:
            alpha = _bar_alpha(rng, n, size, centre, st.occluder_width) * has_bar[:, None, None]
        colour = _colours(rng, n, background, st.min_contrast)
        rows = np.flatnonzero(alpha.reshape(n, -1).max(1) > 0)
        fill = _fill(rng, n, size, colour, st.textured, st.min_contrast, rows)
        masks[:, layer] = alpha
        a = alpha[rows, ..., None]
        image[rows] = image[rows] * (1 - a) + fill * a
    image = image + st.noise * rng.standard_normal(image.shape, dtype=np.float32)
    images = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return Scenes(images, labels, masks, classes, np.full(n, most, dtype=np.int64))


# --------------------------------------------------------------------------------------------- the data set
@dataclass(frozen=True)
class ShapesSet:
    """What ``synthetic_shapes`` writes; ``fingerprint`` names it (a cache key for results computed on it)."""

    root: Path
    train: int
    val: int
    size: int
    seed: int
    style: ShapesStyle = field(default_factory=ShapesStyle)

    def settings(self) -> dict:
        return {"generator": "mnv4.synthetic_shapes", "version": VERSION, "train": self.train, "val": self.val,
                "size": self.size, "seed": self.seed, "classes": list(CLASSES), "style": self.style.to_dict()}

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:16]


def split_scenes(count: int, size: int, seed: int, stream: int, style: ShapesStyle = ShapesStyle(),
                 start: int = 0, classes: np.ndarray | None = None) -> Iterator[tuple[Scenes, slice]]:
    """The scenes of images ``start`` .. ``count - 1`` of one split, a chunk at a time: (the chunk's scenes, the
    slice of them in the range). Image i's target has class i mod 12 (or ``classes[i mod len(classes)]``, which then
    are the clutter's classes too) and comes from the random stream of its chunk of ``CHUNK`` images, so any range
    gives the same images."""
    for chunk in range(start // CHUNK, (count + CHUNK - 1) // CHUNK):
        lo, hi = chunk * CHUNK, min(count, (chunk + 1) * CHUNK)
        rng = np.random.default_rng([seed, stream, chunk, VERSION])
        if classes is None:
            chunk_labels = np.arange(lo, (chunk + 1) * CHUNK) % len(CLASSES)
        else:
            chunk_labels = np.asarray(classes)[np.arange(lo, (chunk + 1) * CHUNK) % len(classes)]
        # always the full chunk: the draws do not depend on count
        scenes = render(chunk_labels, size, rng, style, classes)
        yield scenes, slice(max(start, lo) - lo, hi - lo)


def split_images(count: int, size: int, seed: int, stream: int, style: ShapesStyle = ShapesStyle(),
                 start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start`` .. ``count - 1`` of one split as ((n, H, W, 3) uint8, (n,) labels) (``split_scenes``)."""
    images, labels = [], []
    for scenes, keep in split_scenes(count, size, seed, stream, style, start):
        images.append(scenes.images[keep])
        labels.append(scenes.labels[keep])
    return np.concatenate(images), np.concatenate(labels)


def _claim_root(root: Path, marker: Path, settings: dict, what: str) -> bool:
    """True when ``root`` already holds this very set (``marker`` records its ``settings``); refuses a ``root``
    holding anything else; else the set is to be written (False)."""
    if marker.is_file():
        if json.loads(marker.read_text()) == json.loads(json.dumps(settings)):
            return True
        raise UserError(f"{root} holds another {what} (see {marker}); pick an empty folder")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(f"{root} exists and is not an empty folder; pick a new one for the {what}")
    return False


def synthetic_shapes(root: str | os.PathLike, train: int = 20_000, val: int = 5_000, size: int = 48, seed: int = 0,
                     style: ShapesStyle | None = None) -> ShapesSet:
    """Write the shapes data set as an ImageFolder: ``root/train/<class>/<index>.png`` and ``root/val/...``, 12
    classes, balanced, deterministic from ``seed``. Returns a ``ShapesSet`` (its ``root`` is what ``mnv4 train
    --data`` and ``mnv4 search --data`` take).

    Idempotent: a ``root`` that already holds this very set (same settings, recorded in ``root/shapes.json``) is
    left as it is. A ``root`` holding anything else is refused rather than overwritten.

    Smoke tests: ``synthetic_shapes(tmp, train=240, val=120, size=32)`` takes well under a second."""
    from PIL import Image

    style = style or ShapesStyle()
    if train < len(CLASSES) or val < len(CLASSES):
        raise UserError(f"train and val need at least one image per class ({len(CLASSES)}), got {train} and {val}")
    if size < 16:
        raise UserError(f"size must be >= 16 pixels, got {size}")
    out = ShapesSet(Path(root), train, val, size, seed, style)
    marker = out.root / "shapes.json"
    if _claim_root(out.root, marker, out.settings(), "shapes set"):
        return out
    for split, count, stream in (("train", train, TRAIN_STREAM), ("val", val, VAL_STREAM)):
        for name in CLASSES:
            (out.root / split / name).mkdir(parents=True, exist_ok=True)
        for chunk in range(0, count, CHUNK):
            images, labels = split_images(min(count, chunk + CHUNK), size, seed, stream, style, start=chunk)
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                path = out.root / split / CLASSES[label] / f"{chunk + i:06d}.png"
                Image.fromarray(image).save(path, compress_level=1)
    marker.write_text(json.dumps(out.settings(), indent=2) + "\n")  # last: a half-written folder is not "done"
    return out


# --------------------------------------------------------------------------------------------- segmentation
# The shapes a segmentation set labels by default: five whose silhouettes differ at a glance (round, three corners,
# four, five points, a cross). A segmenter has to tell them apart inside as well as at the edge -- the middle of a
# large disc looks like the middle of a large square -- which takes context; five classes keep that learnable in a
# few CPU minutes (docs/segmentation.md), ``shapes=CLASSES`` gives all twelve.
SEGMENTATION_SHAPES = ("disc", "triangle", "square", "star", "plus")
SEG_TRAIN_STREAM, SEG_VAL_STREAM = 3, 4  # other draws than the shapes set's: its scenes are not reused
# Scenes for segmentation: every object is labelled and LR-ASPP predicts at 1/8 of the input, so the objects are
# larger than the classification set's (its clutter, radius 0.1, is 3 px across at 64 px) and fewer: one large shape
# and up to two smaller ones, over or under it.
SEGMENTATION_STYLE = ShapesStyle(target_radius=(0.45, 0.75), target_offset=0.3, clutter=(0, 2),
                                 clutter_radius=(0.25, 0.4), occluder_prob=0.2)


def scene_labels(scenes: Scenes, shapes: tuple[str, ...] = CLASSES) -> np.ndarray:
    """(n, H, W) uint8 label masks of ``scenes``: each pixel gets the label of what covers most of it after the
    layers above it (``Scenes.visible_masks``) -- a shape ``shapes[k]`` is label k + 1, the background and the
    occluder bar (not a shape) 0. Anti-aliased edges go to the larger share; no pixel is left unlabelled."""
    label_of = np.zeros(len(CLASSES) + 1, dtype=np.uint8)  # indexed by class + 1 (-1: no shape)
    label_of[[CLASSES.index(name) + 1 for name in shapes]] = np.arange(1, len(shapes) + 1)
    visible = scenes.visible_masks()
    shares = np.concatenate([1 - visible.sum(1, keepdims=True), visible], axis=1)  # background first
    top = shares.argmax(1)  # (n, H, W): 0 = background, j + 1 = layer j
    classes = np.concatenate([np.full((len(scenes.classes), 1), -1), scenes.classes], axis=1) + 1
    return label_of[np.take_along_axis(classes[:, :, None, None], top[:, None], axis=1)[:, 0]]


@dataclass(frozen=True)
class SegmentationSet:
    """What ``synthetic_segmentation`` writes: ``<root>/<split>/images/<index>.png`` with its label mask
    ``<root>/<split>/masks/<index>.png`` (a palette PNG: the pixel values are the labels of ``class_names``), and
    ``<root>/classes.txt`` (one name per label)."""

    root: Path
    train: int
    val: int
    size: int
    seed: int
    shapes: tuple[str, ...] = SEGMENTATION_SHAPES
    style: ShapesStyle = field(default_factory=lambda: SEGMENTATION_STYLE)

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("background", *self.shapes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def settings(self) -> dict:
        return {"generator": "mnv4.synthetic_segmentation", "version": VERSION, "train": self.train,
                "val": self.val, "size": self.size, "seed": self.seed, "classes": list(self.class_names),
                "style": self.style.to_dict()}

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:16]

    def images(self, split: str) -> Path:
        return self.root / split / "images"

    def masks(self, split: str) -> Path:
        return self.root / split / "masks"

    @property
    def classes_file(self) -> Path:
        return self.root / "classes.txt"


def segmentation_split(count: int, size: int, seed: int, stream: int, shapes: tuple[str, ...] = SEGMENTATION_SHAPES,
                       style: ShapesStyle = SEGMENTATION_STYLE, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start`` .. ``count - 1`` of one split of the segmentation set as ((n, H, W, 3) uint8, (n, H, W)
    uint8 labels): image i's large shape is ``shapes[i mod len(shapes)]``, the smaller ones any of ``shapes``; like
    ``split_images``, any range gives the same images."""
    classes = np.array([CLASSES.index(name) for name in shapes])
    images, labels = [], []
    for scenes, keep in split_scenes(count, size, seed, stream, style, start, classes):
        images.append(scenes.images[keep])
        labels.append(scene_labels(scenes, shapes)[keep])
    return np.concatenate(images), np.concatenate(labels)


def synthetic_segmentation(root: str | os.PathLike, train: int = 2_000, val: int = 200, size: int = 64,
                           seed: int = 0, shapes: tuple[str, ...] = SEGMENTATION_SHAPES,
                           style: ShapesStyle | None = None) -> SegmentationSet:
    """Write a segmentation set of shapes on textured canvases: ``root/{train,val}/images/<index>.png`` and their
    label masks ``root/{train,val}/masks/<index>.png``, the layout ``mnv4 segment train --train-images
    root/train/images --train-masks root/train/masks --num-classes 6`` reads; deterministic from ``seed``.

    Classes (``SegmentationSet.class_names``): 0 the background (and the occluder bars, which are no shape), then
    ``shapes`` (default ``SEGMENTATION_SHAPES``, five of ``synthetic_shapes``' twelve; ``CLASSES`` for all). Each
    scene is one large shape among up to two smaller ones over or under it, sometimes crossed by a bar, on a plain or
    textured background with pixel noise (``SEGMENTATION_STYLE``); every shape is labelled. Each pixel gets the label
    of what covers most of it (``scene_labels``): there is no boundary band of 255s, every pixel is scored. The masks
    are palette PNGs (VOC's colours; the values are the labels); ``root/classes.txt`` names the labels.

    Idempotent and refuses to overwrite, like ``synthetic_shapes``. Smoke tests: ``synthetic_segmentation(tmp,
    train=16, val=8, size=32)`` takes a fraction of a second."""
    from PIL import Image

    style = style or SEGMENTATION_STYLE
    shapes = tuple(shapes)
    unknown = [name for name in shapes if name not in CLASSES]
    if unknown or not shapes or len(set(shapes)) != len(shapes):
        raise UserError(f"shapes must be distinct names of {CLASSES}, got {shapes}")
    if train < 1 or val < 1:
        raise UserError(f"train and val need at least one image each, got {train} and {val}")
    if size < 32:
        raise UserError(f"size must be >= 32 pixels (the segmenters' smallest input), got {size}")
    out = SegmentationSet(Path(root), train, val, size, seed, shapes, style)
    marker = out.root / "segmentation.json"
    if _claim_root(out.root, marker, out.settings(), "segmentation set"):
        return out
    palette = [v for c in range(out.num_classes) for v in _voc_colour(c)]
    for split, count, stream in (("train", train, SEG_TRAIN_STREAM), ("val", val, SEG_VAL_STREAM)):
        out.images(split).mkdir(parents=True, exist_ok=True)
        out.masks(split).mkdir(parents=True, exist_ok=True)
        for chunk in range(0, count, CHUNK):
            images, labels = segmentation_split(min(count, chunk + CHUNK), size, seed, stream, shapes, style,
                                                start=chunk)
            for i, (image, mask) in enumerate(zip(images, labels, strict=True)):
                Image.fromarray(image).save(out.images(split) / f"{chunk + i:06d}.png", compress_level=1)
                drawn = Image.fromarray(mask, mode="P")
                drawn.putpalette(palette)
                drawn.save(out.masks(split) / f"{chunk + i:06d}.png")
    out.classes_file.write_text("\n".join(out.class_names) + "\n")
    marker.write_text(json.dumps(out.settings(), indent=2) + "\n")  # last: a half-written folder is not "done"
    return out


def _voc_colour(label: int) -> tuple[int, int, int]:
    """Pascal VOC's colour of ``label`` (``mnv4.segmentation.voc_palette``, without importing torch here)."""
    rgb, value = [0, 0, 0], label
    for shift in range(7, -1, -1):
        for channel in range(3):
            rgb[channel] |= ((value >> channel) & 1) << shift
        value >>= 3
    return rgb[0], rgb[1], rgb[2]
