"""The optical-flow threshold spotter the application runs today (main-directional maximal difference style, as
the MEGC2020 baseline), on the same features as the learned spotter, so the two are compared on equal terms.

Per feature frame, the motion score is the mean of the largest third of the regions' relative flow magnitudes
(the regions that moved most, head motion already removed). Per type it is smoothed over a window of the type's
typical half-length K (micro 0.1 s, macro 0.5 s), and every peak above mean + p x (max - mean) of that video, at
least 2K apart, becomes the interval [peak - K, peak + K]. The relative threshold p of each type is chosen on
training videos (`fit`), never on the videos it is tested on. NumPy only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from spotting.postprocess import TYPES, Interval, local_peaks, nms

HALF_SECONDS = {"micro": 0.1, "macro": 0.5}
P_GRID = tuple(np.round(np.linspace(0.05, 0.95, 19), 2))


def motion_score(features: np.ndarray, regions: int) -> np.ndarray:
    """[T] from features [T, D] laid out as spotting.features: (dx, dy, mag) per moving region, then head dx, dy."""
    magnitudes = features[:, 2:3 * (regions - 1):3]
    top = max(1, magnitudes.shape[1] // 3)
    return np.sort(magnitudes, axis=1)[:, -top:].mean(1)


def smooth(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    return np.convolve(np.pad(x, (width // 2, width - 1 - width // 2), mode="edge"), kernel, mode="valid")


@dataclass
class ThresholdSpotter:
    """regions: regions of the features (reference included). p: relative threshold per type (set by `fit`)."""

    regions: int
    p: dict = field(default_factory=lambda: {kind: 0.5 for kind in TYPES})

    def half_width(self, kind: str, fps: float) -> int:
        return max(1, int(round(HALF_SECONDS[kind] * fps)))

    def spot(self, features: np.ndarray, numbers: Sequence[int], fps: float, step: int = 1,
             p: dict | None = None) -> list[Interval]:
        p = p or self.p
        score = motion_score(np.asarray(features, np.float32), self.regions)
        numbers = np.asarray(numbers)
        out = []
        for kind in TYPES:
            k = self.half_width(kind, fps)
            curve = smooth(score, k)
            threshold = curve.mean() + p[kind] * (curve.max() - curve.mean())
            found = []
            for peak in local_peaks(curve, threshold, 2 * k):
                onset, offset = max(peak - k, 0), min(peak + k, len(curve) - 1)
                found.append(Interval(int(numbers[onset]), int(numbers[peak]), int(numbers[offset]) + step - 1, kind,
                                      float(curve[peak])))
            out += nms(found)
        return sorted(out, key=lambda i: (i.onset, i.type))

    def fit(self, videos: Sequence[tuple[np.ndarray, np.ndarray, float, int, list]]) -> dict:
        """Choose p per type for the best F1 on `videos` (features, numbers, fps, step, ground-truth spots)."""
        from spotting.evaluate import Spot, megc_scores

        best = {}
        for kind in TYPES:
            scores = []
            for p in P_GRID:
                truth, guesses = [], []
                for v, (features, numbers, fps, step, gt) in enumerate(videos):
                    truth += [Spot(str(v), s.onset, s.offset, s.label) for s in gt if s.label == kind]
                    guesses += [Spot(str(v), i.onset, i.offset, i.type)
                                for i in self.spot(features, numbers, fps, step, {**self.p, kind: float(p)})
                                if i.type == kind]
                scores.append(megc_scores(truth, guesses)[kind]["f1"])
            best[kind] = float(P_GRID[int(np.argmax(scores))])
        self.p = best
        return best
