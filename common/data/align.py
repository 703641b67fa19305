"""Face alignment: a similarity transform from five landmarks to a canonical template.

Points are always (left eye, right eye, nose tip, left mouth corner, right mouth corner) in image pixels, with
"left" meaning the image's left. A clip is warped with ONE transform (from its first frame or the median over
frames): per-frame alignment adds a jitter of a pixel or two, which is the size of a micro-expression.

Where points come from, in order: the sample's own landmarks (AffectNet, DISFA), its face box, a detector.
The default detector is OpenCV's bundled Haar cascade, which finds a box only; its five points are typical
positions inside the box (BOX_FRACTIONS), so it aligns scale and position but not roll. A better detector
plugs in by name: `load_detector("mypackage.faces:make_detector")`, where make_detector() returns a
callable rgb uint8 [H, W, 3] -> float [5, 2] or None.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np

# The 5-point template of the ArcFace 112x112 crop (the de-facto standard for face crops).
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# The five points as fractions of a detector's face box (x right, y down). A Haar or dataset box starts
# lower on the forehead than the ArcFace crop, so placing TEMPLATE_112 in it would put the eyes too low.
BOX_FRACTIONS = np.array([[0.33, 0.41], [0.67, 0.41], [0.50, 0.59], [0.37, 0.76], [0.63, 0.76]])
# iBUG 68-point indices: eye contours, nose tip, mouth corners.
_IBUG_LEFT_EYE, _IBUG_RIGHT_EYE, _IBUG_NOSE, _IBUG_MOUTH = range(36, 42), range(42, 48), 30, (48, 54)

Detector = Callable[[np.ndarray], "np.ndarray | None"]


@dataclass(frozen=True)
class AlignSettings:
    """size: output side in pixels. margin: context added around the template crop, as a fraction of it on
    each side (0 = the ArcFace crop, which cuts the forehead that AU1/AU2 need). mode: 'first' or 'median'
    frame's points for a clip. detector: 'cascade', 'none' (the frame is already a face crop: resize only)
    or 'module:factory'. probe_frames: frames searched for a face in a clip. fallback: what to do where no
    face is found: 'center' (treat the central square as the face box) or 'error'."""

    size: int = 224
    margin: float = 0.15
    mode: str = "first"
    detector: str = "cascade"
    probe_frames: int = 8
    fallback: str = "center"

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"align size must be at least 8 pixels, got {self.size}")
        if not 0 <= self.margin < 2:
            raise ValueError(f"align margin must be in [0, 2), got {self.margin}")
        if self.mode not in ("first", "median"):
            raise ValueError(f"align mode must be 'first' or 'median', got {self.mode!r}")
        if self.fallback not in ("center", "error"):
            raise ValueError(f"align fallback must be 'center' or 'error', got {self.fallback!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class NoFaceError(RuntimeError):
    pass


def template(size: int, margin: float = 0.0) -> np.ndarray:
    """Template points for a `size` crop; the margin shrinks the face about the crop centre."""
    unit = TEMPLATE_112 / 112.0 - 0.5
    return (unit / (1.0 + 2.0 * margin) + 0.5) * size


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, uniform scale, translation; no reflection) taking src to dst.

    x' = a x - b y + tx, y' = b x + a y + ty is linear in (a, b, tx, ty), so one lstsq solves it exactly.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(src) != len(dst) or len(src) < 2:
        raise ValueError(f"similarity needs two matching point sets of at least 2 points, got {len(src)}/{len(dst)}")
    x, y = src[:, 0], src[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    rows = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])
    target = np.concatenate([dst[:, 0], dst[:, 1]])
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, target, rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]], dtype=np.float64)


def alignment_matrix(points: np.ndarray, size: int, margin: float = 0.0) -> np.ndarray:
    return similarity_matrix(five_points(points), template(size, margin))


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Black outside the source: a replicated border smears edge pixels into what a model reads as face."""
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def warp_frames(frames: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """One transform for every frame of a clip."""
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = warp(frame, matrix, size)
    return out


def align_face(image: np.ndarray, points: np.ndarray, size: int = 224, margin: float = 0.15) -> np.ndarray:
    return warp(image, alignment_matrix(points, size, margin), size)


def align_clip(frames: np.ndarray, points: np.ndarray, size: int = 224, margin: float = 0.15) -> np.ndarray:
    return warp_frames(frames, alignment_matrix(points, size, margin), size)


def resize_matrix(height: int, width: int, size: int) -> np.ndarray:
    """Centre square of the frame scaled to `size`: the transform for frames that are already face crops."""
    side = min(height, width)
    scale = size / side
    return np.array([[scale, 0, -(width - side) / 2 * scale], [0, scale, -(height - side) / 2 * scale]])


# ---------------------------------------------------------------- where the points come from


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """Five points from 5 or iBUG-68 landmarks (AffectNet's facial_landmarks, DISFA's .mat files)."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if len(points) == 5:
        return points
    if len(points) == 68:
        return np.stack([
            points[list(_IBUG_LEFT_EYE)].mean(0),
            points[list(_IBUG_RIGHT_EYE)].mean(0),
            points[_IBUG_NOSE],
            points[_IBUG_MOUTH[0]],
            points[_IBUG_MOUTH[1]],
        ])
    raise ValueError(f"landmarks must be 5 or 68 points, got {len(points)}")


def box_points(box: Sequence[float]) -> np.ndarray:
    """Typical five points inside a face box (x, y, w, h), taken square about the box centre."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h)
    corner = np.array([x + (w - side) / 2, y + (h - side) / 2])
    return BOX_FRACTIONS * side + corner


def centre_points(height: int, width: int) -> np.ndarray:
    side = min(height, width)
    return box_points(((width - side) / 2, (height - side) / 2, side, side))


def clip_points(points: Sequence[np.ndarray], mode: str = "first") -> np.ndarray:
    """One point set for a clip: the first found, or the per-coordinate median (robust to a bad frame)."""
    stack = np.stack([five_points(p) for p in points])
    return stack[0] if mode == "first" else np.median(stack, axis=0)


class CascadeDetector:
    """OpenCV's Haar face cascade (shipped inside opencv-python < 5); the largest face wins."""

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", min_fraction: float = 0.2):
        path = cv2.data.haarcascades + cascade
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"{path}: cannot load the face cascade (opencv-python-headless<5 ships it)")
        self.min_fraction = min_fraction

    def box(self, rgb: np.ndarray) -> tuple[int, int, int, int] | None:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        smallest = max(24, int(min(gray.shape) * self.min_fraction))
        faces = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
        if len(faces) == 0:
            return None
        return tuple(max(faces, key=lambda f: f[2] * f[3]))

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        box = self.box(rgb)
        return None if box is None else box_points(box)


