"""Per-frame scores -> intervals: apex peaks, boundary search, NMS, plausible lengths. NumPy only: the runtime
(and the application's port) applies exactly this to the exported model's output.

Scores are [T, 6]: for macro then micro, actionness (inside an expression), start (its onset) and end (its
offset), each in [0, 1] (SCORE_NAMES). For one type: every local maximum of the actionness at or above the
type's threshold, at least `min_gap` frames from a higher one, is an apex; its interval grows to both sides while
the actionness stays above `boundary` x the peak's, and each side then moves to the highest start (end) score
within half the grown length of it; the interval's score is the peak's actionness. Intervals are converted to
the video's frame numbers, kept when their length (in source frames) is within the type's plausible range, and
suppressed by a higher-scoring one of the same type at IoU >= 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from spotting.evaluate import iou

TYPES = ("macro", "micro")
SCORE_NAMES = ("macro_action", "macro_start", "macro_end", "micro_action", "micro_start", "micro_end")
NMS_IOU = 0.5


@dataclass(frozen=True)
class Interval:
    onset: int
    apex: int
    offset: int
    type: str
    score: float

    @property
    def length(self) -> int:
        return self.offset - self.onset + 1


@dataclass(frozen=True)
class SpotSettings:
    """thresholds: actionness an apex must reach, per type. lengths: plausible (shortest, longest) interval in source
    frames per type (None: no limit). boundary: share of the peak the actionness keeps inside an interval.
    min_gap: frames between two apexes of one type (in score frames)."""

    thresholds: Mapping[str, float]
    lengths: Mapping[str, tuple[int | None, int | None]]
    boundary: float = 0.5
    min_gap: Mapping[str, int] | None = None

    def gap(self, kind: str) -> int:
        return int((self.min_gap or {}).get(kind, 3))


def local_peaks(x: np.ndarray, height: float, min_gap: int) -> list[int]:
    """Indices of local maxima >= height; of peaks closer than min_gap, the higher (then the earlier) is kept."""
    x = np.asarray(x, np.float64)
    if x.size == 0:
        return []
    left = np.concatenate([[-np.inf], x[:-1]])
    right = np.concatenate([x[1:], [-np.inf]])
    candidates = np.flatnonzero((x >= height) & (x > left) & (x >= right))
    kept: list[int] = []
    for index in sorted(candidates, key=lambda i: (-x[i], i)):
        if all(abs(index - k) >= min_gap for k in kept):
            kept.append(int(index))
    return sorted(kept)


def grow(action: np.ndarray, peak: int, boundary: float) -> tuple[int, int]:
    floor = boundary * action[peak]
    left = peak
    while left > 0 and action[left - 1] >= floor:
        left -= 1
    right = peak
    while right < len(action) - 1 and action[right + 1] >= floor:
        right += 1
    return left, right


def refine(score: np.ndarray, around: int, lo: int, hi: int) -> int:
    """The position of the highest score in [lo, hi] (clipped), `around` where nothing stands out."""
    lo, hi = max(lo, 0), min(hi, len(score) - 1)
    if hi < lo:
        return around
    window = score[lo:hi + 1]
    return int(lo + np.argmax(window)) if window.max() > 0 else around


def candidates(scores: np.ndarray, kind: str, settings: SpotSettings) -> list[tuple[int, int, int, float]]:
    """(onset, apex, offset, score) in score frames for one type."""
    base = 3 * TYPES.index(kind)
    action, start, end = scores[:, base], scores[:, base + 1], scores[:, base + 2]
    found = []
    for peak in local_peaks(action, settings.thresholds[kind], settings.gap(kind)):
        left, right = grow(action, peak, settings.boundary)
        reach = max(1, (right - left + 1) // 2)
        onset = refine(start, left, left - reach, min(left + reach, peak))
        offset = refine(end, right, max(right - reach, peak), right + reach)
        found.append((min(onset, peak), peak, max(offset, peak), float(action[peak])))
    return found


def nms(intervals: Sequence[Interval], threshold: float = NMS_IOU) -> list[Interval]:
    kept: list[Interval] = []
    for interval in sorted(intervals, key=lambda i: (-i.score, i.onset)):
        if all(iou((interval.onset, interval.offset), (k.onset, k.offset)) < threshold for k in kept):
            kept.append(interval)
    return sorted(kept, key=lambda i: (i.onset, i.offset))


def within(length: int, bounds: tuple[int | None, int | None]) -> bool:
    lo, hi = bounds
    return (lo is None or length >= lo) and (hi is None or length <= hi)


def proposals(scores: np.ndarray, numbers: Sequence[int], settings: SpotSettings, step: int = 1,
              types: Sequence[str] = TYPES, floor: float | None = None) -> list[Interval]:
    """Every interval of plausible length whose apex reaches `floor` (default: its type's threshold), in the video's
    frame numbers, before NMS. The peaks above a higher threshold are exactly those of these whose score reaches it
    (a peak is only ever suppressed by a higher one), so one call serves a whole threshold sweep (`select`)."""
    scores, numbers = np.asarray(scores, np.float32), np.asarray(numbers)
    if scores.ndim != 2 or scores.shape[1] != len(SCORE_NAMES) or len(scores) != len(numbers):
        raise ValueError(f"scores must be [T, {len(SCORE_NAMES)}] with one frame number per row; got "
                         f"{scores.shape} and {len(numbers)} numbers")
    out = []
    for kind in types:
        lowered = settings if floor is None else SpotSettings({**settings.thresholds, kind: floor}, settings.lengths,
                                                              settings.boundary, settings.min_gap)
        for onset, apex, offset, score in candidates(scores, kind, lowered):
            interval = Interval(int(numbers[onset]), int(numbers[apex]), int(numbers[offset]) + step - 1, kind, score)
            if within(interval.length, settings.lengths.get(kind, (None, None))):
                out.append(interval)
    return out


def select(found: Sequence[Interval], thresholds: Mapping[str, float]) -> list[Interval]:
    """The proposals at or above their type's threshold, after NMS per type, in time order."""
    kept = []
    for kind in TYPES:
        kept += nms([i for i in found if i.type == kind and i.score >= thresholds.get(kind, np.inf)])
    return sorted(kept, key=lambda i: (i.onset, i.type))


def spot(scores: np.ndarray, numbers: Sequence[int], settings: SpotSettings, step: int = 1,
         types: Sequence[str] = TYPES) -> list[Interval]:
    """Intervals in the video's frame numbers from scores [T, 6] at the frames `numbers` [T] (subsampled by `step`:
    an offset covers the source frames up to the next kept one)."""
    return select(proposals(scores, numbers, settings, step, types), {k: settings.thresholds[k] for k in types})


def plausible_lengths(fps: float) -> dict[str, tuple[int, int | None]]:
    """Source frames: micro up to 0.5 s, macro from 0.5 s to 4 s (the datasets' definitions), with a little slack
    below (onsets are soft) and above (offsets are)."""
    half = int(round(0.5 * fps))
    return {"micro": (max(2, int(round(0.1 * fps))), half), "macro": (half + 1, int(round(4.5 * fps)))}
