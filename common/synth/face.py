"""Procedural FACS face: subject identity, AU-driven geometry and OpenCV rendering.

The face lives in a canonical frame (x right, y down, one unit ~ 1.3 face heights; origin between
the cheekbones). Named control points (brows, lids, nose, lips, jaw, cheeks) are built from the
subject's proportions, every action unit adds a displacement (or a wrinkle/shading strength) scaled by
its activation in [0, 1], a similarity transform with a little parallax places the face in the image,
and cv2 draws it. Per-sample nuisance (pose, lighting, blur, sensor noise, gaze) comes from a seed.

"Left" and "right" always mean image left / image right (the convention of 5-point face landmarks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

import cv2
import numpy as np

AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26, 27, 45)
SIDES: tuple[str, str] = ("left", "right")
# AUs the renderer can apply to one side only (FACS R12 / L14 and the like).
UNILATERAL_CAPABLE: frozenset[int] = frozenset({1, 2, 4, 6, 7, 12, 14, 15, 20, 45})

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT
_FACE_SCALE = 0.92  # canonical unit -> fraction of the image side
_ORIGIN_Y = 0.53  # canonical origin sits slightly below the image centre (room for hair)
_YAW_PARALLAX = 0.09  # canonical units a feature of depth 1 moves at yaw 1

# Relative depth of each part: under yaw, deeper (more protruding) parts shift further.
_DEPTH = {
    "outline": 0.0, "ear": -0.35, "hair": -0.05, "neck": -0.3, "body": -0.4, "forehead": 0.3,
    "brow": 0.4, "eye": 0.35, "cheek": 0.45, "bridge": 0.7, "nose": 1.0, "nostril": 0.85,
    "mouth": 0.6, "chin": 0.5, "glasses": 0.55,
}


def rng_for(*keys: int) -> np.random.Generator:
    """Independent generator for a tuple of integer keys (stable across processes and platforms)."""
    words = [int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]
    return np.random.default_rng(np.random.SeedSequence(words))


def _mix(c1, c2, alpha: float) -> tuple[float, float, float]:
    a = min(max(float(alpha), 0.0), 1.0)
    b = 1.0 - a
    return (c1[0] * b + c2[0] * a, c1[1] * b + c2[1] * a, c1[2] * b + c2[2] * a)


def _scale_colour(c, k: float) -> tuple[float, float, float]:
    return tuple(min(255.0, float(x) * k) for x in c)


def _bump(t: np.ndarray, power: float = 2.0) -> np.ndarray:
    """1 at t=0 falling to 0 at |t|=1: the profile of lids, lips and openings."""
    return np.clip(1.0 - np.abs(t) ** power, 0.0, 1.0)


@lru_cache(maxsize=32)
def _unit_steps(n: int) -> np.ndarray:
    """n evenly spaced values over [0, 1] as a column (shared, read-only)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    t.setflags(write=False)
    return t


def _bezier(p0, p1, p2, p3, n: int) -> np.ndarray:
    t = _unit_steps(n)
    p0, p1, p2, p3 = (np.asarray(p, np.float64) for p in (p0, p1, p2, p3))
    return ((1 - t) ** 3) * p0 + 3 * ((1 - t) ** 2) * t * p1 + 3 * (1 - t) * t * t * p2 + t ** 3 * p3


def _quad(p0, p1, p2, n: int) -> np.ndarray:
    t = _unit_steps(n)
    p0, p1, p2 = (np.asarray(p, np.float64) for p in (p0, p1, p2))
    return ((1 - t) ** 2) * p0 + 2 * (1 - t) * t * p1 + t * t * p2


# --------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------

_SKIN_TONES = np.array([
    (255, 226, 204), (243, 204, 178), (232, 185, 150), (214, 160, 120), (190, 132, 96),
    (160, 104, 72), (124, 80, 55), (95, 60, 42),
], np.float64)
_HAIR_COLOURS = np.array([
    (22, 18, 16), (48, 34, 26), (84, 58, 38), (128, 92, 56), (196, 164, 108), (150, 70, 36),
    (140, 136, 132), (222, 220, 214),
], np.float64)
_HAIR_WEIGHTS = np.array([0.24, 0.22, 0.18, 0.12, 0.1, 0.06, 0.05, 0.03])
_IRIS_COLOURS = np.array([(62, 40, 24), (104, 70, 40), (70, 108, 150), (84, 112, 74), (36, 28, 24)],
                         np.float64)
HAIR_STYLES: tuple[str, ...] = ("short", "long", "bangs", "curly", "bald")
BACKGROUND_TEXTURES: tuple[str, ...] = ("gradient", "blotch", "stripes", "tiles")


@dataclass(frozen=True)
class Identity:
    """Everything about a subject that stays fixed across their samples (canonical units)."""
    subject: int
    face_half_width: float
    chin_y: float
    jaw_width: float  # 0 = pointed chin, 1 = square jaw
    forehead_top: float
    eye_spacing: float  # half the distance between eye centres
    eye_y: float
    eye_size: float
    brow_gap: float  # brow height above the eye centre
    brow_thickness: float
    brow_arch: float
    brow_length: float
    nose_length: float
    nose_width: float
    mouth_half_width: float
    mouth_y: float
    lip_fullness: float
    ear_size: float
    hairline_y: float
    hair_style: str
    hair_volume: float
    skin: tuple[float, float, float]
    lips: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    clothing: tuple[float, float, float]
    background: tuple[float, float, float]
    background2: tuple[float, float, float]
    background_texture: str
    brow_asymmetry: float  # resting height difference between the two brows
    expressivity: float  # how far this subject's face moves per unit of AU activation
    glasses: bool
    stubble: float


