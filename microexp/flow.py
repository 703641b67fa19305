"""Optical-flow features over seven facial regions: the input of the toolkit's ROI-Transformer baseline.

For a clip of T aligned frames, the flow from the first frame (the onset) to every frame is computed with
OpenCV's DIS or Farneback method, and each region contributes its mean (dx, dy) in percent of the crop side:
[T, 14] per clip, frame 0 being zeros. The regions are placed by the alignment template, so they sit on the same
part of every aligned face: left and right brow, glabella, left and right cheek, left and right mouth corner.

Flow is slow next to a network on features this small, so `FlowFeatureCache` computes each clip's features
once and keeps them as .npy files named by the sample and the settings that made them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np

from common.data.align import template

FLOW_METHODS = ("dis", "farneback")
REGIONS = ("left_brow", "right_brow", "glabella", "left_cheek", "right_cheek", "left_mouth_corner",
           "right_mouth_corner")
FEATURES = 2 * len(REGIONS)


def region_boxes(size: int, margin: float) -> np.ndarray:
    """[7, 4] boxes (x0, y0, x1, y1) in crop pixels, placed from the template's eyes, nose and mouth corners."""
    left_eye, right_eye, nose, left_mouth, right_mouth = template(size, margin)
    e = right_eye[0] - left_eye[0]  # eye distance: every region scales with the face
    centres_halves = [
        (left_eye + (0, -0.45 * e), (0.35 * e, 0.18 * e)),
        (right_eye + (0, -0.45 * e), (0.35 * e, 0.18 * e)),
        ((left_eye + right_eye) / 2 + (0, -0.3 * e), (0.18 * e, 0.2 * e)),
        ((left_eye + nose) / 2 + (-0.25 * e, 0.15 * e), (0.25 * e, 0.2 * e)),
        ((right_eye + nose) / 2 + (0.25 * e, 0.15 * e), (0.25 * e, 0.2 * e)),
        (left_mouth, (0.22 * e, 0.2 * e)),
        (right_mouth, (0.22 * e, 0.2 * e)),
    ]
    boxes = [(c[0] - h[0], c[1] - h[1], c[0] + h[0], c[1] + h[1]) for c, h in centres_halves]
    return np.clip(np.round(boxes), 0, size).astype(np.int64)


def flow_between(first: np.ndarray, second: np.ndarray, method: str) -> np.ndarray:
    if method == "dis":
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(first, second, None)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(first, second, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    raise ValueError(f"flow method must be one of {FLOW_METHODS}, got {method!r}")


def roi_flow_features(frames: np.ndarray, method: str = "dis", margin: float = 0.15) -> np.ndarray:
    """uint8 [T, S, S, 3] aligned frames -> float32 [T, 14]: per region, mean flow from frame 0 in % of S."""
    size = frames.shape[1]
    boxes = region_boxes(size, margin)
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    features = np.zeros((len(frames), FEATURES), np.float32)
    for t in range(1, len(frames)):
        flow = flow_between(gray[0], gray[t], method)
        for r, (x0, y0, x1, y1) in enumerate(boxes):
            features[t, 2 * r: 2 * r + 2] = flow[y0:y1, x0:x1].reshape(-1, 2).mean(0) * (100 / size)
    return features


class FlowFeatureCache:
    """One .npy per clip in `folder`, named by a hash of the sample key and the settings that made it."""

    def __init__(self, folder: Path | str, settings: dict):
        self.folder = Path(folder)
        self.settings = json.dumps(settings, sort_keys=True)

    def path(self, key: str) -> Path:
        digest = hashlib.sha1(f"{key}|{self.settings}".encode()).hexdigest()[:20]
        return self.folder / f"{digest}.npy"

    def get(self, key: str, compute) -> np.ndarray:
        path = self.path(key)
        if path.is_file():
            return np.load(path)
        features = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{np.random.randint(1 << 30)}.tmp.npy")  # loader workers may race
        np.save(temporary, features)
        temporary.replace(path)
        return features
