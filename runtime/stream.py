"""Streaming inputs: frames in, clips / intervals / classified intervals out, as the frames arrive.

ClipBuffer (micro-expression clips). A clip is `length` frames sampled at `length` evenly spaced times over the
last `span` seconds, ending at the newest frame; each time picks the buffered frame nearest to it (a camera slower
than the clip's rate repeats frames, a faster one skips them: that is the fps resampling). Once the buffer covers
the span, a clip is emitted every `stride` frames; `flush()` at the end of the stream emits a last clip ending at
the last frame if frames came after the previous clip (a stream shorter than the span is padded with its first
frame). The buffer holds ceil(span x camera fps) + 1 frames, nothing more.

StreamingSpotter (spotting). Aligned grey faces in; per kept frame (the same subsampling as offline) the motion
features of spotting.features; the network runs on windows with `receptive_radius` frames of context on both
sides, so every score equals the whole-video pass; intervals come from spotting.postprocess and are emitted once
no later frame can change them (their apex is more than `margin` frames behind the last final score), each exactly
once. `flush()` finishes the video. The emitted intervals are those of `spot()` on the whole video's scores.

SpotThenRecognise: each emitted micro interval is sampled into a clip (uniform onset..offset, as training) from a
history of aligned faces and classified; rows are MEGC2024 STRS rows (subject, video, onset, offset, emotion).
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from common.data.clips import uniform_positions
from spotting.features import FeatureSettings, FlowFeatures
from spotting.postprocess import TYPES, Interval, SpotSettings, plausible_lengths, proposals, select


# ---------------------------------------------------------------- clips


def clip_fps_of(metadata: dict) -> float:
    """The rate the micro-expression model's clips were sampled at (one fps, or the training datasets' median)."""
    value = metadata.get("fps", "")
    try:
        parsed = json.loads(value) if value else {}
    except json.JSONDecodeError:
        parsed = float(value)
    rates = list(parsed.values()) if isinstance(parsed, dict) else [parsed]
    rates = [float(r) for r in rates if r]
    return float(np.median(rates)) if rates else 30.0


def clip_span_of(metadata: dict, length: int) -> float:
    """Seconds a streamed clip covers: a uniform onset..offset model saw whole expressions (up to 0.5 s); an
    apex-centred one saw `length` consecutive frames at its fps."""
    if "uniform" in metadata.get("clip_sampling", "uniform"):
        return 0.5
    return (length - 1) / clip_fps_of(metadata)


class ClipBuffer:
    def __init__(self, length: int = 16, span: float = 0.5, camera_fps: float = 30.0, stride: int = 8):
        if length < 1 or span <= 0 or camera_fps <= 0 or stride < 1:
            raise ValueError(f"ClipBuffer needs length >= 1, span > 0, camera_fps > 0, stride >= 1; got {length}, "
                             f"{span}, {camera_fps}, {stride}")
        self.length, self.span, self.camera_fps, self.stride = length, span, camera_fps, stride
        self.capacity = int(math.ceil(span * camera_fps)) + 1
        self._frames: deque = deque(maxlen=self.capacity)
        self._since_clip = 0
        self._count = 0

    @classmethod
    def for_model(cls, metadata: dict, camera_fps: float, stride: int = 8) -> "ClipBuffer":
        length = int(metadata.get("clip_length") or 16)
        return cls(length, clip_span_of(metadata, length), camera_fps, stride)

    @property
    def nbytes(self) -> int:
        return sum(frame.nbytes for _, frame in self._frames)

    def push(self, frame: np.ndarray, number: int | None = None) -> np.ndarray | None:
        """Add a frame (its number defaults to a running count); a clip [length, ...] when one is due."""
        number = self._count if number is None else number
        self._count += 1
        self._frames.append((number, frame))
        self._since_clip += 1
        covered = (self._frames[-1][0] - self._frames[0][0]) / self.camera_fps >= self.span - 1e-9
        if covered and self._since_clip >= self.stride:
            return self._clip()
        return None

    def flush(self) -> np.ndarray | None:
        return self._clip() if self._frames and self._since_clip > 0 and self._count > 0 else None

    def sample_numbers(self) -> np.ndarray:
        """Frame numbers of the clip that would be emitted now."""
        numbers = np.array([n for n, _ in self._frames], dtype=np.float64)
        times = numbers[-1] - np.linspace(self.span, 0.0, self.length) * self.camera_fps
        chosen = np.abs(numbers[None, :] - times[:, None]).argmin(1)
        return numbers[chosen].astype(np.int64)

    def _clip(self) -> np.ndarray:
        self._since_clip = 0
        frames = dict(self._frames)
        return np.stack([frames[int(n)] for n in self.sample_numbers()])


# ---------------------------------------------------------------- spotting


def spot_settings(metadata: dict, fps: float, step: int) -> SpotSettings:
    """Post-processing settings from the spotting model's metadata for a video whose features run at `fps`."""
    thresholds = json.loads(metadata["thresholds"])
    gap = max(1, int(round(float(metadata.get("min_gap_seconds", 0.3)) * fps)))
    return SpotSettings(thresholds, plausible_lengths(fps * step), float(metadata.get("boundary", 0.5)),
                        {k: gap for k in TYPES})


def feature_settings(metadata: dict) -> FeatureSettings:
    values = {k: v for k, v in json.loads(metadata["feature_settings"]).items() if k != "names"}
    return FeatureSettings(**values)