def _random_colour(rng: np.random.Generator, sat_range=(0.1, 0.6), val_range=(0.35, 0.95)):
    hsv = np.uint8([[[rng.integers(0, 180), rng.uniform(*sat_range) * 255, rng.uniform(*val_range) * 255]]])
    return tuple(float(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


@lru_cache(maxsize=8192)
def identity(subject: int) -> Identity:
    """Deterministic identity of a subject id: proportions, colours, hair, background."""
    if int(subject) < 0:
        raise ValueError(f"subject must be >= 0, got {subject}")
    rng = rng_for(0x1D, subject)
    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(tone)
    skin = _SKIN_TONES[lo] * (1 - (tone - lo)) + _SKIN_TONES[min(lo + 1, len(_SKIN_TONES) - 1)] * (tone - lo)
    skin = np.clip(skin * rng.uniform(0.96, 1.04, 3), 0, 255)
    lips = np.clip(skin * 0.55 + np.array([150.0, 62.0, 70.0]) * 0.45, 0, 255) * rng.uniform(0.82, 0.95)
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=_HAIR_WEIGHTS)] * rng.uniform(0.85, 1.15)
    bg_texture = BACKGROUND_TEXTURES[rng.integers(len(BACKGROUND_TEXTURES))]
    return Identity(
        subject=int(subject),
        face_half_width=rng.uniform(0.255, 0.31),
        chin_y=rng.uniform(0.33, 0.40),
        jaw_width=rng.uniform(0.3, 0.75),
        forehead_top=rng.uniform(-0.42, -0.38),
        eye_spacing=rng.uniform(0.105, 0.135),
        eye_y=rng.uniform(-0.065, -0.04),
        eye_size=rng.uniform(0.85, 1.15),
        brow_gap=rng.uniform(0.07, 0.095),
        brow_thickness=rng.uniform(0.6, 1.5),
        brow_arch=rng.uniform(0.0, 1.0),
        brow_length=rng.uniform(0.85, 1.1),
        nose_length=rng.uniform(0.12, 0.16),
        nose_width=rng.uniform(0.034, 0.052),
        mouth_half_width=rng.uniform(0.068, 0.095),
        mouth_y=rng.uniform(0.17, 0.21),
        lip_fullness=rng.uniform(0.6, 1.4),
        ear_size=rng.uniform(0.85, 1.15),
        hairline_y=rng.uniform(-0.31, -0.25),
        hair_style=HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=[0.3, 0.28, 0.16, 0.14, 0.12])],
        hair_volume=rng.uniform(0.025, 0.07),
        skin=tuple(float(v) for v in skin),
        lips=tuple(float(v) for v in lips),
        hair=tuple(float(v) for v in np.clip(hair, 0, 255)),
        iris=tuple(float(v) for v in _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]),
        clothing=_random_colour(rng, (0.2, 0.9), (0.2, 0.9)),
        background=_random_colour(rng),
        background2=_random_colour(rng),
        background_texture=bg_texture,
        brow_asymmetry=rng.uniform(-0.006, 0.006),
        expressivity=rng.uniform(0.9, 1.1),
        glasses=bool(rng.random() < 0.15),
        stubble=float(rng.uniform(0.12, 0.3)) if rng.random() < 0.2 else 0.0,
    )


@lru_cache(maxsize=64)
def _background(subject: int, size: int) -> np.ndarray:
    """Per-subject backdrop, cached because it is the same for every sample of a subject."""
    idn = identity(subject)
    rng = rng_for(0xB6, subject)
    c1 = np.array(idn.background, np.float32)
    c2 = np.array(idn.background2, np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    if idn.background_texture == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        w = 0.5 + 0.5 * ((xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle)) * 1.4
    elif idn.background_texture == "blotch":
        small = rng.random((5, 5)).astype(np.float32)
        w = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    elif idn.background_texture == "stripes":
        angle = rng.uniform(0, math.pi)
        freq = rng.uniform(3, 9)
        w = 0.5 + 0.35 * np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
    else:
        n = int(rng.integers(3, 7))
        small = (rng.random((n, n)) > 0.5).astype(np.float32)
        w = cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST) * 0.7 + 0.15
    w = np.clip(w, 0.0, 1.0)[..., None]
    img = c1 * (1 - w) + c2 * w
    return np.clip(img, 0, 255).astype(np.uint8)


@lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """Unit Gaussian noise larger than the image; samples take shifted windows of it (fast)."""
    return rng_for(0x0153, size).standard_normal((size + 64, size + 64, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Nuisance (pose, camera)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Nuisance:
    """Per-sample imaging conditions. pose = (roll_deg, scale, yaw, dx, dy); dx/dy are fractions of size."""
    pose: tuple[float, float, float, float, float] = (0.0, 1.0, 0.0, 0.0, 0.0)
    light_angle: float = 0.0
    light_strength: float = 0.0
    ambient: float = 1.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur_sigma: float = 0.0  # in pixels at 224 px; scaled with image size
    noise_sigma: float = 0.0  # in grey levels
    noise_offset: tuple[int, int] = (0, 0)
    gaze: tuple[float, float] = (0.0, 0.0)


def normalise_pose(pose) -> tuple[float, float, float, float, float]:
    """Accept (roll_deg, scale, yaw) or (roll_deg, scale, yaw, dx, dy)."""
    p = tuple(float(v) for v in pose)
    if len(p) == 3:
        return p + (0.0, 0.0)
    if len(p) == 5:
        return p
    raise ValueError(f"pose must be (roll_deg, scale, yaw) or (roll_deg, scale, yaw, dx, dy), got {pose!r}")


def random_pose(rng: np.random.Generator) -> tuple[float, float, float, float, float]:
    return (float(np.clip(rng.normal(0.0, 4.0), -10.0, 10.0)), float(rng.uniform(0.92, 1.08)),
            float(rng.uniform(-0.7, 0.7)), float(rng.uniform(-0.035, 0.035)), float(rng.uniform(-0.035, 0.035)))


def sample_nuisance(seed: int, pose=None) -> Nuisance:
    rng = rng_for(0x5EED, seed)
    drawn_pose = random_pose(rng)  # always drawn so the other fields do not depend on `pose`
    return Nuisance(
        pose=drawn_pose if pose is None else normalise_pose(pose),
        light_angle=float(rng.uniform(0, 2 * math.pi)),
        light_strength=float(rng.uniform(0.0, 0.3)),
        ambient=float(rng.uniform(0.8, 1.05)),
        white_balance=tuple(float(v) for v in rng.uniform(0.94, 1.06, 3)),
        blur_sigma=float(rng.uniform(0.0, 1.1)) if rng.random() < 0.7 else 0.0,
        noise_sigma=float(rng.uniform(1.0, 6.0)),
        noise_offset=(int(rng.integers(0, 64)), int(rng.integers(0, 64))),
        gaze=(float(rng.normal(0, 0.004)), float(rng.normal(0, 0.002))),
    )


# --------------------------------------------------------------------------------------------
# AU activations
# --------------------------------------------------------------------------------------------

class _Activations:
    """AU lookup with optional one-sided AUs: get(au, side) is 0 on the side an AU is not on."""

    def __init__(self, aus: Mapping[int, float], sides: Mapping[int, str] | None, gain: float):
        self._values: dict[int, float] = {}
        for key, value in aus.items():
            au = int(key)
            if au not in AUS:
                raise ValueError(f"unsupported AU {key!r}; supported: {AUS}")
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(f"AU{au} activation is not finite: {value!r}")
            self._values[au] = min(max(v, 0.0), 1.0)
        self._sides: dict[int, str] = {}
        for key, side in (sides or {}).items():
            au = int(key)
            if side not in SIDES:
                raise ValueError(f"side of AU{au} must be one of {SIDES}, got {side!r}")
            if au not in UNILATERAL_CAPABLE:
                raise ValueError(f"AU{au} cannot be unilateral; one-sided AUs: {sorted(UNILATERAL_CAPABLE)}")
            self._sides[au] = side
        self._gain = gain

    def __call__(self, au: int, side: str | None = None) -> float:
        v = self._values.get(au, 0.0)
        if side is not None and self._sides.get(au, side) != side:
            return 0.0
        return min(v * self._gain, 1.0)

    def mean(self, au: int) -> float:
        return 0.5 * (self(au, "left") + self(au, "right"))


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------

@dataclass
class _Eye:
    upper: np.ndarray  # [N,2] inner corner -> outer corner
    lower: np.ndarray
    iris_centre: np.ndarray
    iris_radius: float
    crease: np.ndarray
    lower_furrow: np.ndarray


@dataclass
class _Mouth:
    inner_upper: np.ndarray  # [N,2] left corner -> right corner
    inner_lower: np.ndarray
    outer_upper: np.ndarray
    outer_lower: np.ndarray
    corners: np.ndarray  # [2,2] left, right
    gap: float


@dataclass
class _Face:
    outline: np.ndarray
    brows: list[np.ndarray]  # per side: polygon
    brow_lines: list[np.ndarray]  # per side: centre line inner -> outer
    eyes: list[_Eye]
    nose_tip: np.ndarray
    nostrils: list[np.ndarray]
    nose_lift: float
    mouth: _Mouth
    chin_y: float
    strengths: dict[str, float] = field(default_factory=dict)


_BROW_T = np.linspace(0.0, 1.0, 8)  # inner -> outer end
_EYE_T = np.linspace(-1.0, 1.0, 11)
_MOUTH_T = np.linspace(-1.0, 1.0, 15)
for _t in (_BROW_T, _EYE_T, _MOUTH_T):
    _t.setflags(write=False)


def _side_sign(side: str) -> float:
    return -1.0 if side == "left" else 1.0


@lru_cache(maxsize=4096)
def _neutral_outline(subject: int) -> np.ndarray:
    idn = identity(subject)
    w, chin, top = idn.face_half_width, idn.chin_y, idn.forehead_top
    cheek_y = -0.02
    angles = np.linspace(math.pi, 2 * math.pi, 17)
    upper = np.stack([w * np.cos(angles), cheek_y + (cheek_y - top) * np.sin(angles)], 1)
    right_jaw = _bezier((w, cheek_y), (w * 1.0, cheek_y + 0.55 * (chin - cheek_y)),
                        (w * (0.25 + 0.55 * idn.jaw_width), chin), (0.0, chin), 12)
    left_jaw = right_jaw[::-1].copy()
    left_jaw[:, 0] *= -1
    return np.concatenate([upper, right_jaw[1:], left_jaw[1:-1]], 0)


def _brow(idn: Identity, act: _Activations, side: str) -> tuple[np.ndarray, np.ndarray]:
    s = _side_sign(side)
    a1, a2, a4 = act(1, side), act(2, side), act(4, side)
    a9 = act(9)
    t = _BROW_T
    x = s * (idn.eye_spacing - 0.055 + t * 0.135 * idn.brow_length)
    base = idn.eye_y - idn.brow_gap + s * idn.brow_asymmetry
    y = base - idn.brow_arch * 0.018 * np.sin(np.pi * np.clip(t * 1.25, 0, 1)) + 0.01 * t ** 2
    # AU1 lifts the inner end, AU2 the outer end; AU4 (and a little AU9) pull down and to the midline.
    y = y - 0.040 * a1 * (1 - t) ** 1.3 - 0.036 * a2 * t ** 1.3
    y = y + 0.028 * a4 * (1 - 0.55 * t) + 0.014 * a9 * (1 - t)
    x = x - s * (0.016 * a4 + 0.006 * a9) * (1 - t)
    # AU4 also bends the inner end down harder, producing the frown's oblique shape
    y = y + 0.01 * a4 * (1 - t) ** 3
    centre = np.stack([x, y], 1)
    thick = idn.brow_thickness * (0.017 * (1 - t) + 0.007 * t)
    top = centre + np.stack([np.zeros_like(t), -0.55 * thick], 1)
    bottom = centre + np.stack([np.zeros_like(t), 0.45 * thick], 1)
    return np.concatenate([top, bottom[::-1]], 0), centre


def _eye(idn: Identity, act: _Activations, side: str, gaze) -> _Eye:
    s = _side_sign(side)
    es = idn.eye_size
    a4, a5, a6, a7, a9, a45 = (act(au, side) for au in (4, 5, 6, 7, 9, 45))
    a12 = act(12, side)
    cx, cy = s * idn.eye_spacing, idn.eye_y
    half = 0.05 * es
    t = _EYE_T  # -1 inner corner, +1 outer corner
    xs = cx + s * half * t
    # the outer corner sits a bit higher; AU6 lifts it further (crow's-feet squint)
    base_y = cy - (0.004 * es + 0.004 * a6) * (t + 1) / 2
    upper_open = 0.026 * es * (1 + 0.6 * a5 - 0.3 * a7 - 0.18 * a4 - 0.12 * a6 - 0.12 * a9)
    lower_open = 0.014 * es * (1 + 0.25 * a5 - 0.85 * a6 - 0.8 * a7 - 0.3 * a9 - 0.25 * a12)
    lower_open = max(lower_open, -0.004 * es)
    # a blink brings the upper lid down onto the lower one
    upper_open = upper_open * (1 - a45) - lower_open * a45
    upper_y = base_y - upper_open * _bump(t, 2.2)
    lower_y = base_y + lower_open * _bump(t, 2.0)
    lower_y = np.maximum(lower_y, upper_y)
    upper = np.stack([xs, upper_y], 1)
    lower = np.stack([xs, lower_y], 1)
    crease_gap = 0.011 * es * (1 + 0.5 * a5 - 0.5 * a4 - 0.3 * a7) + 0.004 * a45
    crease_t = t[1:-1]
    crease = np.stack([cx + s * half * 1.02 * crease_t,
                       upper_y[1:-1] - crease_gap * (0.5 + 0.5 * _bump(crease_t, 2)) - 0.003 * a45], 1)
    furrow = np.stack([cx + s * half * 0.9 * t[2:], lower_y[2:] + 0.016 * es - 0.003 * a6], 1)
    iris = np.array([cx + s * 0.0 + gaze[0], cy + 0.002 + gaze[1]])
    return _Eye(upper, lower, iris, 0.021 * es, crease, furrow)


def _mouth(idn: Identity, act: _Activations) -> tuple[_Mouth, float]:
    """Lips as curves over t in [-1, 1] (left -> right corner). Returns the mouth and the jaw drop."""
    mw, my, lf = idn.mouth_half_width, idn.mouth_y, idn.lip_fullness
    a10, a17, a20, a23, a24, a25, a26, a27 = (act(au) for au in (10, 17, 20, 23, 24, 25, 26, 27))
    a9 = act(9)
    corner_dx, corner_dy = {}, {}
    for side in SIDES:
        a12, a14, a15 = act(12, side), act(14, side), act(15, side)
        a20s = act(20, side)
        corner_dx[side] = mw * (0.30 * a12 - 0.2 * a14 + 0.05 * a15 + 0.40 * a20s - 0.2 * a23
                                - 0.06 * a24 - 0.08 * a26 - 0.25 * a27)
        corner_dy[side] = (-0.036 * a12 - 0.01 * a14 + 0.032 * a15 + 0.006 * a20s + 0.010 * a26
                           + 0.016 * a27 + 0.004 * a17)
    smile = 0.5 * (act(12, "left") + act(12, "right"))
    dimpler = 0.5 * (act(14, "left") + act(14, "right"))
    jaw_drop = 0.06 * a26 + 0.1 * a27
    # AU24 presses the lips together, AU23 tightens them: both fight any opening
    closing = (1 - a24) * (1 - 0.5 * a23)
    gap_up = (0.004 * a25 + 0.009 * a10 + 0.004 * a26 + 0.01 * a27) * closing
    gap_down = (0.014 * a25 + 0.85 * jaw_drop) * closing
    centre_y = my - 0.010 * a17 - 0.004 * a10
    t = _MOUTH_T
    pos, neg = np.clip(t, 0, None), np.clip(-t, 0, None)
    line_y = centre_y + corner_dy["left"] * neg ** 2 + corner_dy["right"] * pos ** 2
    line_x = t * mw + corner_dx["left"] * t * (t < 0) + corner_dx["right"] * t * (t > 0)
    # a wide smile or lip stretch opens into a flat-topped grin; a jaw drop into an oval
    open_power = 2.0 + 2.5 * max(smile, a20) - 0.4 * a27
    inner_up = line_y - gap_up * _bump(t, open_power)
    inner_lo = line_y + gap_down * _bump(t, open_power)
    thin = max(0.25, 1 - 0.3 * a20 - 0.45 * a23 - 0.6 * a24 - 0.25 * smile - 0.15 * dimpler)
    upper_thick = 0.021 * lf * thin
    lower_thick = 0.027 * lf * thin * (1 + 0.15 * a17)
    cupid = 1 - 0.28 * np.exp(-(t / 0.13) ** 2)
    outer_up = inner_up - upper_thick * np.sqrt(_bump(t, 2)) * cupid - (0.007 * a10 + 0.003 * a9) * _bump(t, 3)
    outer_lo = inner_lo + lower_thick * _bump(t, 1.7) ** 0.7
    corners = np.array([[line_x[0], line_y[0]], [line_x[-1], line_y[-1]]])
    mouth = _Mouth(np.stack([line_x, inner_up], 1), np.stack([line_x, inner_lo], 1),
                   np.stack([line_x, outer_up], 1), np.stack([line_x, outer_lo], 1),
                   corners, float(gap_up + gap_down))
    return mouth, jaw_drop


def _face_geometry(idn: Identity, act: _Activations, gaze) -> _Face:
    mouth, jaw_drop = _mouth(idn, act)
    a17 = act(17)
    outline = _neutral_outline(idn.subject).copy()
    pivot = idn.eye_y + 0.06
    weight = np.clip((outline[:, 1] - pivot) / (idn.chin_y - pivot), 0, 1)
    # the jaw hinges near the ears: points move down more the closer they are to the chin
    outline[:, 1] += jaw_drop * weight ** 1.5 - 0.016 * a17 * weight ** 4
    brows, brow_lines = zip(*(_brow(idn, act, side) for side in SIDES))
    eyes = [_eye(idn, act, side, gaze) for side in SIDES]
    a9, a10 = act(9), act(10)
    nose_lift = 0.012 * a9 + 0.005 * a10
    tip = np.array([0.0, idn.eye_y + idn.nose_length - 0.004 * a9])
    nostrils = [np.array([_side_sign(side) * idn.nose_width * 0.62 * (1 + 0.12 * a9),
                          tip[1] + 0.01 - nose_lift]) for side in SIDES]
    strengths = _wrinkle_strengths(act)
    return _Face(outline, list(brows), list(brow_lines), eyes, tip, nostrils, nose_lift, mouth,
                 float(idn.chin_y + jaw_drop - 0.016 * a17), strengths)


def _wrinkle_strengths(act: _Activations) -> dict[str, float]:
    """How dark each expression line is; these carry much of an AU's visible signature."""
    out: dict[str, float] = {}
    for side in SIDES:
        a1, a2, a4, a6, a7 = (act(au, side) for au in (1, 2, 4, 6, 7))
        a12, a14, a15, a20 = (act(au, side) for au in (12, 14, 15, 20))
        out[f"forehead_centre_{side}"] = 0.55 * a1 + 0.15 * a2
        out[f"forehead_lateral_{side}"] = 0.55 * a2 + 0.1 * a1
        out[f"glabella_{side}"] = 0.6 * a4 + 0.2 * act(9)
        out[f"crows_feet_{side}"] = 0.6 * a6 + 0.15 * a12
        out[f"lower_furrow_{side}"] = 0.08 + 0.35 * a6 + 0.25 * a7
        out[f"cheek_raise_{side}"] = a6 + 0.35 * a12
        out[f"nasolabial_{side}"] = min(0.55, 0.1 + 0.35 * a12 + 0.3 * act(10) + 0.25 * act(9) + 0.1 * a6
                                        + 0.15 * a20)
        out[f"dimple_{side}"] = 0.8 * a14 + 0.1 * a12
        out[f"corner_crease_{side}"] = 0.25 * a15 + 0.2 * a14 + 0.15 * a12
    out["nose_wrinkle"] = 0.65 * act(9)
    out["lip_press"] = 0.45 * act(24) + 0.15 * act(23)
    out["chin_boss"] = 0.45 * act(17)
    out["mentolabial"] = 0.12 + 0.35 * act(17)
    return out


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

class _Canvas:
    """cv2 drawing in canonical coordinates: applies the pose transform and sub-pixel precision."""

    def __init__(self, img: np.ndarray, pose: tuple[float, float, float, float, float]):
        roll, scale, yaw, dx, dy = pose
        size = img.shape[0]
        self.img = img
        self.size = size
        self.unit = size * _FACE_SCALE * scale  # pixels per canonical unit
        r = math.radians(roll)
        self.cos, self.sin = math.cos(r), math.sin(r)
        self.matrix_t = self.unit * np.array([[self.cos, self.sin], [-self.sin, self.cos]])  # row-vector form
        self.offset = (size * (0.5 + dx), size * (_ORIGIN_Y + dy))
        self.roll = roll
        self.yaw = yaw

    def window(self, img: np.ndarray, x0: int, y0: int) -> "_Canvas":
        """A canvas drawing into `img`, a crop of this canvas starting at pixel (x0, y0)."""
        sub = _Canvas.__new__(_Canvas)
        sub.__dict__.update(self.__dict__)
        sub.img, sub.offset = img, (self.offset[0] - x0, self.offset[1] - y0)
        return sub

    def _origin(self, depth: float) -> tuple[float, float]:
        """Pixel position of the canonical origin for a part at `depth` (yaw parallax included)."""
        shift = self.yaw * _YAW_PARALLAX * depth * self.unit
        return self.offset[0] + shift * self.cos, self.offset[1] + shift * self.sin

    def px(self, pts, depth: float) -> np.ndarray:
        p = np.asarray(pts, np.float64).reshape(-1, 2) @ self.matrix_t
        p += self._origin(depth)
        return p

    def point(self, x: float, y: float, depth: float) -> tuple[float, float]:
        ox, oy = self._origin(depth)
        return (ox + self.unit * (self.cos * x - self.sin * y), oy + self.unit * (self.sin * x + self.cos * y))

    def width(self, w: float) -> int:
        return max(1, int(round(w * self.unit)))

    def _fixed(self, pts, depth) -> np.ndarray:
        p = self.px(pts, depth)
        p *= _ONE
        return p.round().astype(np.int32)

    def poly(self, pts, depth: float, colour) -> None:
        cv2.fillPoly(self.img, [self._fixed(pts, depth)], colour, cv2.LINE_AA, _SHIFT)

    def line(self, pts, depth: float, colour, width: float, closed: bool = False) -> None:
        cv2.polylines(self.img, [self._fixed(pts, depth)], closed, colour, self.width(width), cv2.LINE_AA, _SHIFT)

    def ellipse(self, centre, axes, depth: float, colour, angle: float = 0.0, arc=(0, 360),
                width: float | None = None) -> None:
        cx, cy = self.point(float(centre[0]), float(centre[1]), depth)
        ax = (int(round(axes[0] * self.unit * _ONE)), int(round(axes[1] * self.unit * _ONE)))
        thickness = -1 if width is None else self.width(width)
        cv2.ellipse(self.img, (int(round(cx * _ONE)), int(round(cy * _ONE))), ax, angle + self.roll,
                    arc[0], arc[1], colour, thickness, cv2.LINE_AA, _SHIFT)


def _draw_body(cv: _Canvas, idn: Identity) -> None:
    w = idn.face_half_width
    neck_top = idn.chin_y - 0.12
    shoulders = np.array([[-0.9, 1.2], [-0.85, 0.62], [-0.5, 0.5], [-0.16, 0.47], [0.16, 0.47],
                          [0.5, 0.5], [0.85, 0.62], [0.9, 1.2]])
    if idn.hair_style == "long":
        _draw_long_hair_back(cv, idn)
    cv.poly(shoulders, _DEPTH["body"], idn.clothing)
    neck = np.array([[-0.55 * w, neck_top], [0.55 * w, neck_top], [0.6 * w, 0.52], [0.0, 0.58], [-0.6 * w, 0.52]])
    cv.poly(neck, _DEPTH["neck"], _scale_colour(idn.skin, 0.8))
    cv.line(np.array([[-0.2 * w, 0.56], [0.0, 0.585], [0.2 * w, 0.56]]), _DEPTH["neck"],
            _scale_colour(idn.clothing, 0.7), 0.012)


def _draw_long_hair_back(cv: _Canvas, idn: Identity) -> None:
    w, v = idn.face_half_width, idn.hair_volume
    top = idn.forehead_top - v
    angles = np.linspace(math.pi, 2 * math.pi, 15)
    arc = np.stack([(w + v) * np.cos(angles), -0.02 + (-0.02 - top) * np.sin(angles)], 1)
    sides = np.array([[w + v + 0.03, 0.3], [w + v + 0.06, 0.62], [-(w + v + 0.06), 0.62], [-(w + v + 0.03), 0.3]])
    cv.poly(np.concatenate([arc, sides], 0), _DEPTH["hair"], _scale_colour(idn.hair, 0.85))


def _draw_hair_cap(cv: _Canvas, idn: Identity) -> None:
    w, v = idn.face_half_width, idn.hair_volume
    if idn.hair_style == "bald":
        return
    top = idn.forehead_top - v
    angles = np.linspace(math.pi, 2 * math.pi, 19)
    arc = np.stack([(w + v) * np.cos(angles), -0.02 + (-0.02 - top) * np.sin(angles)], 1)
    ear_level = np.array([[w + 0.6 * v, idn.eye_y + 0.02], [-(w + 0.6 * v), idn.eye_y + 0.02]])
    cv.poly(np.concatenate([arc, ear_level], 0), _DEPTH["hair"], idn.hair)
    if idn.hair_style == "curly":
        r = v * 0.9
        for a in np.linspace(math.pi * 0.95, 2.05 * math.pi, 13):
            c = ((w + v * 0.6) * math.cos(a), -0.02 + (-0.02 - top + 0.3 * v) * math.sin(a))
            cv.ellipse(c, (r, r), _DEPTH["hair"], idn.hair)


def _draw_ears(cv: _Canvas, idn: Identity) -> None:
    for side in SIDES:
        s = _side_sign(side)
        c = (s * (idn.face_half_width - 0.005), idn.eye_y + 0.045)
        ax = (0.03 * idn.ear_size, 0.062 * idn.ear_size)
        cv.ellipse(c, ax, _DEPTH["ear"], _scale_colour(idn.skin, 0.92))
        cv.ellipse((c[0] + s * 0.006, c[1]), (ax[0] * 0.55, ax[1] * 0.7), _DEPTH["ear"],
                   _scale_colour(idn.skin, 0.75), width=0.006, arc=(-100, 100) if s > 0 else (80, 280))


def _draw_head(cv: _Canvas, idn: Identity, face: _Face) -> None:
    cv.poly(face.outline, _DEPTH["outline"], idn.skin)
    cv.line(face.outline, _DEPTH["outline"], _scale_colour(idn.skin, 0.82), 0.008, closed=True)
    if idn.stubble > 0:
        jaw = face.outline[face.outline[:, 1] > face.mouth.corners[:, 1].min() - 0.02]
        # jaw runs right -> chin -> left, so the lower lip closes the ring left -> right
        mouth_low = face.mouth.outer_lower + np.array([0.0, 0.01])
        cv.poly(np.concatenate([jaw, mouth_low], 0), _DEPTH["chin"], _mix(idn.skin, idn.hair, idn.stubble))


def _draw_line_set(cv: _Canvas, lines, depth, skin, alpha: float, width: float, dark=(40, 25, 20)) -> None:
    if alpha < 0.03:
        return
    colour = _mix(skin, dark, alpha)
    for pts in lines:
        cv.line(pts, depth, colour, width)


def _draw_forehead(cv: _Canvas, idn: Identity, face: _Face) -> None:
    brow_top = min(b[:, 1].min() for b in face.brows)
    ys = [brow_top - 0.03, brow_top - 0.055, brow_top - 0.08]
    ys = [y for y in ys if y > idn.hairline_y + 0.02]
    for side in SIDES:
        s = _side_sign(side)
        centre = [np.array([[0.0, y], [s * 0.03, y - 0.002], [s * 0.07, y - 0.001]]) for y in ys]
        lateral = [np.array([[s * 0.07, y - 0.001], [s * 0.12, y + 0.004], [s * 0.17, y + 0.012]]) for y in ys]
        _draw_line_set(cv, centre, _DEPTH["forehead"], idn.skin, face.strengths[f"forehead_centre_{side}"], 0.004)
        _draw_line_set(cv, lateral, _DEPTH["forehead"], idn.skin, face.strengths[f"forehead_lateral_{side}"], 0.004)
        inner = face.brow_lines[SIDES.index(side)][0]
        glabella = [np.array([[inner[0] - s * 0.012, inner[1] - 0.012], [inner[0] - s * 0.016, inner[1] + 0.02]])]
        _draw_line_set(cv, glabella, _DEPTH["bridge"], idn.skin, face.strengths[f"glabella_{side}"], 0.004)


def _draw_cheeks(cv: _Canvas, idn: Identity, face: _Face) -> None:
    for i, side in enumerate(SIDES):
        s = _side_sign(side)
        raise_ = face.strengths[f"cheek_raise_{side}"]
        c = (s * (idn.eye_spacing + 0.02), idn.eye_y + 0.1 - 0.03 * raise_)
        ax = (0.062, 0.04 * (1 + 0.25 * raise_))
        cv.ellipse(c, ax, _DEPTH["cheek"], _mix(idn.skin, (235, 120, 115), 0.08 + 0.12 * raise_))
        cv.ellipse(c, (ax[0] * 0.55, ax[1] * 0.5), _DEPTH["cheek"], _mix(idn.skin, (255, 245, 235), 0.1 + 0.12 * raise_))
        if raise_ > 0.05:
            cv.ellipse(c, ax, _DEPTH["cheek"], _mix(idn.skin, (60, 35, 25), 0.35 * min(raise_, 1.0)),
                       arc=(20, 160), width=0.005)
        eye = face.eyes[i]
        _draw_line_set(cv, [eye.lower_furrow], _DEPTH["eye"], idn.skin, face.strengths[f"lower_furrow_{side}"], 0.004)
        outer = eye.upper[-1]
        feet = [np.array([outer + (s * 0.012, d), outer + (s * 0.04, 2.2 * d - 0.002)]) for d in (-0.01, 0.0, 0.01)]
        _draw_line_set(cv, feet, _DEPTH["eye"], idn.skin, face.strengths[f"crows_feet_{side}"], 0.0035)


def _draw_brows(cv: _Canvas, idn: Identity, face: _Face) -> None:
    colour = _scale_colour(idn.hair, 0.8) if sum(idn.hair) < 450 else _mix(idn.hair, (90, 70, 60), 0.5)
    for poly in face.brows:
        cv.poly(poly, _DEPTH["brow"], colour)


def _draw_eye(cv: _Canvas, idn: Identity, eye: _Eye) -> None:
    depth = _DEPTH["eye"]
    lid_skin = _scale_colour(idn.skin, 0.9)
    cv.line(eye.crease, depth, _mix(idn.skin, (50, 30, 25), 0.35), 0.004)
    opening = np.concatenate([eye.upper, eye.lower[::-1]], 0)
    pts = cv.px(opening, depth)
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, cv.size), min(y1, cv.size)
    height = float(np.max(eye.lower[:, 1] - eye.upper[:, 1]))
    if x1 > x0 and y1 > y0 and height > 0.0015:
        roi = cv.img[y0:y1, x0:x1]
        mask = np.zeros(roi.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round((pts - (x0, y0)) * _ONE).astype(np.int32)], 255, cv2.LINE_8, _SHIFT)
        layer = np.empty_like(roi)
        layer[:] = (238, 234, 228)
        sub = cv.window(layer, x0, y0)
        r = eye.iris_radius
        sub.ellipse(eye.iris_centre, (r, r), depth, idn.iris)
        sub.ellipse(eye.iris_centre, (r * 0.45, r * 0.45), depth, (12, 10, 10))
        sub.ellipse(eye.iris_centre + (0.006, -0.007), (r * 0.18, r * 0.18), depth, (250, 250, 250))
        # the upper lid casts a shadow across the top of the eyeball
        sub.line(eye.upper, depth, (150, 130, 120), 0.006)
        np.copyto(roi, layer, where=mask[..., None] > 0)
    lash = _mix(idn.hair, (10, 8, 8), 0.6)
    cv.line(eye.upper, depth, lash, 0.0085)
    cv.line(eye.lower, depth, _mix(lid_skin, (60, 40, 35), 0.45), 0.0035)


