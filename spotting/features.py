"""Per-frame facial motion: optical flow of the aligned face between frames k apart, pooled over facial regions,
with the head's own motion (the nose root's flow) taken out.

A video is aligned with ONE similarity transform (common.data.align, from probe frames spread over the video), so
the regions sit on the same facial parts in every frame; what head drift remains moves the nose root too and is
subtracted from every region. Videos faster than `target_fps` are first subsampled by a whole step (SAMM's 200 fps
by 7). For each kept frame t the flow runs from frame t - k to t (frame 0 for the first k frames: zero motion).

Per region, with the reference region's mean flow subtracted and everything divided by the inter-ocular distance:
mean dx, mean dy and mean magnitude; then the reference region's own mean dx, dy (head motion, so a model can
learn to distrust it). D = 3 x (regions - 1) + 2.

Features of a video are cached as .npz files keyed by the video, its frame count and every setting, so they are
computed once per dataset and settings (`FeatureCache`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from common.data.align import AlignSettings, FaceAligner, template

# name -> (anchor: weights over the 5 template points, offset in inter-ocular units (dx, dy), half size (w, h))
# points: 0 left eye, 1 right eye, 2 nose tip, 3 left mouth corner, 4 right mouth corner (image left)
REGIONS: dict[str, tuple[tuple[float, ...], tuple[float, float], tuple[float, float]]] = {
    "nose_root": ((0.5, 0.5, 0, 0, 0), (0.0, 0.0), (0.12, 0.12)),
    "brow_left": ((1, 0, 0, 0, 0), (-0.05, -0.42), (0.32, 0.14)),
    "brow_right": ((0, 1, 0, 0, 0), (0.05, -0.42), (0.32, 0.14)),
    "brow_inner": ((0.5, 0.5, 0, 0, 0), (0.0, -0.38), (0.2, 0.14)),
    "eye_left": ((1, 0, 0, 0, 0), (0.0, 0.0), (0.25, 0.12)),
    "eye_right": ((0, 1, 0, 0, 0), (0.0, 0.0), (0.25, 0.12)),
    "cheek_left": ((0.5, 0, 0, 0.5, 0), (-0.2, 0.0), (0.18, 0.18)),
    "cheek_right": ((0, 0.5, 0, 0, 0.5), (0.2, 0.0), (0.18, 0.18)),
    "nose": ((0, 0, 1, 0, 0), (0.0, -0.05), (0.2, 0.14)),
    "mouth_left": ((0, 0, 0, 1, 0), (0.0, 0.0), (0.16, 0.16)),
    "mouth_right": ((0, 0, 0, 0, 1), (0.0, 0.0), (0.16, 0.16)),
    "chin": ((0, 0, 0, 0.5, 0.5), (0.0, 0.42), (0.3, 0.16)),
}
REFERENCE = "nose_root"
FLOW_METHODS = ("dis", "farneback")


@dataclass(frozen=True)
class FeatureSettings:
    """How features are made; everything here is part of the cache key and of the exported metadata.

    size: side of the aligned face the flow runs on. margin: context around the alignment template. k: frame gap
    of the flow, in frames after subsampling (None: round(0.1 s x fps after subsampling), at least 1). method: dis
    (OpenCV DIS, fast) or farneback. target_fps: videos faster than this are subsampled by a whole step.
    regions: names from REGIONS; the first is the reference whose motion is removed. detector: as common.data.align
    ('none' for faces that already fill the frame).
    """

    size: int = 128
    margin: float = 0.15
    k: int | None = None
    method: str = "dis"
    target_fps: float = 30.0
    regions: tuple[str, ...] = tuple(REGIONS)
    detector: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "regions", tuple(self.regions))
        if self.method not in FLOW_METHODS:
            raise ValueError(f"flow method must be one of {FLOW_METHODS}, got {self.method!r}")
        unknown = [r for r in self.regions if r not in REGIONS]
        if unknown or len(self.regions) < 2:
            raise ValueError(f"regions {list(self.regions)}: need a reference and at least one more, from {list(REGIONS)}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"flow gap k must be >= 1, got {self.k}")
        if self.target_fps <= 0:
            raise ValueError(f"target_fps must be > 0, got {self.target_fps}")

    @property
    def dim(self) -> int:
        return 3 * (len(self.regions) - 1) + 2

    def step(self, fps: float) -> int:
        """Subsampling step for a video at `fps` (1 unless it is much faster than target_fps)."""
        return max(1, int(round(fps / self.target_fps)))

    def gap(self, fps: float) -> int:
        return self.k if self.k is not None else max(1, int(round(0.1 * fps / self.step(fps))))

    def names(self) -> list[str]:
        moving = [f"{r}_{c}" for r in self.regions[1:] for c in ("dx", "dy", "mag")]
        return moving + [f"{self.regions[0]}_dx", f"{self.regions[0]}_dy"]

    def to_dict(self) -> dict:
        values = asdict(self)
        values["regions"] = list(self.regions)
        return values

    def align_settings(self) -> AlignSettings:
        return AlignSettings(size=self.size, margin=self.margin, mode="median", detector=self.detector)


def inter_ocular(points: np.ndarray) -> float:
    """The template's eye distance, by libm's hypot: a port computes the same value to the last bit."""
    return math.hypot(*(points[1] - points[0]))


def region_boxes(settings: FeatureSettings) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of each region in the aligned face, clipped to it."""
    points = template(settings.size, settings.margin)
    iod = inter_ocular(points)
    boxes = []
    for name in settings.regions:
        weights, (dx, dy), (hw, hh) = REGIONS[name]
        centre = (np.asarray(weights)[:, None] * points).sum(0) / sum(weights) + np.array([dx, dy]) * iod
        x0, y0 = np.floor(centre - np.array([hw, hh]) * iod).astype(int)
        x1, y1 = np.ceil(centre + np.array([hw, hh]) * iod).astype(int)
        box = (max(0, x0), max(0, y0), min(settings.size, x1), min(settings.size, y1))
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            raise ValueError(f"region {name} falls outside the {settings.size}-pixel face")
        boxes.append(box)
    return boxes


