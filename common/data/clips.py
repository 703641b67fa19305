"""Clip sampling: an annotated interval or a window of a long video -> T frame positions -> T frames.

Positions are in frame numbers and may be fractional. Where the interval holds at least T frames, they are
rounded (every returned frame is a real frame); where it holds fewer, the fractional positions are kept and
`gather_clip` blends the two neighbouring frames linearly (temporal interpolation), so a 5-frame SMIC clip
still gives 16 distinct, evenly spaced frames instead of runs of copies. Frame numbers missing from a folder
(CAS(ME)³ has gaps) are replaced by the nearest existing frame.

Policies:
    uniform     T positions evenly from onset to offset (with an rng: one random position per segment, TSN-style)
    apex        T consecutive frames (times `step`) centred on the apex and kept inside the interval; an interval
                too short for that is warped piecewise onset->apex->offset so the apex stays at position T//2
    onset_apex  the pair (onset, apex) that optical-flow methods use; T is ignored
A missing apex counts as the middle of the interval (SMIC annotates none, SAMM and CASME II miss a few).
"""
from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

from common.data.records import Interval
from common.data.readers import positions_in

POLICIES = ("uniform", "apex", "onset_apex")


def clip_positions(interval: Interval, length: int = 16, policy: str = "uniform", step: int = 1,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """Frame numbers (float) for one clip of `length` frames from `interval`."""
    if length < 1:
        raise ValueError(f"clip length must be at least 1, got {length}")
    if policy == "uniform":
        positions = uniform_positions(interval.onset, interval.offset, length, rng)
    elif policy == "apex":
        positions = apex_positions(interval, length, step)
    elif policy == "onset_apex":
        positions = np.array([interval.onset, interval.apex_or_middle], dtype=np.float64)
    else:
        raise ValueError(f"clip policy must be one of {POLICIES}, got {policy!r}")
    return snap_if_enough(positions, interval.length, length)


def snap_if_enough(positions: np.ndarray, available: int, length: int) -> np.ndarray:
    """Round to real frames unless the interval is too short to give `length` distinct ones."""
    return np.rint(positions) if available >= length else positions


def uniform_positions(first: float, last: float, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    if length == 1:
        return np.array([(first + last) / 2 if rng is None else rng.uniform(first, last)])
    if rng is None:
        return np.linspace(first, last, length)
    edges = np.linspace(first, last, length + 1)
    return edges[:-1] + rng.random(length) * (edges[1:] - edges[:-1])


def apex_positions(interval: Interval, length: int, step: int = 1) -> np.ndarray:
    apex = interval.apex_or_middle
    span = (length - 1) * step
    if span <= interval.offset - interval.onset:
        start = np.clip(apex - (length // 2) * step, interval.onset, interval.offset - span)
        return start + np.arange(length) * step
    before = np.linspace(interval.onset, apex, length // 2 + 1)
    after = np.linspace(apex, interval.offset, length - length // 2)
    return np.concatenate([before[:-1], after])


def sliding_windows(first: int, last: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Inclusive (start, end) frame-number windows over first..last; the final one ends at `last`, so the
    tail of a long video is never dropped. A video shorter than one window gives one short window."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
    if last - first + 1 <= window:
        return [(first, last)]
    starts = list(range(first, last - window + 2, stride))
    if starts[-1] + window - 1 < last:
        starts.append(last - window + 1)
    return [(s, s + window - 1) for s in starts]


def window_positions(start: int, end: int, length: int) -> np.ndarray:
    """`length` positions evenly over a window (a long video downsampled into a clip)."""
    return snap_if_enough(np.linspace(start, end, length), end - start + 1, length)


def blend_plan(positions: np.ndarray, available: np.ndarray, where: object = "clip"):
    """For each position: the two frames around it (as positions in `available`) and the weight of the later.

    Gaps are filled with the nearest existing frame, which is the rule for every reader of this project.
    """
    positions = np.asarray(positions, dtype=np.float64)
    lower = np.floor(positions)
    weight = positions - lower
    lo = positions_in(available, lower.astype(np.int64), "nearest", where)
    hi = positions_in(available, (lower + (weight > 0)).astype(np.int64), "nearest", where)
    return lo, hi, np.where(lo == hi, 0.0, weight)


def gather_clip(read: Callable[[Sequence[int]], np.ndarray], positions: np.ndarray, available: np.ndarray,
                where: object = "clip") -> np.ndarray:
    """Frames at fractional frame-number positions; `read(p)` reads positions of `available`. uint8 out."""
    lo, hi, weight = blend_plan(positions, available, where)
    needed = np.unique(np.concatenate([lo, hi[weight > 0]]))
    frames = read(needed)
    lookup = {int(p): i for i, p in enumerate(needed)}
    first = frames[[lookup[int(p)] for p in lo]]
    if not (weight > 0).any():
        return first
    second = frames[[lookup[int(p)] for p in np.where(weight > 0, hi, lo)]]
    blended = first.copy()
    for i in np.flatnonzero(weight > 0):  # OpenCV's saturating blend: about 50x faster than float arrays
        blended[i] = cv2.addWeighted(first[i], 1.0 - float(weight[i]), second[i], float(weight[i]), 0.0)
    return blended