def _draw_nose(cv: _Canvas, idn: Identity, face: _Face) -> None:
    skin, depth = idn.skin, _DEPTH["nose"]
    tip = face.nose_tip
    shade = _mix(skin, (70, 45, 35), 0.2)
    for side in SIDES:
        s = _side_sign(side)
        side_line = np.array([[s * 0.024, idn.eye_y + 0.005], [s * 0.026, idn.eye_y + 0.05],
                              [s * idn.nose_width * 0.8, tip[1] - 0.025 - face.nose_lift]])
        cv.line(side_line, _DEPTH["bridge"], shade, 0.005)
    cv.ellipse(tip + (0, -0.004), (idn.nose_width * 0.45, 0.018), depth, _mix(skin, (255, 250, 245), 0.18))
    wing_colour = _mix(skin, (60, 35, 28), 0.45)
    for side, nostril in zip(SIDES, face.nostrils):
        s = _side_sign(side)
        cv.ellipse(nostril, (0.011, 0.0055), _DEPTH["nostril"], _mix(skin, (35, 20, 18), 0.75), angle=-s * 12)
        wing_centre = nostril + (s * 0.01, -0.006)
        cv.ellipse(wing_centre, (idn.nose_width * 0.42, 0.016), _DEPTH["nostril"], wing_colour,
                   arc=(-120, 90) if s > 0 else (90, 300), width=0.005)
    cv.line(np.array([[-0.012, tip[1] + 0.008], [0.0, tip[1] + 0.012], [0.012, tip[1] + 0.008]]), depth,
            _mix(skin, (60, 35, 28), 0.3), 0.004)
    y0 = idn.eye_y + 0.012
    wrinkles = [np.array([[-0.02, y], [0.0, y - 0.004], [0.02, y]]) for y in (y0, y0 + 0.012, y0 + 0.024)]
    wrinkles += [np.array([[s * 0.03, y0 + 0.03], [s * 0.045, y0 + 0.045]]) for s in (-1, 1)]
    _draw_line_set(cv, wrinkles, _DEPTH["bridge"], skin, face.strengths["nose_wrinkle"], 0.004)