class FlowFeatures:
    """Turns aligned grey faces into per-frame region motion (see the module doc)."""

    def __init__(self, settings: FeatureSettings):
        self.settings = settings
        self.boxes = region_boxes(settings)
        points = template(settings.size, settings.margin)
        self.iod = inter_ocular(points)
        self._dis = None
        # every region's pixels as one flat index, and which region each belongs to: pooling is then a few
        # vectorised operations per frame instead of a loop over regions
        grid = np.arange(settings.size * settings.size).reshape(settings.size, settings.size)
        self._pixels = [grid[y0:y1, x0:x1].ravel() for x0, y0, x1, y1 in self.boxes]
        self._reference = self._pixels[0]
        self._moving = np.concatenate(self._pixels[1:])
        self._owner = np.concatenate([np.full(len(p), r) for r, p in enumerate(self._pixels[1:])])
        self._counts = np.array([len(p) for p in self._pixels[1:]], np.float64)

    def flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.settings.method == "dis":
            if self._dis is None:
                self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
            return self._dis.calc(a, b, None)
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)

    def pooled(self, flow: np.ndarray) -> np.ndarray:
        """[D] from one flow field [S, S, 2]."""
        flat = flow.reshape(-1, 2).astype(np.float64)
        reference = flat[self._reference].mean(0)
        relative = flat[self._moving] - reference
        regions = len(self._counts)
        dx = np.bincount(self._owner, relative[:, 0], regions) / self._counts
        dy = np.bincount(self._owner, relative[:, 1], regions) / self._counts
        # sqrt of the sum of squares, not np.hypot (NumPy's own): a port reproduces this to the last bit
        length = np.sqrt(relative[:, 0] * relative[:, 0] + relative[:, 1] * relative[:, 1])
        magnitude = np.bincount(self._owner, length, regions) / self._counts
        out = np.concatenate([np.stack([dx, dy, magnitude], 1).ravel(), reference])
        return (out / self.iod).astype(np.float32)


