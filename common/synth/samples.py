"""Labelled samples from the synthetic face: emotions, AU intensities, expression clips, long videos.

Every sampler is a pure function of its integer arguments (subject, seed, ...), so the same call gives
the same pixels in any process, worker or machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

import numpy as np

from common.labels import class_names

from .face import AUS, SIDES, Nuisance, random_pose, render_face, rng_for, sample_nuisance

# The shared order of common/labels.yaml; index = label. The 7-class setting drops the last one.
EMOTIONS: tuple[str, ...] = tuple(class_names("emotion"))

# EMFACS-style prototypes: {AU: weight}; the weight times the sample intensity gives the activation.
EMOTION_PROTOTYPES: Mapping[int, Mapping[int, float]] = MappingProxyType({
    0: MappingProxyType({}),
    1: MappingProxyType({6: 0.8, 12: 1.0}),
    2: MappingProxyType({1: 0.9, 4: 0.6, 15: 0.9}),
    3: MappingProxyType({1: 1.0, 2: 1.0, 5: 0.8, 26: 0.9}),
    4: MappingProxyType({1: 0.9, 2: 0.7, 4: 0.7, 5: 1.0, 7: 0.5, 20: 0.9, 26: 0.6}),
    5: MappingProxyType({9: 1.0, 10: 0.8, 15: 0.5}),
    6: MappingProxyType({4: 1.0, 5: 0.6, 7: 0.8, 23: 0.9}),
    7: MappingProxyType({12: 0.7, 14: 0.8}),
})

# One-sided AUs of a prototype: {label: {AU: side}}. AU keys stay plain ints everywhere (labels, CSVs);
# the side travels separately and is given to render_face(..., sides=...). Contempt is the only
# unilateral prototype (FACS R12A+R14A); samplers pick the side at random, this is the default side.
UNILATERAL_AUS: Mapping[int, Mapping[int, str]] = MappingProxyType({
    7: MappingProxyType({12: "right", 14: "right"}),
})

# AUs that commonly accompany a prototype: {label: {AU: (probability, weight)}}.
_COMPANIONS: dict[int, dict[int, tuple[float, float]]] = {
    1: {25: (0.5, 0.6)},
    2: {17: (0.4, 0.5)},
    3: {25: (0.7, 0.7)},
    4: {25: (0.6, 0.6)},
    5: {4: (0.3, 0.5), 17: (0.4, 0.5), 25: (0.3, 0.4)},
    6: {17: (0.4, 0.6), 24: (0.3, 0.6)},
}
_DISTRACTOR_RANGE = (0.03, 0.18)

# AU occurrence rule: activation >= 0.4, i.e. FACS intensity >= 2 ("B") on the 0-5 scale (value * 5),
# the DISFA convention.
AU_OCCURRENCE_THRESHOLD = 0.4
AU_INTENSITY_SCALE = 5.0

# Micro vs macro by duration (frames onset..offset inclusive, divided by fps).
MICRO_MAX_SECONDS = 0.5
MICRO_SECONDS = (0.2, 0.45)
MACRO_SECONDS = (0.7, 3.5)
MICRO_PEAK = (0.2, 0.45)
MACRO_PEAK = (0.5, 1.0)
KINDS = ("micro", "macro")


def _check_label(label: int, num_classes: int = len(EMOTIONS)) -> int:
    if not 0 <= int(label) < num_classes:
        raise ValueError(f"emotion label must be in [0, {num_classes}), got {label}")
    return int(label)


def emotion_aus(label: int, intensity: float, rng: np.random.Generator) -> dict[int, float]:
    """AU activations for an emotion: its prototype scaled by intensity, common companions, and 0-2
    weak distractor AUs (so that no single AU value gives the label away)."""
    label = _check_label(label)
    proto = EMOTION_PROTOTYPES[label]
    out: dict[int, float] = {}
    for au, weight in proto.items():
        out[au] = float(np.clip(weight * intensity * rng.uniform(0.85, 1.15), 0.0, 1.0))
    for au, (prob, weight) in _COMPANIONS.get(label, {}).items():
        if rng.random() < prob:
            out[au] = max(out.get(au, 0.0), float(np.clip(weight * intensity * rng.uniform(0.6, 1.1), 0.0, 1.0)))
    candidates = [au for au in AUS if au not in out]
    for au in rng.choice(candidates, size=int(rng.integers(0, 3)), replace=False):
        out[int(au)] = float(rng.uniform(*_DISTRACTOR_RANGE))
    return out


def emotion_sides(label: int, rng: np.random.Generator | None = None) -> dict[int, str]:
    """Sides of the one-sided AUs of an emotion; with rng the side is random (same side for all)."""
    sides = dict(UNILATERAL_AUS.get(_check_label(label), {}))
    if sides and rng is not None:
        side = SIDES[int(rng.integers(2))]
        sides = {au: side for au in sides}
    return sides


def emotion_sample(subject: int, label: int, seed: int, size: int = 224) -> tuple[np.ndarray, dict[int, float]]:
    """One face of `subject` showing emotion `label` (EMOTIONS order) at a random intensity."""
    label = _check_label(label)
    rng = rng_for(0xE3, subject, label, seed)
    intensity = rng.uniform(0.3, 1.0)  # includes subtle expressions, the hard cases
    aus = emotion_aus(label, intensity, rng)
    sides = emotion_sides(label, rng)
    image = render_face(aus, subject, size=size, seed=int(rng.integers(2 ** 62)), sides=sides)
    return image, aus


def _random_au_set(rng: np.random.Generator) -> dict[int, float]:
    out: dict[int, float] = {}
    if rng.random() < 0.5:
        label = int(rng.integers(1, len(EMOTIONS) - 1))  # symmetric prototypes only
        out.update(emotion_aus(label, rng.uniform(0.2, 1.0), rng))
    for au in rng.choice(AUS, size=int(rng.integers(0, 4)), replace=False):
        # half the extra AUs fall below the occurrence threshold, half above it
        out[int(au)] = max(out.get(int(au), 0.0), float(rng.uniform(0.05, 1.0)))
    return out


def _make_consistent(aus: dict[int, float]) -> dict[int, float]:
    """Fix combinations the face cannot show as labelled: a dropped jaw always parts the lips, and
    pressed lips (AU24) cannot be parted."""
    opening = max(aus.get(25, 0.0), aus.get(26, 0.0), aus.get(27, 0.0))
    if opening > 0 and aus.get(24, 0.0) > 0:
        if aus[24] >= opening:
            for au in (25, 26, 27):
                aus.pop(au, None)
        else:
            aus.pop(24)
    jaw = max(aus.get(26, 0.0), aus.get(27, 0.0))
    if jaw > 0:
        aus[25] = max(aus.get(25, 0.0), jaw)
    return aus


def au_sample(subject: int, seed: int, size: int = 256) -> tuple[np.ndarray, dict[int, float]]:
    """A face with random sparse AU activations. Returns the image and {AU: activation} for every AU
    in AUS (0.0 when absent). activation * AU_INTENSITY_SCALE is the FACS 0-5 intensity; an AU occurs
    when activation >= AU_OCCURRENCE_THRESHOLD."""
    labels, rng = _au_labels(subject, seed)
    image = render_face(labels, subject, size=size, seed=int(rng.integers(2 ** 62)))
    return image, labels


def au_activations(subject: int, seed: int) -> dict[int, float]:
    """The labels `au_sample(subject, seed)` renders, without rendering the face."""
    return _au_labels(subject, seed)[0]


def _au_labels(subject: int, seed: int) -> tuple[dict[int, float], np.random.Generator]:
    rng = rng_for(0xA0, subject, seed)
    active = _make_consistent(_random_au_set(rng))
    return {au: round(float(active.get(au, 0.0)), 4) for au in AUS}, rng


def au_occurrence(aus: Mapping[int, float]) -> dict[int, int]:
    return {au: int(aus.get(au, 0.0) >= AU_OCCURRENCE_THRESHOLD) for au in AUS}


# --------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------

@dataclass
class Clip:
    """A short video of one expression: neutral, onset -> apex -> offset, neutral."""
    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    onset: int
    apex: int
    offset: int
    profile: np.ndarray  # float32 [T], activation per frame: 1 at apex, 0 outside [onset, offset]
    aus: dict[int, float]  # AU activations at the apex
    emotion: int  # EMOTIONS order
    fps: float
    kind: str = "micro"
    subject: int = 0
    sides: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """One expression inside a long video; frames onset..offset inclusive."""
    onset: int
    apex: int
    offset: int
    kind: str  # 'micro' | 'macro'
    emotion: int  # EMOTIONS order
    aus: dict[int, float] = field(default_factory=dict, compare=False, repr=False)  # at the apex
    sides: dict[int, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def length(self) -> int:
        return self.offset - self.onset + 1


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def _min_macro_frames(fps: float) -> int:
    return int(math.ceil(MICRO_MAX_SECONDS * fps + 1e-9))


def _event_length(kind: str, fps: float, rng: np.random.Generator) -> int:
    """Frames from onset to offset inclusive; micro stays under 0.5 s, macro reaches at least 0.5 s."""
    if kind == "micro":
        n = int(round(rng.uniform(*MICRO_SECONDS) * fps))
        longest = _min_macro_frames(fps) - 1
        return max(3, min(n, longest))
    n = int(round(rng.uniform(*MACRO_SECONDS) * fps))
    return max(n, _min_macro_frames(fps), 3)


def _place_apex(onset: int, length: int, rng: np.random.Generator) -> int:
    offset = onset + length - 1
    apex = onset + int(round(rng.uniform(0.3, 0.55) * (length - 1)))
    return min(max(apex, onset + 1), offset - 1)


def _pulse(i, onset: int, apex: int, offset: int):
    """Smooth rise onset -> apex and fall apex -> offset; 0 outside, 1 at the apex (works on arrays)."""
    i = np.asarray(i, np.float64)
    rise = np.clip((i - onset) / max(apex - onset, 1), 0.0, 1.0)
    fall = np.clip((offset - i) / max(offset - apex, 1), 0.0, 1.0)
    shape = np.where(i <= apex, np.sin(0.5 * np.pi * rise) ** 2, np.sin(0.5 * np.pi * fall) ** 2)
    return np.where((i >= onset) & (i <= offset), shape, 0.0)


def _scaled(aus: Mapping[int, float], k: float) -> dict[int, float]:
    return {au: v * k for au, v in aus.items()}


def _expression(kind: str, rng: np.random.Generator, emotion: int | None) -> tuple[int, dict[int, float], dict[int, str]]:
    label = int(rng.integers(1, len(EMOTIONS))) if emotion is None else _check_label(emotion)
    peak = rng.uniform(*(MICRO_PEAK if kind == "micro" else MACRO_PEAK))
    return label, emotion_aus(label, peak, rng), emotion_sides(label, rng)


def _frame_nuisance(base: Nuisance, pose, frame: int, seed: int) -> Nuisance:
    """Same camera for every frame of a video; only the sensor-noise pattern changes."""
    offset = ((frame * 37 + seed * 11) % 64, (frame * 53 + seed * 7) % 64)
    return replace(base, pose=pose, noise_offset=offset)


def _drifted(pose, drift, t: float):
    """Slow head drift: each pose component plus a low-frequency sinusoid (amp, freq_hz, phase)."""
    return tuple(p + a * math.sin(2 * math.pi * f * t + ph) for p, (a, f, ph) in zip(pose, drift))


def _random_drift(rng: np.random.Generator, strength: float = 1.0):
    amplitudes = np.array([1.2, 0.012, 0.08, 0.006, 0.004]) * strength
    return tuple((float(a * rng.uniform(0.3, 1.0)), float(rng.uniform(0.03, 0.15)), float(rng.uniform(0, 2 * math.pi)))
                 for a in amplitudes)


def expression_clip(subject: int, seed: int, *, kind: str = "micro", fps: float = 200.0,
                    n_frames: int | None = None, size: int = 224, emotion: int | None = None) -> Clip:
    """One micro or macro expression of `subject` with neutral frames before onset and after offset.

    micro: peak activation 0.2-0.45, onset..offset shorter than 0.5 s; macro: peak 0.5-1.0, 0.5-3.5 s.
    n_frames fixes the clip length; a micro expression longer than the clip is shortened to fit, a
    macro one that cannot fit in at least 0.5 s raises ValueError. emotion=None picks a random
    non-neutral emotion.
    """
    _check_kind(kind)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    rng = rng_for(0xC1, subject, seed, KINDS.index(kind))
    label, apex_aus, sides = _expression(kind, rng, emotion)
    length = _event_length(kind, fps, rng)
    if n_frames is None:
        before = int(round(rng.uniform(0.08, 0.25) * fps)) + 1
        after = int(round(rng.uniform(0.08, 0.25) * fps)) + 1
        total = before + length + after
    else:
        total = int(n_frames)
        room = total - 2  # at least one neutral frame on each side
        if kind == "macro" and room < _min_macro_frames(fps):
            raise ValueError(f"a macro expression needs >= {_min_macro_frames(fps) + 2} frames at {fps} fps, "
                             f"got n_frames={n_frames}")
        if room < 3:
            raise ValueError(f"n_frames must be >= 5, got {n_frames}")
        length = min(length, room)
        before = int(rng.integers(1, total - length))
    onset = before
    offset = onset + length - 1
    apex = _place_apex(onset, length, rng)
    profile = _pulse(np.arange(total), onset, apex, offset).astype(np.float32)
    base = sample_nuisance(int(rng.integers(2 ** 62)))
    drift = _random_drift(rng, strength=0.3)
    frames = np.empty((total, size, size, 3), np.uint8)
    for i in range(total):
        nz = _frame_nuisance(base, _drifted(base.pose, drift, i / fps), i, seed)
        frames[i] = render_face(_scaled(apex_aus, float(profile[i])), subject, size=size, sides=sides, nuisance=nz)
    return Clip(frames, onset, apex, offset, profile, apex_aus, label, float(fps), kind, int(subject), sides)


# --------------------------------------------------------------------------------------------
# Long videos
# --------------------------------------------------------------------------------------------

@dataclass
class LongVideo:
    """A long recording with several non-overlapping expressions (events) and distractors that are not
    events: blinks (AU45 pulses, free to overlap events) and slow head drift. Frames render lazily."""
    subject: int
    seed: int
    n_frames: int
    fps: float
    size: int
    events: list[Event]
    blinks: list[tuple[int, int, int]]  # (onset, apex, offset) of each AU45 pulse
    _camera: Nuisance = field(repr=False, default_factory=Nuisance)
    _drift: tuple = field(repr=False, default=())

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, i: int) -> np.ndarray:
        return self.frame(i)

    def aus_at(self, i: int) -> tuple[dict[int, float], dict[int, str]]:
        """AU activations (and one-sided AUs) shown at frame i."""
        aus: dict[int, float] = {}
        sides: dict[int, str] = {}
        for ev in self.events:
            if ev.onset <= i <= ev.offset:
                aus = _scaled(ev.aus, float(_pulse(i, ev.onset, ev.apex, ev.offset)))
                sides = dict(ev.sides)
                break
        blink = max((float(_pulse(i, *b)) for b in self.blinks if b[0] <= i <= b[2]), default=0.0)
        if blink > 0:
            aus[45] = max(aus.get(45, 0.0), blink)
            sides.pop(45, None)
        return aus, sides

    @property
    def profile(self) -> np.ndarray:
        """float32 [n_frames]: expression activation per frame (events only, no blinks)."""
        out = np.zeros(self.n_frames, np.float32)
        for ev in self.events:
            idx = np.arange(ev.onset, ev.offset + 1)
            out[idx] = _pulse(idx, ev.onset, ev.apex, ev.offset)
        return out

    def frame(self, i: int) -> np.ndarray:
        i = int(i)
        if not 0 <= i < self.n_frames:
            raise IndexError(f"frame {i} outside [0, {self.n_frames})")
        aus, sides = self.aus_at(i)
        pose = _drifted(self._camera.pose, self._drift, i / self.fps)
        nz = _frame_nuisance(self._camera, pose, i, self.seed)
        return render_face(aus, self.subject, size=self.size, sides=sides, nuisance=nz)

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """uint8 [stop - start, H, W, 3] for frames start..stop-1."""
        stop = self.n_frames if stop is None else stop
        if not 0 <= start <= stop <= self.n_frames:
            raise IndexError(f"frames({start}, {stop}) outside [0, {self.n_frames}]")
        out = np.empty((stop - start, self.size, self.size, 3), np.uint8)
        for k, i in enumerate(range(start, stop)):
            out[k] = self.frame(i)
        return out


def _place_events(n_frames: int, fps: float, rng: np.random.Generator) -> list[Event]:
    events: list[Event] = []
    cursor = int(round(rng.uniform(0.5, 2.0) * fps))
    while True:
        kind = KINDS[int(rng.random() < 0.5)]
        length = _event_length(kind, fps, rng)
        if cursor + length + int(0.2 * fps) >= n_frames and kind == "macro":
            kind, length = "micro", _event_length("micro", fps, rng)
        if cursor + length + int(0.2 * fps) >= n_frames:
            return events
        label, aus, sides = _expression(kind, rng, None)
        apex = _place_apex(cursor, length, rng)
        events.append(Event(cursor, apex, cursor + length - 1, kind, label, aus, sides))
        cursor += length + int(round(rng.uniform(1.0, 4.0) * fps))


def _place_blinks(n_frames: int, fps: float, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    blinks = []
    t = rng.uniform(0.5, 4.0) * fps
    while True:
        length = max(3, int(round(rng.uniform(0.1, 0.25) * fps)))
        onset = int(t)
        if onset + length > n_frames:
            return blinks
        blinks.append((onset, onset + length // 2, onset + length - 1))
        t += length + rng.uniform(1.5, 6.0) * fps


def long_video(subject: int, seed: int, *, fps: float = 30.0, seconds: float = 20.0, size: int = 224) -> LongVideo:
    """A lazily rendered long video of `subject` for expression spotting (see LongVideo)."""
    if fps <= 0 or seconds <= 0:
        raise ValueError(f"fps and seconds must be > 0, got fps={fps}, seconds={seconds}")
    rng = rng_for(0x10, subject, seed)
    n_frames = int(round(fps * seconds))
    events = _place_events(n_frames, fps, rng)
    blinks = _place_blinks(n_frames, fps, rng)
    camera = sample_nuisance(int(rng.integers(2 ** 62)))
    camera = replace(camera, pose=random_pose(rng))
    return LongVideo(int(subject), int(seed), n_frames, float(fps), int(size), events, blinks, camera,
                     _random_drift(rng))