def _draw_mouth_surround(cv: _Canvas, idn: Identity, face: _Face) -> None:
    m, skin = face.mouth, idn.skin
    for i, side in enumerate(SIDES):
        s = _side_sign(side)
        corner = m.corners[i]
        fold = _quad(face.nostrils[i] + (s * 0.02, -0.012),
                     (s * (idn.mouth_half_width + 0.03), idn.mouth_y - 0.045),
                     corner + (s * 0.016, 0.016), 8)
        _draw_line_set(cv, [fold], _DEPTH["cheek"], skin, face.strengths[f"nasolabial_{side}"], 0.006)
        dimple = [np.array([corner + (s * 0.01, -0.01), corner + (s * 0.014, 0.0), corner + (s * 0.01, 0.01)])]
        _draw_line_set(cv, dimple, _DEPTH["mouth"], skin, face.strengths[f"dimple_{side}"], 0.006)
        # the crease that continues the lip line past the corner shows its direction (up/down)
        direction = corner - m.inner_upper[1 if i == 0 else -2]
        direction = direction / (np.linalg.norm(direction) + 1e-9)
        crease = [np.array([corner, corner + direction * 0.016])]
        _draw_line_set(cv, crease, _DEPTH["mouth"], skin, 0.25 + face.strengths[f"corner_crease_{side}"], 0.004)
    press = face.strengths["lip_press"]
    if press > 0.03:
        _draw_line_set(cv, [m.outer_upper[3:-3] + (0, -0.012), m.outer_lower[3:-3] + (0, 0.012)],
                       _DEPTH["mouth"], skin, press, 0.004)


