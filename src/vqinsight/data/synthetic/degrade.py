"""Controlled degradations, each with a severity in [0, 1]; severity 0 leaves the input unchanged.

Spatial (images and videos): exposure, blur, noise, compression. Temporal (videos): stutter, freeze, drop, flicker,
jitter. Alignment: mismatch, which alters the prompt (a colour, shape or direction word) and never the pixels.
Every function is deterministic given its inputs and the numpy ``Generator`` passed in.
Frames are uint8 ``(T, H, W, 3)``.
"""

from __future__ import annotations

import io
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from vqinsight.data.synthetic.scenes import SceneSpec, alter_shape, describe, render

SPATIAL: tuple[str, ...] = ("exposure", "blur", "noise", "compression")
TEMPORAL: tuple[str, ...] = ("stutter", "freeze", "drop", "flicker", "jitter")
ALIGNMENT: tuple[str, ...] = ("mismatch",)
ALL_DEGRADATIONS: tuple[str, ...] = SPATIAL + TEMPORAL + ALIGNMENT
EXPOSURE_MODES: tuple[str, ...] = ("under", "over")


def _check(frames: np.ndarray, s: float) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {s}")


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- spatial
def exposure(frames: np.ndarray, s: float, mode: str = "under") -> np.ndarray:
    """Under-exposure multiplies by ``1 - 0.8 s``; over-exposure moves each pixel ``0.7 s`` of the way to white."""
    _check(frames, s)
    x = frames.astype(np.float32)
    if mode == "under":
        return _to_u8(x * (1.0 - 0.8 * s))
    if mode == "over":
        return _to_u8(x + (255.0 - x) * 0.7 * s)
    raise ValueError(f"exposure mode must be one of {EXPOSURE_MODES}, got {mode!r}")


def blur(frames: np.ndarray, s: float) -> np.ndarray:
    """Gaussian blur of radius ``2.5 s`` pixels, frame by frame (PIL)."""
    _check(frames, s)
    if s <= 0:
        return frames.copy()
    f = ImageFilter.GaussianBlur(radius=2.5 * s)
    return np.stack([np.asarray(Image.fromarray(fr).filter(f)) for fr in frames])


