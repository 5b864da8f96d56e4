"""Procedurally rendered scenes: moving coloured shapes over a gradient, plus a prompt that describes them.

Pure numpy. A :class:`SceneSpec` is sampled from a numpy ``Generator`` (:func:`random_scene`), rendered into
uint8 frames ``(T, H, W, 3)`` (:func:`render`, ``nframes=1`` for images) and described in words (:func:`describe`),
e.g. ``"a red circle moving left and a blue square moving up over a green-to-black gradient"``.
Positions, sizes and speeds are fractions of the frame, so one spec renders at any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 220, 40),
    "white": (245, 245, 245),
    "purple": (150, 50, 190),
    "orange": (245, 140, 30),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "gray": (120, 120, 120),
    "navy": (20, 30, 90),
    "teal": (20, 120, 120),
    "brown": (110, 70, 30),
    "pink": (230, 150, 180),
    "green": (30, 110, 40),
    "sky": (120, 180, 235),
}
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
ORIENTATIONS: tuple[str, ...] = ("vertical", "horizontal")


@dataclass(frozen=True)
class Shape:
    """One moving shape. ``size`` is the half-extent as a fraction of min(H, W); ``x``, ``y`` the start centre as
    fractions of the width and height; ``speed`` the displacement per frame as a fraction of the frame."""

    kind: str
    colour: str
    size: float
    x: float
    y: float
    direction: str
    speed: float

    def __post_init__(self) -> None:
        if self.kind not in SHAPES or self.colour not in COLOURS or self.direction not in DIRECTIONS:
            raise ValueError(f"invalid shape {self}")


@dataclass(frozen=True)
class SceneSpec:
    """A scene: a two-colour gradient background, 1-3 shapes, optional stripe texture."""

    bg_from: str
    bg_to: str
    orientation: str
    shapes: tuple[Shape, ...]
    stripes: bool = False
    stripe_period: float = 0.125  # fraction of the width

    def __post_init__(self) -> None:
        if self.bg_from not in BACKGROUND_COLOURS or self.bg_to not in BACKGROUND_COLOURS:
            raise ValueError(f"unknown background colour in {self.bg_from!r}, {self.bg_to!r}")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if not 1 <= len(self.shapes) <= 3:
            raise ValueError(f"a scene has 1-3 shapes, got {len(self.shapes)}")


def random_shape(rng: np.random.Generator) -> Shape:
    """Sample one shape with a random kind, colour, size, start position, direction and speed."""
    return Shape(
        kind=SHAPES[int(rng.integers(len(SHAPES)))],
        colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
        size=float(rng.uniform(0.12, 0.22)),
        x=float(rng.uniform(0.15, 0.85)),
        y=float(rng.uniform(0.2, 0.8)),
        direction=list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))],
        speed=float(rng.uniform(0.02, 0.05)),
    )


def random_scene(rng: np.random.Generator) -> SceneSpec:
    """Sample a scene: distinct gradient end colours, 1-3 shapes, stripes with probability 0.3."""
    bg = list(BACKGROUND_COLOURS)
    i, j = rng.choice(len(bg), size=2, replace=False)
    nshapes = int(rng.integers(1, 4))
    return SceneSpec(
        bg_from=bg[int(i)],
        bg_to=bg[int(j)],
        orientation=ORIENTATIONS[int(rng.integers(2))],
        shapes=tuple(random_shape(rng) for _ in range(nshapes)),
        stripes=bool(rng.random() < 0.3),
        stripe_period=float(rng.uniform(0.08, 0.2)),
    )


def _background(spec: SceneSpec, height: int, width: int) -> np.ndarray:
    """The static background (H, W, 3) float32 in [0, 255]."""
    a = np.asarray(BACKGROUND_COLOURS[spec.bg_from], np.float32)
    b = np.asarray(BACKGROUND_COLOURS[spec.bg_to], np.float32)
    if spec.orientation == "vertical":
        ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None] * np.ones((1, width, 1), np.float32)
    else:
        ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 1), np.float32)
    img = a * (1.0 - ramp) + b * ramp
    if spec.stripes:
        period = max(2.0, spec.stripe_period * width)
        xx = np.arange(width, dtype=np.float32)[None, :]
        yy = np.arange(height, dtype=np.float32)[:, None]
        band = ((xx + yy) // (period / 2.0)) % 2  # diagonal stripes
        img = img * (1.0 - 0.25 * band[..., None])
    return img


def _shape_mask(shape: Shape, cx: np.ndarray, cy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean masks (T, H, W) of ``shape`` centred at pixel coordinates ``cx``, ``cy`` (each shape (T,))."""
    r = shape.size * min(height, width)
    xx = np.arange(width, dtype=np.float32)[None, None, :] - cx[:, None, None]
    yy = np.arange(height, dtype=np.float32)[None, :, None] - cy[:, None, None]
    if shape.kind == "circle":
        return xx**2 + yy**2 <= r**2
    if shape.kind == "square":
        return (np.abs(xx) <= r) & (np.abs(yy) <= r)
    # upward triangle: apex at (0, -r), base at y = +r with half-width r
    inside_y = (yy >= -r) & (yy <= r)
    return inside_y & (np.abs(xx) <= (yy + r) / 2.0)