def _draw_mouth(cv: _Canvas, idn: Identity, face: _Face) -> None:
    m, depth = face.mouth, _DEPTH["mouth"]
    if m.gap > 0.002:
        cv.poly(np.concatenate([m.inner_upper, m.inner_lower[::-1]], 0), depth, (70, 22, 26))
        gap = m.inner_lower[:, 1] - m.inner_upper[:, 1]
        teeth_bottom = m.inner_upper[:, 1] + np.minimum(gap, 0.02)
        teeth = np.concatenate([m.inner_upper, np.stack([m.inner_upper[:, 0], teeth_bottom], 1)[::-1]], 0)
        cv.poly(teeth, depth, (236, 230, 214))
        if m.gap > 0.035:
            tongue_top = np.maximum(m.inner_lower[:, 1] - 0.25 * gap, teeth_bottom)
            tongue = np.concatenate([np.stack([m.inner_lower[:, 0], tongue_top], 1), m.inner_lower[::-1]], 0)
            cv.poly(tongue, depth, (170, 70, 78))
    cv.poly(np.concatenate([m.outer_upper, m.inner_upper[::-1]], 0), depth, _scale_colour(idn.lips, 0.86))
    cv.poly(np.concatenate([m.inner_lower, m.outer_lower[::-1]], 0), depth, idn.lips)
    mid = len(m.outer_lower) // 2
    highlight = (m.inner_lower[mid] + m.outer_lower[mid]) / 2 + (0.0, 0.002)
    cv.ellipse(highlight, (idn.mouth_half_width * 0.3, 0.004 * idn.lip_fullness), depth,
               _mix(idn.lips, (255, 235, 230), 0.22))
    cv.line(m.inner_upper, depth, _mix(idn.lips, (40, 10, 12), 0.6), 0.004)
    if m.gap > 0.002:
        cv.line(m.inner_lower, depth, _mix(idn.lips, (40, 10, 12), 0.4), 0.003)