DETECTORS: dict[str, Callable[[], Detector]] = {"cascade": CascadeDetector}


def load_detector(spec: str) -> Detector | None:
    """'none' -> None (resize only), a name from DETECTORS, or 'module:factory' for a user's detector."""
    if spec == "none":
        return None
    if spec in DETECTORS:
        return DETECTORS[spec]()
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"detector {spec!r}: expected 'none', one of {sorted(DETECTORS)} or 'module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"detector {spec!r} cannot be loaded: {error}") from None
    return factory()


# ---------------------------------------------------------------- one transform per sample


def probe_positions(n_frames: int, settings: AlignSettings) -> list[int]:
    """Frames searched for a face: from the start for 'first', spread over the clip for 'median'."""
    count = min(n_frames, max(1, settings.probe_frames))
    if settings.mode == "first":
        return list(range(count))
    return sorted(set(np.linspace(0, n_frames - 1, count).round().astype(int).tolist()))


def points_from_metadata(extra: Mapping, mode: str) -> np.ndarray | None:
    if extra.get("landmarks") is not None:
        landmarks = np.asarray(extra["landmarks"], dtype=np.float64)
        per_frame = landmarks.reshape(-1, landmarks.shape[-2], 2) if landmarks.ndim == 3 else [landmarks]
        return clip_points(per_frame, mode)
    if extra.get("face_box") is not None:
        return box_points(extra["face_box"])
    return None


def detect_points(frame_at: Callable[[int], np.ndarray], positions: Sequence[int],
                  detector: Detector, mode: str) -> np.ndarray | None:
    """Run the detector on the probe frames; 'first' stops at the first face found."""
    found = []
    for position in positions:
        points = detector(frame_at(position))
        if points is not None:
            found.append(points)
            if mode == "first":
                break
    return clip_points(found, mode) if found else None


@dataclass
class Alignment:
    """The transform chosen for one sample and where it came from (recorded in the cache index)."""

    matrix: np.ndarray
    points: np.ndarray | None
    source: str  # 'dataset' | 'detector' | 'center' | 'resize'


class FaceAligner:
    """Chooses one transform per sample and applies it; the detector is built lazily, once per process."""

    def __init__(self, settings: AlignSettings = AlignSettings()):
        self.settings = settings
        self._detector: Detector | None | bool = False

    @property
    def detector(self) -> Detector | None:
        if self._detector is False:
            self._detector = load_detector(self.settings.detector)
        return self._detector

    def choose(self, extra: Mapping, n_frames: int, read: Callable[[Sequence[int]], np.ndarray],
               where: object) -> Alignment:
        """`read(positions)` gives source frames of the span the transform is for (positions 0..n_frames-1)."""
        s = self.settings
        points = points_from_metadata(extra, s.mode)
        if points is not None:
            return Alignment(alignment_matrix(points, s.size, s.margin), points, "dataset")
        first = read([0])[0]
        height, width = first.shape[:2]
        if s.detector == "none":
            return Alignment(resize_matrix(height, width, s.size), None, "resize")
        frame_at = lambda p: first if p == 0 else read([p])[0]  # noqa: E731 -- frame 0 is decoded once
        points = detect_points(frame_at, probe_positions(n_frames, s), self.detector, s.mode)
        if points is not None:
            return Alignment(alignment_matrix(points, s.size, s.margin), points, "detector")
        if s.fallback == "error":
            raise NoFaceError(f"{where}: no face found in {len(probe_positions(n_frames, s))} probed frames")
        points = centre_points(height, width)
        return Alignment(alignment_matrix(points, s.size, s.margin), points, "center")

    def apply(self, frames: np.ndarray, alignment: Alignment) -> np.ndarray:
        return warp_frames(frames, alignment.matrix, self.settings.size)