def render(spec: SceneSpec, nframes: int, height: int, width: int, times: np.ndarray | None = None) -> np.ndarray:
    """Render ``spec`` to uint8 frames (T, H, W, 3). ``times`` (frame indices, float) defaults to 0..nframes-1.

    Shapes move ``speed`` per frame in their direction and wrap around the frame edges, so any time is valid.
    """
    if nframes < 1 or height < 2 or width < 2:
        raise ValueError(f"need nframes >= 1 and a frame of at least 2x2, got {nframes}x{height}x{width}")
    t = np.arange(nframes, dtype=np.float32) if times is None else np.asarray(times, np.float32)
    if t.shape != (nframes,):
        raise ValueError(f"times must have shape ({nframes},), got {t.shape}")
    frames = np.repeat(_background(spec, height, width)[None], nframes, axis=0)
    for shape in spec.shapes:
        dx, dy = DIRECTIONS[shape.direction]
        r = shape.size * min(height, width)
        # wrap over an extended range so a shape leaves one edge completely before entering the other
        span_x, span_y = width + 2 * r, height + 2 * r
        cx = (shape.x * width + dx * shape.speed * width * t + r) % span_x - r
        cy = (shape.y * height + dy * shape.speed * height * t + r) % span_y - r
        mask = _shape_mask(shape, cx, cy, height, width)
        frames[mask] = np.asarray(COLOURS[shape.colour], np.float32)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def describe_shape(shape: Shape) -> str:
    """``"a red circle moving left"``."""
    return f"a {shape.colour} {shape.kind} moving {shape.direction}"


def describe(spec: SceneSpec) -> str:
    """A prompt describing the scene, e.g. ``"a red circle moving left and a blue square moving up over a
    green-to-black gradient"`` (``", with diagonal stripes"`` appended for striped backgrounds)."""
    parts = [describe_shape(s) for s in spec.shapes]
    things = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text = f"{things} over a {spec.bg_from}-to-{spec.bg_to} gradient"
    return text + (", with diagonal stripes" if spec.stripes else "")


def alter_shape(shape: Shape, rng: np.random.Generator) -> Shape:
    """Return ``shape`` with its colour, kind or direction (chosen at random) swapped for a different value."""
    field = ("colour", "kind", "direction")[int(rng.integers(3))]
    pool = {"colour": list(COLOURS), "kind": list(SHAPES), "direction": list(DIRECTIONS)}[field]
    others = [v for v in pool if v != getattr(shape, field)]
    return replace(shape, **{field: others[int(rng.integers(len(others)))]})