def _draw_chin(cv: _Canvas, idn: Identity, face: _Face) -> None:
    m = face.mouth
    mid = len(m.outer_lower) // 2
    y = m.outer_lower[mid, 1] + 0.024
    sulcus = np.array([[-0.032, y - 0.002], [0.0, y + 0.004], [0.032, y - 0.002]])
    _draw_line_set(cv, [sulcus], _DEPTH["chin"], idn.skin, face.strengths["mentolabial"], 0.005)
    boss = face.strengths["chin_boss"]
    if boss > 0.03:
        colour = _mix(idn.skin, (70, 45, 35), boss * 0.6)
        chin_centre = (0.0, (y + face.chin_y) / 2)
        for dx, dy in ((-0.016, -0.006), (0.014, -0.004), (-0.004, 0.006), (0.02, 0.01), (-0.022, 0.01)):
            cv.ellipse((chin_centre[0] + dx, chin_centre[1] + dy), (0.004, 0.003), _DEPTH["chin"], colour)
        cv.ellipse(chin_centre, (0.045, 0.025), _DEPTH["chin"], _mix(idn.skin, (60, 40, 30), boss * 0.5),
                   arc=(200, 340), width=0.004)


def _draw_hair_front(cv: _Canvas, idn: Identity, face: _Face) -> None:
    if idn.hair_style == "bald":
        return
    w = idn.face_half_width
    top = idn.forehead_top
    angles = np.linspace(math.pi * 1.02, 1.98 * math.pi, 17)
    arc = np.stack([w * 1.01 * np.cos(angles), -0.02 + (-0.02 - top + 0.01) * np.sin(angles)], 1)
    if idn.hair_style == "bangs":
        # the fringe is placed from the resting brows, so raised brows slide under it as in life
        resting_brow_top = idn.eye_y - idn.brow_gap - 0.018 * idn.brow_arch - 0.01 * idn.brow_thickness
        fringe_y = min(resting_brow_top - 0.04, idn.hairline_y + 0.08)
        xs = np.linspace(w * 0.98, -w * 0.98, 13)
        edge = np.stack([xs, fringe_y + 0.012 * np.sin(xs * 60) + 0.03 * (np.abs(xs) / w) ** 2], 1)
    else:
        xs = np.linspace(w * 0.99, -w * 0.99, 13)
        part = 0.02 * np.tanh((xs - 0.06) * 20)  # side parting: the hairline dips on one side
        edge = np.stack([xs, idn.hairline_y + 0.09 * (np.abs(xs) / w) ** 3 + part * 0.5], 1)
    cv.poly(np.concatenate([arc, edge], 0), _DEPTH["hair"], idn.hair)
    if idn.hair_style == "long":
        for side in SIDES:
            s = _side_sign(side)
            lock = np.array([[s * w * 0.92, idn.hairline_y + 0.02], [s * (w + 0.02), idn.hairline_y],
                             [s * (w + 0.05), 0.2], [s * (w + 0.04), 0.45], [s * (w - 0.01), 0.2]])
            cv.poly(lock, _DEPTH["hair"], _scale_colour(idn.hair, 0.95))


