"""synthparts: a generated image data set with part, color, texture and landmark ground truth.

Every image shows one object of one of ``K`` categories (default 6, at most 8) over a textured background.
An object is a fixed arrangement of *part slots*; each slot holds a part shape from a shared pool, so some
shapes occur in several categories and some in one only. The whole object is placed with a random position,
scale, rotation and an optional left-right flip. Everything is deterministic from ``(seed, split, index)``.

Two families of settings: **rigid** (:meth:`SynthPartsConfig.rigid` = the default; every part sits at a fixed
offset in the object frame, so a unit frozen at a fixed position relative to the object can look like a part
detector) and **articulated** (:meth:`SynthPartsConfig.articulated`): each part slot gets its own offset jitter
(``part_offset_jitter``, object radii, in the object frame) and rotation jitter (``part_rotation_jitter``,
degrees), some parts are missing (``part_drop``: not drawn, landmark invisible), and objects are smaller and range
over more of the frame. Landmarks and every mask follow the jittered parts. With the jitter fields at 0 (the
default) the generator's bytes are exactly those of the rigid generator.

Part shapes (``part`` label = shape id + 1; 0 = no part)::

    0 disc  1 ring  2 bar  3 triangle  4 square  5 cross  6 diamond  7 crescent

Categories (``object`` label = category id + 1; 0 = background; ``label`` = category id). Slots are listed in
drawing order (a later slot may cover an earlier one); ``shape@color`` marks a slot whose color is correlated
with the category (it takes that color with probability ``color_correlation``, else a uniform palette color);
slots without ``@`` always get a uniform palette color::

    0 lamp    triangle@yellow, bar, square@blue                  (3 slots)
    1 flower  ring@yellow, diamond@red, diamond@red, diamond     (4 slots)
    2 robot   square@white, square@blue, cross@red               (3 slots)
    3 key     ring@yellow, bar, square                           (3 slots)
    4 boat    crescent@brown, bar, triangle@white                (3 slots)
    5 target  ring, disc@red, cross                              (3 slots)
    6 bug     disc@green, disc, bar, bar                         (4 slots, only with K >= 7)
    7 crown   bar@yellow, triangle, triangle, triangle           (4 slots, only with K = 8)

Shared shapes: bar (lamp, key, boat, bug, crown), triangle (lamp, boat, crown), square (lamp, robot, key),
ring (flower, key, target), disc (target, bug), cross (robot, target); unique: diamond (flower),
crescent (boat).

Colors (``color`` label = color id + 1 on part, distractor and occluder pixels; 0 = background)::

    0 red  1 orange  2 yellow  3 green  4 cyan  5 blue  6 purple  7 pink  8 brown  9 white  10 black

Background textures (image-level ``texture`` label, 0-based)::

    0 plain  1 stripes  2 dots  3 checker  4 noise

Background colors are muted (gray with a tint) so that palette colors stand out; ``clutter`` scales the
texture contrast.

Annotations per image (see :func:`generate`): label maps ``object``, ``part``, ``color``, ``slot`` (slot
index + 1 of the object part that owns the pixel: an instance map for parts), the image-level ``texture``, and
landmarks: the center ``(x, y)`` of every part slot in pixel coordinates (pixel column ``j`` spans ``[j, j+1)``,
so its center is ``j + 0.5``) with a visibility flag. A slot is visible when its category has it, its center is
in the frame and at least ``min_visible`` of its drawn area survives later parts, occluders and the frame edge.
Slots a category lacks have landmark ``(-1, -1)`` and are invisible. Distractor parts (random shapes behind
the object) and occluders (random squares/discs in front of it) carry a ``color`` label but no
``object``/``part``/``slot`` label, so the ``object`` map always contains the ``part`` map.

Rendering is vectorized over a batch with NumPy: per-image parameters come from a counter-based hash of
``(seed, split, index)`` (so chunked generation equals one call, byte for byte), the background is computed on
full coordinate grids, and each part is computed on a fixed-size window around it (a Python loop only runs
over slots and shapes). Pixel math uses only IEEE-exact operations (+, -, *, /, floor, comparisons) so the
bytes do not depend on the batch size or SIMD code path. Rotations come from the rational parametrisation
``cos = (1 - t^2) / (1 + t^2), sin = 2t / (1 + t^2)`` with ``t`` uniform (angles are close to, not exactly,
uniform).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from jinterp.errors import ConfigError

SHAPES = ("disc", "ring", "bar", "triangle", "square", "cross", "diamond", "crescent")
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "brown", "white", "black")
PALETTE = np.array(
    [
        (220, 40, 40), (245, 140, 30), (240, 220, 40), (40, 170, 60), (40, 205, 215), (40, 70, 215),
        (140, 50, 190), (245, 125, 195), (135, 80, 35), (248, 248, 248), (12, 12, 12),
    ],
    np.float32,
)
TEXTURES = ("plain", "stripes", "dots", "checker", "noise")
SPLITS = {"train": 0, "test": 1, "validation": 2}


@dataclasses.dataclass(frozen=True)
class Slot:
    """One part slot of a category, in object coordinates (object radius = 1, y points down).

    ``size`` is the part radius relative to the object radius, ``rot`` the part's own rotation in degrees,
    ``color`` the correlated palette color name or None.
    """

    shape: str
    dx: float
    dy: float
    size: float
    rot: float = 0.0
    color: str | None = None


CATEGORIES: tuple[tuple[str, tuple[Slot, ...]], ...] = (
    ("lamp", (Slot("triangle", 0.0, -0.55, 0.42, 0, "yellow"), Slot("bar", 0.0, 0.05, 0.45, 90),
              Slot("square", 0.0, 0.62, 0.34, 0, "blue"))),
    ("flower", (Slot("ring", 0.0, 0.0, 0.38, 0, "yellow"), Slot("diamond", 0.0, -0.68, 0.3, 0, "red"),
                Slot("diamond", -0.6, 0.4, 0.3, 60, "red"), Slot("diamond", 0.6, 0.4, 0.3, -60))),
    ("robot", (Slot("square", 0.0, -0.6, 0.3, 0, "white"), Slot("square", 0.0, 0.25, 0.5, 0, "blue"),
               Slot("cross", 0.0, 0.25, 0.28, 0, "red"))),
    ("key", (Slot("ring", -0.55, 0.0, 0.4, 0, "yellow"), Slot("bar", 0.25, 0.0, 0.55, 0),
             Slot("square", 0.68, 0.3, 0.2, 0))),
    ("boat", (Slot("crescent", 0.0, 0.42, 0.55, -90, "brown"), Slot("bar", -0.1, -0.2, 0.48, 90),
              Slot("triangle", 0.3, -0.38, 0.34, 0, "white"))),
    ("target", (Slot("ring", 0.0, 0.0, 0.78, 0), Slot("disc", 0.0, 0.0, 0.34, 0, "red"),
                Slot("cross", 0.7, -0.7, 0.24, 45))),
    ("bug", (Slot("disc", 0.0, 0.15, 0.5, 0, "green"), Slot("disc", 0.0, -0.6, 0.28),
             Slot("bar", -0.62, 0.15, 0.32, 30), Slot("bar", 0.62, 0.15, 0.32, -30))),
    ("crown", (Slot("bar", 0.0, 0.45, 0.7, 0, "yellow"), Slot("triangle", -0.55, -0.1, 0.3),
               Slot("triangle", 0.0, -0.2, 0.3), Slot("triangle", 0.55, -0.1, 0.3))),
)
NUM_SLOTS = max(len(s) for _, s in CATEGORIES)
_EXTENT = 1.12  # max distance of any shape pixel from its center, in part radii (square corner 0.78*sqrt2)


@dataclasses.dataclass(frozen=True)
class SynthPartsConfig:
    """Generator settings. Presets: :meth:`easy`, :meth:`default`, :meth:`hard`.

    Attributes:
      size: image side in pixels, 32..224.
      num_categories: K, 2..8 (the first K of :data:`CATEGORIES`).
      scale: (min, max) object radius as a fraction of the image side.
      max_rotation: max |object rotation| in degrees (< 180).
      flip_prob: probability of a left-right flip of the object.
      frame_margin: the object center keeps ``frame_margin * radius`` from the border (< 1 lets parts leave the
        frame and become invisible).
      color_correlation: probability that a category-correlated slot takes its category's color.
      clutter: background texture contrast in [0, 1].
      distractors: (min, max) number of random distractor parts drawn behind the object.
      occluders: (min, max) number of squares/discs drawn over the object.
      noise: std of additive pixel noise, in uint8 units.
      min_visible: fraction of a part's drawn area that must stay visible for its landmark to count as visible.
      part_offset_jitter: per image and part slot, a uniform offset in ``[-j, j]`` per axis (object radii, object
        frame) added to the slot's position (articulation; 0 = rigid).
      part_rotation_jitter: per image and part slot, a rotation in ``[-d, d]`` degrees added to the part's own.
      part_drop: probability that a part slot is not drawn in an image (its landmark is then invisible).
    """

    size: int = 64
    num_categories: int = 6
    scale: tuple[float, float] = (0.28, 0.42)
    max_rotation: float = 30.0
    flip_prob: float = 0.5
    frame_margin: float = 0.85
    color_correlation: float = 0.7
    clutter: float = 0.6
    distractors: tuple[int, int] = (0, 2)
    occluders: tuple[int, int] = (0, 1)
    noise: float = 8.0
    min_visible: float = 0.3
    part_offset_jitter: float = 0.0
    part_rotation_jitter: float = 0.0
    part_drop: float = 0.0

    def __post_init__(self):
        checks = [
            (32 <= self.size <= 224, "size must lie in [32, 224]"),
            (2 <= self.num_categories <= len(CATEGORIES), f"num_categories must lie in [2, {len(CATEGORIES)}]"),
            (0 < self.scale[0] <= self.scale[1] <= 0.5, "scale must satisfy 0 < min <= max <= 0.5"),
            (0 <= self.max_rotation < 180, "max_rotation must lie in [0, 180) degrees"),
            (0 <= self.flip_prob <= 1 and 0 <= self.color_correlation <= 1 and 0 <= self.clutter <= 1,
             "flip_prob, color_correlation and clutter must lie in [0, 1]"),
            (0 <= self.distractors[0] <= self.distractors[1] <= 8, "distractors must be 0 <= min <= max <= 8"),
            (0 <= self.occluders[0] <= self.occluders[1] <= 4, "occluders must be 0 <= min <= max <= 4"),
            (self.noise >= 0 and 0 <= self.min_visible <= 1 and self.frame_margin >= 0,
             "noise >= 0, frame_margin >= 0 and 0 <= min_visible <= 1 are required"),
            (0 <= self.part_offset_jitter <= 0.5 and 0 <= self.part_rotation_jitter < 180 and 0 <= self.part_drop < 1,
             "0 <= part_offset_jitter <= 0.5, 0 <= part_rotation_jitter < 180 and 0 <= part_drop < 1 are required"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"SynthPartsConfig: {msg} (got {self})")

    @classmethod
    def easy(cls, **kw) -> SynthPartsConfig:
        """Centered, unrotated-ish objects on low-contrast backgrounds; no distractors, occluders or noise."""
        base = dict(scale=(0.34, 0.42), max_rotation=10.0, frame_margin=1.0, color_correlation=0.9,
                    clutter=0.3, distractors=(0, 0), occluders=(0, 0), noise=0.0)
        return cls(**{**base, **kw})

    @classmethod
    def default(cls, **kw) -> SynthPartsConfig:
        """The default: a small CNN reaches high but not perfect accuracy.

        Measured: a 4-block CNN (conv-BN-ReLU-pool, 32-128 channels; PyTorch, Adam 2e-3, batch 128, flips) on
        8000 training images reached 90.3% test accuracy (2000 images) after 3 epochs and 97.3% after 4.
        """
        return cls(**kw)

    @classmethod
    def rigid(cls, **kw) -> SynthPartsConfig:
        """The default generator by its descriptive name: parts at fixed offsets in the object frame."""
        return cls.default(**kw)

    @classmethod
    def articulated(cls, **kw) -> SynthPartsConfig:
        """Parts move relative to their object and objects wander over the frame (issue #20).

        Per part: offset jitter ±0.18 object radii per axis, rotation jitter ±35°, dropped with probability 0.1.
        Objects: radius 0.24–0.36 of the side, centre anywhere at least 0.6 radii from the border. A unit fixed at
        the image centre or at its own mean position can no longer match a unit that tracks a part.
        """
        base = dict(scale=(0.24, 0.36), frame_margin=0.6, part_offset_jitter=0.18, part_rotation_jitter=35.0,
                    part_drop=0.1)
        return cls(**{**base, **kw})

    @classmethod
    def hard(cls, **kw) -> SynthPartsConfig:
        """Small, freely rotated objects, busy backgrounds, several distractors and occluders, strong noise."""
        base = dict(scale=(0.22, 0.4), max_rotation=90.0, frame_margin=0.7, color_correlation=0.4,
                    clutter=1.0, distractors=(1, 4), occluders=(0, 2), noise=16.0)
        return cls(**{**base, **kw})

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in CATEGORIES[: self.num_categories])


# ----------------------------------------------------------------------------------------------- randomness
# A counter-based generator: every random number is splitmix64(key(seed, split, index) + counter), so image i
# does not depend on which other images are generated with it.
_U64 = np.uint64
_GOLDEN, _M1, _M2 = _U64(0x9E3779B97F4A7C15), _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, np.uint64) + _GOLDEN
        z = (z ^ (z >> _U64(30))) * _M1
        z = (z ^ (z >> _U64(27))) * _M2
        return z ^ (z >> _U64(31))


def image_keys(seed: int, split: str, indices: np.ndarray) -> np.ndarray:
    """uint64 ``(B,)`` per-image keys from ``(seed, split, index)``."""
    if split not in SPLITS:
        raise ConfigError(f"unknown synthparts split {split!r}; use one of {sorted(SPLITS)}")
    base = _splitmix(np.array([seed % 2**64], np.uint64) ^ _splitmix(np.array([SPLITS[split] + 1], np.uint64)))
    return _splitmix(base ^ np.asarray(indices, np.uint64))


class _Rand:
    """Uniform [0, 1) float64 streams for a batch of keys; ``u(stream, n)`` -> ``(B,)`` or ``(B, n)``."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys

    def u(self, stream: int, n: int | None = None) -> np.ndarray:
        ctr = _splitmix((np.uint64(stream) << _U64(16)) + np.arange(n or 1, dtype=np.uint64))
        with np.errstate(over="ignore"):
            h = _splitmix(self.keys[:, None] + ctr[None, :])
        out = (h >> _U64(11)).astype(np.float64) * (2.0**-53)
        return out[:, 0] if n is None else out

    def randint(self, stream: int, lo: int, hi: int, n: int | None = None) -> np.ndarray:
        """Integers in ``[lo, hi]``."""
        return (lo + np.floor(self.u(stream, n) * (hi - lo + 1))).astype(np.int64)

    def rotation(self, stream: int, max_deg: float, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin of an angle in [-max_deg, max_deg] via t = tan(angle/2) uniform (exact arithmetic)."""
        tmax = math.tan(math.radians(min(max_deg, 179.9)) / 2)
        t = (2 * self.u(stream, n) - 1) * tmax
        d = 1 + t * t
        return (1 - t * t) / d, 2 * t / d


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed bank of approximately N(0, 1) float32 noise, (8, 256, 256), from the hash (platform-independent).

    Per-image noise is a window of it at a hashed tile and offset: much cheaper than drawing fresh normals,
    and exactly reproducible. Irwin-Hall: the four 16-bit pieces of one hash are 4 uniforms, and
    (sum of 4 uniforms - 2) * sqrt(3) has unit variance.
    """
    h = _splitmix(np.arange(8 * 256 * 256, dtype=np.uint64) ^ _U64(0x5EED))
    pieces = h.view(np.uint16).reshape(-1, 4).astype(np.float32)
    u_sum = pieces.sum(1, dtype=np.float32) * np.float32(1 / 65536)
    return ((u_sum - 2) * np.float32(math.sqrt(3))).reshape(8, 256, 256)


def _noise(r: _Rand, stream: int, size: int, step: int = 1) -> np.ndarray:
    """float32 (B, size, size) noise windows; ``step`` > 1 gives coarser grain (each value covers step px)."""
    bank = _noise_bank()
    n_b, side = bank.shape[0], bank.shape[1]
    span = (size - 1) // step + 1
    tile = r.randint(stream, 0, n_b - 1)
    off = r.randint(stream + 1, 0, side - span - 1, 2)
    coords = np.arange(size) // step
    flat = (tile * side * side + off[:, 0] * side + off[:, 1])[:, None, None]
    idx = flat + coords[None, :, None] * side + coords[None, None, :]
    return np.take(bank.reshape(-1), idx)


# ----------------------------------------------------------------------------------------------- shapes
def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of local coordinates (part radius = 1) in shape ``shape``; u right, v down."""
    au, av = np.abs(u), np.abs(v)
    if shape == 0:  # disc
        return u * u + v * v <= 1
    if shape == 1:  # ring
        r2 = u * u + v * v
        return (r2 <= 1) & (r2 >= 0.3)
    if shape == 2:  # bar
        return (au <= 1) & (av <= 0.32)
    if shape == 3:  # equilateral triangle, apex up, centroid at the origin
        return (v <= 0.5) & (1.7320508 * au - v <= 1)
    if shape == 4:  # square
        return (au <= 0.78) & (av <= 0.78)
    if shape == 5:  # cross
        return ((au <= 1) & (av <= 0.3)) | ((av <= 1) & (au <= 0.3))
    if shape == 6:  # diamond
        return au + av <= 1
    if shape == 7:  # crescent, opening to +u (so a flip is visible)
        d = u - 0.5
        return (u * u + v * v <= 1) & (d * d + v * v >= 0.64)
    raise ValueError(shape)


@functools.lru_cache(maxsize=8)
def _tables(num_categories: int):
    """Per-(category, slot) arrays: shape id (-1 = none), dx, dy, size, cos/sin of rotation, color (-1)."""
    k, p = num_categories, NUM_SLOTS
    shape = np.full((k, p), -1, np.int64)
    geo = np.zeros((k, p, 5), np.float64)  # dx, dy, size, cos, sin
    color = np.full((k, p), -1, np.int64)
    for ci, (_, slots) in enumerate(CATEGORIES[:k]):
        for si, s in enumerate(slots):
            shape[ci, si] = SHAPES.index(s.shape)
            a = math.radians(s.rot)
            geo[ci, si] = (s.dx, s.dy, s.size, math.cos(a), math.sin(a))
            color[ci, si] = -1 if s.color is None else COLORS.index(s.color)
    return shape, geo, color


# ----------------------------------------------------------------------------------------------- rendering
def _stamp(canvas, maps, sel, px, py, cos, sin, fx, radius, shapes, rgb, values, half):
    """Draws one shape per selected image, on a (2*half+1)^2 window around its center.

    Args:
      canvas: float32 (B, S, S, 3) image, written in place.
      maps: dict name -> (B, S, S) label map, written in place with ``values[name]`` (b,) where drawn.
      sel: int (b,) image rows; px, py: (b,) center in pixels; cos, sin: (b,) rotation; fx: (b,) +-1 flip;
      radius: (b,) shape radius in pixels; shapes: (b,) shape ids or one shared id; rgb: (b, 3) colors.
    Returns:
      (drawn, area): drawn pixel (rows, ys, xs) and the (b,) shape area in pixels ignoring the frame edge.
    """
    s = canvas.shape[1]
    ar = np.arange(-half, half + 1)
    x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    xs, ys = x0[:, None] + ar, y0[:, None] + ar  # (b, w) pixel indices
    f32 = lambda a: np.asarray(a, np.float32)
    dx = f32(xs + 0.5 - px[:, None])[:, None, :]  # (b, 1, w)
    dy = f32(ys + 0.5 - py[:, None])[:, :, None]  # (b, w, 1)
    inv = 1.0 / radius
    c, sn = f32(cos * inv)[:, None, None], f32(sin * inv)[:, None, None]
    cf, sf = f32(cos * fx * inv)[:, None, None], f32(sin * fx * inv)[:, None, None]
    u = cf * dx + sf * dy  # undo rotation, flip and scale
    v = c * dy - sn * dx
    if np.ndim(shapes) == 0:
        inside = _inside(int(shapes), u, v)
    else:
        inside = np.zeros(u.shape, bool)
        for sh in np.unique(shapes):
            g = shapes == sh
            inside[g] = _inside(int(sh), u[g], v[g])
    area = inside.sum((1, 2))
    inside &= ((ys >= 0) & (ys < s))[:, :, None] & ((xs >= 0) & (xs < s))[:, None, :]
    b, wy, wx = np.nonzero(inside)
    rows, yy, xx = sel[b], ys[b, wy], xs[b, wx]
    canvas[rows, yy, xx] = rgb[b]
    for name, val in values.items():
        maps[name][rows, yy, xx] = val[b] if np.ndim(val) else val
    return area


def _background(r: _Rand, cfg: SynthPartsConfig, b: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 (B, S, S, 3) textured background and int (B,) texture ids."""
    s = cfg.size
    tex = r.randint(10, 0, len(TEXTURES) - 1)
    gray = 70 + 120 * r.u(11)
    c1 = gray[:, None] + (r.u(12, 3) - 0.5) * 50
    sign = np.where(gray > 130, -1.0, 1.0)  # the second color moves toward mid-gray, so it stays in range
    contrast = (45 + 55 * r.u(14)) * sign
    c2 = np.clip(c1 + cfg.clutter * (contrast[:, None] + (r.u(15, 3) - 0.5) * 30), 0, 255)
    period = s * (0.07 + 0.1 * r.u(16))
    cos, sin = r.rotation(17, 90.0)
    phase = r.u(18, 2)
    m = np.zeros((b, s, s), np.float32)
    grid = np.arange(s, dtype=np.float32) + np.float32(0.5)
    for t in (1, 2, 3):  # periodic textures: two rotated, scaled coordinates w1, w2
        g = np.nonzero(tex == t)[0]
        if not len(g):
            continue
        cg, sg = (cos[g] / period[g]).astype(np.float32), (sin[g] / period[g]).astype(np.float32)
        pg = phase[g].astype(np.float32)
        xg, yg = grid[None, None, :], grid[None, :, None]
        # Phases go into the small (g, 1, S) terms so each full-size w costs one add.
        w1 = (xg * cg[:, None, None] + pg[:, 0, None, None]) + yg * sg[:, None, None]
        w2 = (pg[:, 1, None, None] - xg * sg[:, None, None]) + yg * cg[:, None, None]
        if t == 1:  # stripes
            m[g] = (w1 - np.floor(w1)) < 0.5
        elif t == 2:  # dots
            f1, f2 = w1 - np.floor(w1) - 0.5, w2 - np.floor(w2) - 0.5
            m[g] = f1 * f1 + f2 * f2 < 0.09
        else:  # checker: parity of floor(w1) + floor(w2)
            q = np.floor(w1) + np.floor(w2)
            m[g] = q - 2 * np.floor(q * 0.5)
    g = np.nonzero(tex == 4)[0]
    if len(g):  # blotchy noise texture: coarse noise windows squashed into [0, 1]
        m[g] = np.clip(0.5 + 0.35 * _noise(_Rand(r.keys[g]), 19, s, step=max(2, s // 24)), 0, 1)
    # In place into one fresh buffer: these (B, S, S, 3) passes dominate the cost at small sizes.
    canvas = np.empty((b, s, s, 3), np.float32)
    np.multiply(m[..., None], (c2 - c1).astype(np.float32)[:, None, None, :], out=canvas)
    canvas += c1.astype(np.float32)[:, None, None, :]
    return canvas, tex


def _outputs(n: int, cfg: SynthPartsConfig) -> dict[str, np.ndarray]:
    """Zeroed output arrays of :func:`generate` for ``n`` images."""
    s, p = cfg.size, NUM_SLOTS
    maps = {k: np.zeros((n, s, s), np.uint8) for k in ("object", "part", "color", "slot")}
    return {"image": np.zeros((n, s, s, 3), np.uint8), "label": np.zeros(n, np.int32), **maps,
            "texture": np.zeros(n, np.int32), "landmarks": np.zeros((n, p, 2), np.float32),
            "landmark_visible": np.zeros((n, p), bool), "slot_part": np.zeros((n, p), np.int32)}


def _render(keys: np.ndarray, cfg: SynthPartsConfig, out: dict[str, np.ndarray]) -> None:
    """Renders the images with the given keys into ``out`` (zeroed views of :func:`_outputs`' arrays)."""
    b, s, k, p = len(keys), cfg.size, cfg.num_categories, NUM_SLOTS
    r = _Rand(keys)
    shape_t, geo_t, color_t = _tables(k)
    label = r.randint(0, 0, k - 1)
    canvas, texture = _background(r, cfg, b)
    maps = {n: out[n] for n in ("object", "part", "color", "slot")}  # drawn into directly
    n_pal = len(COLORS)

    def colors(stream, n=None):  # palette ids and brightness-jittered RGB
        cid = r.randint(stream, 0, n_pal - 1, n)
        return cid, PALETTE[cid] * (0.9 + 0.15 * r.u(stream + 1, n))[..., None].astype(np.float32)

    # Distractors: random small parts anywhere, behind the object; colored, but not part of any object.
    dn = r.randint(20, *cfg.distractors)
    for j in range(cfg.distractors[1]):
        sel = np.nonzero(j < dn)[0]
        if not len(sel):
            continue
        rr = _Rand(r.keys[sel])
        st = 100 + 10 * j
        rad = s * (0.05 + 0.05 * rr.u(st))
        cos, sin = rr.rotation(st + 1, 180.0)
        cid = rr.randint(st + 2, 0, n_pal - 1)
        rgb = PALETTE[cid] * (0.9 + 0.15 * rr.u(st + 3))[:, None].astype(np.float32)
        pos = rr.u(st + 4, 2) * s
        _stamp(canvas, maps, sel, pos[:, 0], pos[:, 1], cos, sin, np.ones(len(sel)), rad,
               rr.randint(st + 5, 0, len(SHAPES) - 1), rgb, {"color": (cid + 1).astype(np.uint8)},
               int(math.ceil(s * 0.1 * _EXTENT)) + 1)

    # The object: center, radius, rotation, flip.
    radius = s * (cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * r.u(30))
    lo = cfg.frame_margin * radius
    center = lo[:, None] + r.u(31, 2) * np.maximum(s - 2 * lo, 0)[:, None]
    cos, sin = r.rotation(32, cfg.max_rotation)
    fx = np.where(r.u(33) < cfg.flip_prob, -1.0, 1.0)
    slot_cid, slot_rgb = colors(40, p)
    corr = r.u(42, p) < cfg.color_correlation
    pref = color_t[label]  # (B, P)
    slot_cid = np.where(corr & (pref >= 0), pref, slot_cid)
    slot_rgb = np.where((corr & (pref >= 0))[..., None], PALETTE[np.maximum(pref, 0)], slot_rgb)

    shapes, geo = shape_t[label], geo_t[label]  # (B, P), (B, P, 5)
    if cfg.part_offset_jitter > 0 or cfg.part_rotation_jitter > 0:  # articulation (own streams; rigid bytes unchanged)
        geo = geo.copy()
        geo[..., :2] += (2 * r.u(34, 2 * p).reshape(b, p, 2) - 1) * cfg.part_offset_jitter
        jc, js = r.rotation(35, cfg.part_rotation_jitter, p)  # (B, P)
        geo[..., 3], geo[..., 4] = geo[..., 3] * jc - geo[..., 4] * js, geo[..., 4] * jc + geo[..., 3] * js
    drawn = r.u(36, p) >= cfg.part_drop if cfg.part_drop > 0 else np.ones((b, p), bool)
    gx, gy = geo[..., 0] * fx[:, None], geo[..., 1]
    centers = np.stack([center[:, 0:1] + radius[:, None] * (cos[:, None] * gx - sin[:, None] * gy),
                        center[:, 1:2] + radius[:, None] * (sin[:, None] * gx + cos[:, None] * gy)], -1)
    # A part's total rotation: object rotation, then (in the flipped frame) the part's own rotation.
    pc = cos[:, None] * geo[..., 3] - sin[:, None] * fx[:, None] * geo[..., 4]
    ps = sin[:, None] * geo[..., 3] + cos[:, None] * fx[:, None] * geo[..., 4]
    area = np.zeros((b, p), np.int64)
    for j in range(p):  # slots in drawing order; categories are disjoint image sets, each with its own window
        for ci in range(k):
            if shape_t[ci, j] < 0:
                continue
            sel = np.nonzero((label == ci) & drawn[:, j])[0]
            if not len(sel):
                continue
            half = int(math.ceil(s * cfg.scale[1] * geo_t[ci, j, 2] * _EXTENT)) + 1
            vals = {"object": np.uint8(ci + 1), "part": np.uint8(shape_t[ci, j] + 1),
                    "color": (slot_cid[sel, j] + 1).astype(np.uint8), "slot": np.uint8(j + 1)}
            area[sel, j] = _stamp(canvas, maps, sel, centers[sel, j, 0], centers[sel, j, 1], pc[sel, j],
                                  ps[sel, j], fx[sel], radius[sel] * geo[sel, j, 2], shape_t[ci, j],
                                  slot_rgb[sel, j], vals, half)

    # Occluders: squares/discs over the object; they hide object pixels (object/part/slot -> 0).
    on = r.randint(50, *cfg.occluders)
    for j in range(cfg.occluders[1]):
        sel = np.nonzero(j < on)[0]
        if not len(sel):
            continue
        rr = _Rand(r.keys[sel])
        st = 200 + 10 * j
        rad = radius[sel] * (0.25 + 0.2 * rr.u(st))
        ocos, osin = rr.rotation(st + 1, 45.0)
        cid = rr.randint(st + 2, 0, n_pal - 1)
        rgb = PALETTE[cid] * (0.9 + 0.15 * rr.u(st + 3))[:, None].astype(np.float32)
        pos = center[sel] + (rr.u(st + 4, 2) * 1.8 - 0.9) * radius[sel, None]
        zero = np.uint8(0)
        _stamp(canvas, maps, sel, pos[:, 0], pos[:, 1], ocos, osin, np.ones(len(sel)), rad,
               np.where(rr.u(st + 5) < 0.5, 0, 4), rgb,
               {"color": (cid + 1).astype(np.uint8), "object": zero, "part": zero, "slot": zero},
               int(math.ceil(s * cfg.scale[1] * 0.45 * _EXTENT)) + 1)

    # Round half up: add 0.5 (with the noise), clip, truncate in the cast to uint8.
    shift = np.float32(cfg.noise) * _noise(r, 60, s) + np.float32(0.5) if cfg.noise > 0 else np.float32(0.5)
    canvas += shift[..., None] if cfg.noise > 0 else shift
    np.clip(canvas, 0, 255, out=canvas)
    np.copyto(out["image"], canvas, casting="unsafe")

    # Visibility: count each slot's surviving pixels with one bincount over (image, slot) pairs.
    counts = np.bincount((maps["slot"] + np.arange(b, dtype=np.int64)[:, None, None] * (p + 1)).reshape(-1),
                         minlength=b * (p + 1)).reshape(b, p + 1)[:, 1:]
    in_frame = ((centers >= 0) & (centers < s)).all(-1)
    visible = (shapes >= 0) & in_frame & (counts > 0) & (counts >= cfg.min_visible * area)
    out["label"][:] = label
    out["texture"][:] = texture
    out["landmarks"][:] = np.where((shapes >= 0)[..., None], centers, -1.0)
    out["landmark_visible"][:] = visible
    out["slot_part"][:] = shapes + 1


def generate(n: int, *, seed: int = 0, start: int = 0, split: str = "train",
             config: SynthPartsConfig | None = None, chunk: int = 512) -> dict[str, np.ndarray]:
    """Generates images ``start .. start+n-1`` of ``(seed, split)``.

    Image ``i`` depends only on ``(seed, split, i, config)``: generating in chunks gives the same bytes as one
    call, and the train and test splits never share an image.

    Returns a dict of NumPy arrays (``S = config.size``, ``P = NUM_SLOTS``):
      image uint8 (n, S, S, 3); label int32 (n,) category;
      object, part, color, slot uint8 (n, S, S) label maps (0 = none; see the module docstring);
      texture int32 (n,); landmarks float32 (n, P, 2) part-slot centers (x, y); landmark_visible bool (n, P);
      slot_part int32 (n, P) part label (shape id + 1) of each slot, 0 where the category has no such slot.
    """
    cfg = config or SynthPartsConfig()
    if n < 0 or start < 0:
        raise ConfigError(f"generate(): n and start must be >= 0, got n={n}, start={start}")
    keys = image_keys(seed, split, np.arange(start, start + n, dtype=np.uint64))
    out = _outputs(n, cfg)
    for i in range(0, n, chunk):
        _render(keys[i: i + chunk], cfg, {k: v[i: i + chunk] for k, v in out.items()})
    return out


def concepts(config: SynthPartsConfig | None = None) -> dict[str, tuple[str, ...]]:
    """Names of the values of each annotation (index 0 = none/background; texture is 0-based)."""
    cfg = config or SynthPartsConfig()
    return {
        "object": ("background", *cfg.class_names),
        "part": ("none", *SHAPES),
        "color": ("background", *COLORS),
        "slot": ("none", *(f"slot{j}" for j in range(NUM_SLOTS))),
        "texture": TEXTURES,
    }