def noise(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise with standard deviation ``40 s`` grey levels."""
    _check(frames, s)
    if s <= 0:
        return frames.copy()
    return _to_u8(frames.astype(np.float32) + rng.normal(0.0, 40.0 * s, frames.shape).astype(np.float32))


def jpeg_quality(s: float) -> int:
    """JPEG quality used by :func:`compression`: 90 at severity 0 down to 5 at severity 1."""
    return max(5, int(round(90 - 85 * s)))


def compression(frames: np.ndarray, s: float) -> np.ndarray:
    """Re-encode every frame as JPEG at quality :func:`jpeg_quality` (s)."""
    _check(frames, s)
    if s <= 0:
        return frames.copy()
    out = []
    for fr in frames:
        buf = io.BytesIO()
        Image.fromarray(fr).save(buf, format="JPEG", quality=jpeg_quality(s))
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.stack(out)


# --------------------------------------------------------------------------- temporal
def stutter(frames: np.ndarray, s: float) -> np.ndarray:
    """Hold every k-th frame for k frames (k = 2 + floor(3 s), at most 5), keeping the length."""
    _check(frames, s)
    if s <= 0:
        return frames.copy()
    k = min(5, 2 + int(3 * s))
    idx = (np.arange(len(frames)) // k) * k
    return frames[idx]


def freeze(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Freeze a run of ``2 + round(s (T/2 - 2))`` consecutive frames at a random start."""
    _check(frames, s)
    t = len(frames)
    if s <= 0 or t < 2:
        return frames.copy()
    run = min(t, 2 + int(round(s * max(0.0, t / 2 - 2))))
    start = int(rng.integers(0, t - run + 1))
    out = frames.copy()
    out[start : start + run] = frames[start]
    return out


def drop_indices(nframes: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """Source indices for :func:`drop`: steps of 1 with ``max(1, round(s T/4))`` jumps of ``2 + round(2 s)``."""
    idx = np.arange(nframes)
    if s <= 0 or nframes < 2:
        return idx
    njumps = min(nframes - 1, max(1, int(round(s * nframes / 4))))
    steps = np.ones(nframes - 1, dtype=np.int64)
    steps[rng.choice(nframes - 1, size=njumps, replace=False)] += 1 + int(round(2 * s))
    return np.concatenate([[0], np.cumsum(steps)])


def drop(source: np.ndarray, s: float, rng: np.random.Generator, nframes: int) -> np.ndarray:
    """Take ``nframes`` frames from a longer ``source`` (at least 2 nframes), skipping frames at random jumps."""
    _check(source, s)
    idx = drop_indices(nframes, s, rng)
    if idx[-1] >= len(source):
        raise ValueError(f"drop needs a source of at least {idx[-1] + 1} frames, got {len(source)}")
    return source[idx]


def flicker(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Per-frame brightness gain ``1 + 0.5 s sin(2 pi f t + phi)``, f ~ U(0.3, 0.5) cycles/frame."""
    _check(frames, s)
    if s <= 0:
        return frames.copy()
    f, phi = rng.uniform(0.3, 0.5), rng.uniform(0.0, 2 * math.pi)
    gain = 1.0 + 0.5 * s * np.sin(2 * math.pi * f * np.arange(len(frames)) + phi)
    return _to_u8(frames.astype(np.float32) * gain[:, None, None, None].astype(np.float32))


def jitter(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Shift every frame by a random (dx, dy) in [-m, m]^2 pixels, m = max(1, round(0.1 s min(H, W))), edge-padded."""
    _check(frames, s)
    if s <= 0:
        return frames.copy()
    _, h, w, _ = frames.shape
    m = max(1, int(round(0.1 * s * min(h, w))))
    padded = np.pad(frames, ((0, 0), (m, m), (m, m), (0, 0)), mode="edge")
    shifts = rng.integers(-m, m + 1, size=(len(frames), 2))
    return np.stack([padded[i, m + dy : m + dy + h, m + dx : m + dx + w] for i, (dx, dy) in enumerate(shifts)])


# --------------------------------------------------------------------------- alignment
def mismatch(spec: SceneSpec, s: float, rng: np.random.Generator) -> tuple[SceneSpec, float]:
    """Misdescribe ``ceil(s n)`` of the n shapes (one word each). Returns the spec the PROMPT is written from and
    the realised severity (the fraction of shapes misdescribed). The pixels always come from the true spec."""
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {s}")
    n = len(spec.shapes)
    k = min(n, math.ceil(s * n - 1e-9)) if s > 0 else 0
    if k == 0:
        return spec, 0.0
    chosen = set(int(i) for i in rng.choice(n, size=k, replace=False))
    shapes = tuple(alter_shape(sh, rng) if i in chosen else sh for i, sh in enumerate(spec.shapes))
    return SceneSpec(spec.bg_from, spec.bg_to, spec.orientation, shapes, spec.stripes, spec.stripe_period), k / n


# --------------------------------------------------------------------------- sampling and application
@dataclass(frozen=True)
class Degradations:
    """The active degradations of one item: name → severity (absent = 0), and the exposure direction."""

    severities: dict[str, float] = field(default_factory=dict)
    exposure_mode: str = "under"

    def get(self, name: str) -> float:
        """Severity of ``name`` (0 when inactive)."""
        return float(self.severities.get(name, 0.0))

    def to_dict(self) -> dict:
        """JSON-friendly record."""
        return {"severities": dict(sorted(self.severities.items())), "exposure_mode": self.exposure_mode}


MIX_KEYS: tuple[str, ...] = ("exposure_p", "under_p", "other_max_severity", "max_active", "exposure_min")


@dataclass(frozen=True)
class Mix:
    """How degradations are drawn (:func:`sample_degradations`, :func:`sample_pair`). The defaults are the
    generator's original mix and reproduce its outputs byte for byte.

    exposure_p: probability that exposure is active; under_p: probability that its mode is under-exposure;
    exposure_min: exposure severity ~ U(exposure_min, max_severity) when active (max_severity is the profile cap,
    1 unless a T2V model profile lowers it); other_max_severity: every other family's severity ~
    U(0, min(max_severity, other_max_severity)); max_active: at most this many active degradations (at least 1).
    ``Mix(exposure_p=1, under_p=1, other_max_severity=0.25)`` gives an exposure-dominated mix in which global
    brightness is the main quality cue (what a tiny model can learn in the embedded demo)."""

    exposure_p: float = 0.6
    under_p: float = 0.8
    other_max_severity: float = 1.0
    max_active: int = 3
    exposure_min: float = 0.0

    def __post_init__(self) -> None:
        for name in ("exposure_p", "under_p", "other_max_severity", "exposure_min"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= v <= 1.0:
                raise ValueError(f"mix.{name} must be a number in [0, 1], got {v!r}")
            object.__setattr__(self, name, float(v))
        m = self.max_active
        if isinstance(m, float) and m.is_integer():  # 2.0 from YAML/JSON
            m = int(m)
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1:
            raise ValueError(f"mix.max_active must be an integer >= 1, got {self.max_active!r}")
        object.__setattr__(self, "max_active", int(m))

    @classmethod
    def coerce(cls, value: Mix | dict | None) -> Mix:
        """``None`` → the default mix; a :class:`Mix` as is; a dict (from config or JSON) of :data:`MIX_KEYS`.
        Unknown keys and bad values raise ``ValueError``."""
        if value is None:
            return cls()
        if isinstance(value, Mix):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"mix must be a mapping of {list(MIX_KEYS)}, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in MIX_KEYS)
        if unknown:
            raise ValueError(f"mix: unknown key(s) {unknown}; known: {list(MIX_KEYS)}")
        return cls(**value)


DEFAULT_MIX = Mix()


def sample_degradations(
    rng: np.random.Generator,
    *,
    video: bool,
    aigc: bool,
    pool: tuple[str, ...] | None = None,
    max_severity: float = 1.0,
    mix: Mix | None = None,
) -> Degradations:
    """1..mix.max_active active degradations: exposure with probability ``mix.exposure_p``, the rest drawn from
    ``pool`` (default: every applicable non-exposure family). Exposure severity ~ U(mix.exposure_min, max_severity)
    (the upper bound raised to exposure_min if lower), the others ~ U(0, min(max_severity, mix.other_max_severity));
    under-exposure with probability ``mix.under_p`` (80 % by default). The draw order never depends on the mix."""
    mix = mix or DEFAULT_MIX
    families = [d for d in SPATIAL[1:]] + (list(TEMPORAL) if video else []) + (list(ALIGNMENT) if aigc else [])
    if pool is not None:
        families = [d for d in families if d in pool]
    k = int(rng.integers(1, mix.max_active + 1))
    active = ["exposure"] if rng.random() < mix.exposure_p else []
    n_other = min(len(families), k - len(active))
    if n_other > 0:
        active += [families[int(i)] for i in rng.choice(len(families), size=n_other, replace=False)]
    if not active:
        active = ["exposure"]
    other_max = min(max_severity, mix.other_max_severity)
    exp_range = (mix.exposure_min, max(max_severity, mix.exposure_min))
    sev = {
        name: float(rng.uniform(*exp_range) if name == "exposure" else rng.uniform(0.0, other_max))
        for name in sorted(active)
    }
    mode = "under" if rng.random() < mix.under_p else "over"
    return Degradations(sev, mode)


PAIR_MODES: tuple[tuple[str, float], ...] = (("independent", 0.7), ("tie", 0.18), ("bothbad", 0.12))


def sample_pair(
    rng: np.random.Generator,
    profiles: tuple[tuple[tuple[str, ...], float], ...] | None = None,
    mix: Mix | None = None,
) -> tuple[str, Degradations, Degradations]:
    """Degradations of a comparison pair (AIGC videos): ``(mode, a, b)`` with mode drawn from :data:`PAIR_MODES`.

    independent: each side sampled on its own (from its ``(pool, max_severity)`` profile when given, with ``mix``);
    tie: b = a with every severity moved by at most ±0.02 (a sampled with ``mix``); bothbad: a heavy exposure +
    temporal + mismatch mix whatever the ``mix`` (its severities are what makes both sides bad), exposed in the mix's
    prevailing direction (under when ``mix.under_p >= 0.5``, no extra draw), and b ≈ a as for a tie.
    The labels always come from the realised severities, so modes only shape the mix."""
    mix = mix or DEFAULT_MIX
    mode = PAIR_MODES[int(rng.choice(len(PAIR_MODES), p=[p for _, p in PAIR_MODES]))][0]
    if mode == "independent":
        sides = []
        for pool, mx in profiles or ((None, 1.0), (None, 1.0)):
            sides.append(sample_degradations(rng, video=True, aigc=True, pool=pool, max_severity=mx, mix=mix))
        return mode, sides[0], sides[1]
    if mode == "bothbad":
        t = ("stutter", "freeze", "drop", "flicker")[int(rng.integers(4))]
        sev = {"exposure": rng.uniform(0.85, 1.0), t: rng.uniform(0.75, 1.0), "mismatch": rng.uniform(0.5, 1.0)}
        a = Degradations({k: float(v) for k, v in sorted(sev.items())}, "under" if mix.under_p >= 0.5 else "over")
    else:
        a = sample_degradations(rng, video=True, aigc=True, mix=mix)
    jittered = {k: float(np.clip(v + rng.uniform(-0.02, 0.02), 0.0, 1.0)) for k, v in a.severities.items()}
    return mode, a, Degradations(jittered, a.exposure_mode)


def apply_frames(
    spec: SceneSpec, deg: Degradations, rng: np.random.Generator, nframes: int, height: int, width: int
) -> np.ndarray:
    """Render ``spec`` and apply the pixel degradations of ``deg`` in a fixed order:
    drop → stutter → freeze → jitter → flicker → exposure → blur → noise → compression."""
    if deg.get("drop") > 0:
        frames = drop(render(spec, 2 * nframes, height, width), deg.get("drop"), rng, nframes)
    else:
        frames = render(spec, nframes, height, width)
    if deg.get("stutter") > 0:
        frames = stutter(frames, deg.get("stutter"))
    if deg.get("freeze") > 0:
        frames = freeze(frames, deg.get("freeze"), rng)
    if deg.get("jitter") > 0:
        frames = jitter(frames, deg.get("jitter"), rng)
    if deg.get("flicker") > 0:
        frames = flicker(frames, deg.get("flicker"), rng)
    if deg.get("exposure") > 0:
        frames = exposure(frames, deg.get("exposure"), deg.exposure_mode)
    if deg.get("blur") > 0:
        frames = blur(frames, deg.get("blur"))
    if deg.get("noise") > 0:
        frames = noise(frames, deg.get("noise"), rng)
    if deg.get("compression") > 0:
        frames = compression(frames, deg.get("compression"))
    return frames


def make_item(
    spec: SceneSpec,
    deg: Degradations,
    rng: np.random.Generator,
    nframes: int,
    height: int,
    width: int,
    mismatch_in: str = "prompt",
) -> tuple[np.ndarray, str, Degradations]:
    """Frames, prompt and the realised degradations (mismatch severity = the fraction actually misdescribed).

    ``mismatch_in="prompt"``: the prompt is written from the altered spec and the pixels show the true scene.
    ``mismatch_in="pixels"``: the prompt describes the true scene and the pixels show the altered one (used where
    several videos share one prompt: multi-model sets and comparison pairs)."""
    if mismatch_in not in ("prompt", "pixels"):
        raise ValueError(f"mismatch_in must be 'prompt' or 'pixels', got {mismatch_in!r}")
    altered, realised = mismatch(spec, deg.get("mismatch"), rng)
    sev = dict(deg.severities)
    if "mismatch" in sev:
        sev["mismatch"] = realised
    pixel_spec, prompt_spec = (spec, altered) if mismatch_in == "prompt" else (altered, spec)
    frames = apply_frames(pixel_spec, deg, rng, nframes, height, width)
    return frames, describe(prompt_spec), Degradations(sev, deg.exposure_mode)