def _draw_glasses(cv: _Canvas, idn: Identity, face: _Face) -> None:
    if not idn.glasses:
        return
    colour = (30, 28, 30)
    for side in SIDES:
        s = _side_sign(side)
        c = (s * idn.eye_spacing, idn.eye_y + 0.004)
        cv.ellipse(c, (0.068 * idn.eye_size, 0.045 * idn.eye_size), _DEPTH["glasses"], colour, width=0.0045)
        temple = np.array([[s * (idn.eye_spacing + 0.068 * idn.eye_size), idn.eye_y], [s * idn.face_half_width, idn.eye_y + 0.01]])
        cv.line(temple, _DEPTH["glasses"], colour, 0.0045)
    bridge = np.array([[-idn.eye_spacing + 0.068 * idn.eye_size, idn.eye_y], [0.0, idn.eye_y - 0.008],
                       [idn.eye_spacing - 0.068 * idn.eye_size, idn.eye_y]])
    cv.line(bridge, _DEPTH["glasses"], colour, 0.0045)


def _apply_camera(img: np.ndarray, nz: Nuisance) -> np.ndarray:
    """Lighting gradient, white balance, defocus blur and sensor noise."""
    size = img.shape[0]
    if nz.blur_sigma > 0.15:
        sigma = nz.blur_sigma * size / 224.0
        kernel = cv2.getGaussianKernel(2 * int(math.ceil(2 * sigma)) + 1, sigma)
        img = cv2.sepFilter2D(img, -1, kernel, kernel)  # faster than GaussianBlur for these small kernels
    ramp = (np.arange(size, dtype=np.float32) / size - 0.5) * 2.0 * nz.light_strength
    gain = nz.ambient * (1.0 + ramp[None, :] * math.cos(nz.light_angle) + ramp[:, None] * math.sin(nz.light_angle))
    # per-channel planes + cv2 arithmetic: numpy broadcasting over a trailing axis of 3 is several times slower
    gain3 = cv2.merge([gain * np.float32(w) for w in nz.white_balance])
    lit = cv2.multiply(img, gain3, dtype=cv2.CV_32F)
    oy, ox = nz.noise_offset
    noise = _noise_bank(size)[oy:oy + size, ox:ox + size]
    return cv2.addWeighted(lit, 1.0, noise, float(nz.noise_sigma), 0.0, dtype=cv2.CV_8U)  # saturating cast


def _landmarks(cv: _Canvas, face: _Face) -> np.ndarray:
    pts = [cv.px(face.eyes[0].iris_centre, _DEPTH["eye"])[0], cv.px(face.eyes[1].iris_centre, _DEPTH["eye"])[0],
           cv.px(face.nose_tip, _DEPTH["nose"])[0], cv.px(face.mouth.corners[0], _DEPTH["mouth"])[0],
           cv.px(face.mouth.corners[1], _DEPTH["mouth"])[0]]
    return np.asarray(pts, np.float32)


def render_face(aus: Mapping[int, float], subject: int, *, size: int = 224, seed: int = 0,
                pose: tuple[float, ...] | None = None, return_landmarks: bool = False,
                sides: Mapping[int, str] | None = None, nuisance: Nuisance | None = None):
    """Render one face of `subject` showing the AU activations `aus` ({AU number: 0..1}).

    seed draws the per-sample nuisance (pose, lighting, blur, noise, gaze). pose, if given, replaces the
    drawn pose: (roll_deg, scale, yaw) or (roll_deg, scale, yaw, dx, dy), yaw in about [-1, 1] shifting
    protruding features sideways, dx/dy as fractions of size. sides maps an AU to "left"/"right" (image
    side) to apply it on one side only (e.g. contempt's unilateral 12/14). nuisance overrides everything
    the seed would draw. Returns an RGB uint8 image [size, size, 3], and with return_landmarks also the
    five landmarks float32 [5, 2] (x, y) in pixels: left eye, right eye, nose tip, left/right mouth corner.
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    idn = identity(subject)
    nz = nuisance if nuisance is not None else sample_nuisance(seed, pose)
    act = _Activations(aus, sides, idn.expressivity)
    face = _face_geometry(idn, act, nz.gaze)
    img = _background(idn.subject, size).copy()
    cv = _Canvas(img, nz.pose)
    _draw_body(cv, idn)
    _draw_hair_cap(cv, idn)
    _draw_ears(cv, idn)
    _draw_head(cv, idn, face)
    _draw_cheeks(cv, idn, face)
    _draw_forehead(cv, idn, face)
    _draw_brows(cv, idn, face)
    for eye in face.eyes:
        _draw_eye(cv, idn, eye)
    _draw_nose(cv, idn, face)
    _draw_mouth_surround(cv, idn, face)
    _draw_mouth(cv, idn, face)
    _draw_chin(cv, idn, face)
    _draw_hair_front(cv, idn, face)
    _draw_glasses(cv, idn, face)
    out = _apply_camera(img, nz)
    if return_landmarks:
        return out, _landmarks(cv, face)
    return out