def grey_faces(frames: np.ndarray, aligner: FaceAligner, alignment) -> np.ndarray:
    faces = aligner.apply(frames, alignment)
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in faces])


@dataclass
class VideoFeatures:
    """Features of one video: `features` [T, D] at the subsampled frames whose file numbers are `numbers` [T]."""

    features: np.ndarray
    numbers: np.ndarray
    fps: float  # of the features (after subsampling)
    step: int
    k: int
    alignment_source: str = ""


def extract(read: Callable[[Sequence[int]], np.ndarray], numbers: np.ndarray, fps: float, settings: FeatureSettings,
            extra: dict | None = None, where: object = "video", progress: Callable[[int, int], None] | None = None,
            chunk: int = 256) -> VideoFeatures:
    """Features of a video given `read(positions)` -> RGB frames and the frame numbers of its positions."""
    step, k = settings.step(fps), settings.gap(fps)
    positions = np.arange(0, len(numbers), step)
    aligner = FaceAligner(settings.align_settings())
    alignment = aligner.choose(extra or {}, len(numbers), read, where)
    maker = FlowFeatures(settings)
    features = np.zeros((len(positions), settings.dim), np.float32)
    history: list[np.ndarray] = []  # the last k faces before the chunk
    for start in range(0, len(positions), chunk):
        faces = grey_faces(read(positions[start:start + chunk]), aligner, alignment)
        both = history + list(faces)
        for t in range(len(faces)):
            g = len(history) + t
            absolute = start + t
            if absolute > 0:
                features[absolute] = maker.pooled(maker.flow(both[max(g - k, 0)], both[g]))
        history = both[-k:]
        if progress is not None:
            progress(min(start + chunk, len(positions)), len(positions))
    return VideoFeatures(features, np.asarray(numbers)[positions], fps / step, step, k, alignment.source)


@dataclass
class FeatureCache:
    """One .npz per video and settings under `folder` (None: no cache)."""

    folder: Path | None
    settings: FeatureSettings
    log_every: float = 10.0
    _last: float = field(default=0.0, repr=False)

    def key(self, name: str, count: int, fps: float) -> str:
        """`name`: the video's resolved path, or a generated video's identity."""
        text = json.dumps({"video": str(name), "frames": int(count), "fps": float(fps),
                           "settings": self.settings.to_dict()}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:20]

    def load(self, key: str) -> VideoFeatures | None:
        if self.folder is None or not (self.folder / f"{key}.npz").is_file():
            return None
        with np.load(self.folder / f"{key}.npz") as data:
            return VideoFeatures(data["features"], data["numbers"], float(data["fps"]), int(data["step"]),
                                 int(data["k"]), str(data["alignment_source"]))

    def save(self, key: str, value: VideoFeatures) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{key}.{os.getpid()}.npz"
        np.savez(temporary, features=value.features, numbers=value.numbers, fps=value.fps, step=value.step,
                 k=value.k, alignment_source=value.alignment_source)
        os.replace(temporary, self.folder / f"{key}.npz")

    def video(self, sample, label: str = "") -> VideoFeatures:
        """Features of a frame-folder or video sample, from the cache or computed (progress on stderr)."""
        from common.data.readers import open_sample

        with open_sample(sample) as source:
            fps = sample.fps or source.fps or self.settings.target_fps
            key = self.key(str(Path(sample.path).resolve()), len(source), fps)
            found = self.load(key)
            if found is not None:
                return found
            value = extract(source.read, source.numbers, fps, self.settings, dict(sample.extra), sample.path,
                            progress=lambda done, total: self.report_progress(label or sample.path, done, total))
        self.save(key, value)
        return value

    def report_progress(self, label, done: int, total: int) -> None:
        if time.monotonic() - self._last > self.log_every or done == total:
            self._last = time.monotonic()
            print(f"spotting features: {label}: {done}/{total} frames", file=sys.stderr, flush=True)