class StreamingSpotter:
    """Args: scores: a callable features [1, T, D] -> scores [1, T, 6] (a runtime Model's `predict` for
    `features`). metadata: the spotting model's. source_fps: the video's frame rate. chunk: feature frames scored at
    a time."""

    def __init__(self, scores: Callable[[np.ndarray], np.ndarray], metadata: dict, source_fps: float, chunk: int = 64):
        self.score_fn, self.metadata = scores, metadata
        self.features_settings = feature_settings(metadata)
        self.step = self.features_settings.step(source_fps)
        self.k = self.features_settings.gap(source_fps)
        self.fps = source_fps / self.step
        self.radius = int(metadata["receptive_radius"])
        self.settings = spot_settings(metadata, self.fps, self.step)
        longest = max((hi or int(4.5 * self.fps * self.step)) for _, hi in self.settings.lengths.values())
        self.reach = int(math.ceil(longest / self.step)) + 2
        self.margin = 2 * self.reach + max(self.settings.gap(k) for k in TYPES)  # feature frames
        self.chunk = chunk
        self.maker = FlowFeatures(self.features_settings)
        self._faces: deque = deque(maxlen=self.k + 1)
        self._features: list[np.ndarray] = []
        self._numbers: list[int] = []
        self._scores = np.zeros((0, 6), np.float32)
        self._seen = 0
        self._cut = 0  # feature index from which apexes are still undecided

    def push(self, grey_face: np.ndarray, number: int) -> list[Interval]:
        """One aligned grey face of the video (every frame, in order); the intervals that became final."""
        index = self._seen
        self._seen += 1
        if index % self.step:
            return []
        self._faces.append(grey_face)
        t = len(self._features)
        value = (np.zeros(self.features_settings.dim, np.float32) if t == 0 else
                 self.maker.pooled(self.maker.flow(self._faces[max(0, len(self._faces) - 1 - self.k)], grey_face)))
        self._features.append(value)
        self._numbers.append(int(number))
        if len(self._features) - self.radius - len(self._scores) >= self.chunk:
            self._score(final=False)
            return self._emit(final=False)
        return []

    def flush(self) -> list[Interval]:
        self._score(final=True)
        return self._emit(final=True)

    def _score(self, final: bool) -> None:
        done, total = len(self._scores), len(self._features)
        end = total if final else total - self.radius
        if end <= done:
            return
        start = max(0, done - self.radius)
        window = np.stack(self._features[start:total])[None]
        scores = np.asarray(self.score_fn(window))[0]
        self._scores = np.concatenate([self._scores, scores[done - start:end - start]])

    def _emit(self, final: bool) -> list[Interval]:
        known = len(self._scores)
        limit = known if final else known - self.margin
        if limit <= self._cut:
            return []
        start = max(0, self._cut - self.margin)
        numbers = np.asarray(self._numbers[start:known])
        found = proposals(self._scores[start:known], numbers, self.settings, self.step)
        apex_index = {n: i for i, n in enumerate(self._numbers)}
        kept = [i for i in select(found, self.settings.thresholds) if self._cut <= apex_index[i.apex] < limit]
        self._cut = limit
        return kept

    @property
    def scores(self) -> np.ndarray:
        return self._scores

    @property
    def features(self) -> np.ndarray:
        return np.stack(self._features) if self._features else np.zeros((0, self.features_settings.dim), np.float32)


# ---------------------------------------------------------------- spot, then recognise


@dataclass
class RecognisedInterval:
    onset: int
    apex: int
    offset: int
    emotion: str
    probs: np.ndarray


class SpotThenRecognise:
    """Classifies each micro interval the spotter emits with the micro-expression model.

    Args: classify: clip [1, T, 3, S, S] float in [0, 1] -> probs [1, C]. classes: the model's class names.
    length: clip length. history: frames of aligned faces kept (must cover the spotter's emission delay)."""

    def __init__(self, classify: Callable[[np.ndarray], np.ndarray], classes: Sequence[str], length: int = 16,
                 history: int = 900):
        self.classify, self.classes, self.length = classify, list(classes), length
        self._faces: dict[int, np.ndarray] = {}
        self._order: deque = deque(maxlen=history)

    def push(self, face: np.ndarray, number: int) -> None:
        """An aligned RGB face uint8 [S, S, 3] for the micro-expression model."""
        if len(self._order) == self._order.maxlen:
            self._faces.pop(self._order[0], None)
        self._order.append(number)
        self._faces[number] = face

    def recognise(self, interval: Interval) -> RecognisedInterval | None:
        available = sorted(n for n in self._faces if interval.onset <= n <= interval.offset)
        if not available:
            return None
        positions = np.rint(uniform_positions(0, len(available) - 1, self.length)).astype(int)  # as training samples
        clip = np.stack([self._faces[available[p]] for p in positions]).astype(np.float32) / 255
        probs = np.asarray(self.classify(clip.transpose(0, 3, 1, 2)[None]))[0]
        return RecognisedInterval(interval.onset, interval.apex, interval.offset, self.classes[int(probs.argmax())], probs)


STRS_COLUMNS = ("subject", "video", "onset", "offset", "emotion")


def strs_rows(subject: str, video: str, recognised: Sequence[RecognisedInterval]) -> list[dict]:
    return [{"subject": subject, "video": video, "onset": r.onset, "offset": r.offset, "emotion": r.emotion}
            for r in recognised]
