"""Face alignment: a similarity transform from five landmarks to a canonical template.

Points are always (left eye, right eye, nose tip, left mouth corner, right mouth corner) in image pixels, with
"left" meaning the image's left. A clip is warped with ONE transform (from its first frame or the median over
frames): per-frame alignment adds a jitter of a pixel or two, which is the size of a micro-expression.

Where points come from, in order: the sample's own landmarks (AffectNet, DISFA), its face box, a detector.
Detectors: `dlib` (HOG face detector + 68-point shape predictor from the optional `faces` extra; corrects
head roll), `cascade` (OpenCV's bundled Haar cascade: a box only, whose five points are typical positions
inside it, BOX_FRACTIONS, so it aligns scale and position but not roll), `auto` (dlib where installed, else the
cascade) or a plug-in by name: `load_detector("mypackage.faces:make_detector")`, where make_detector() returns
a callable rgb uint8 [H, W, 3] -> float [5, 2] or None.

Warping keeps image quality: area averaging where the face is shrunk, replicated edge pixels where the crop
leaves the frame, and a plain crop-and-resize where the transform is one.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path
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
LANDMARK_SCHEME = ("5 points in image pixels: left eye, right eye, nose tip, left mouth corner, right mouth corner "
                   "(left = the image's left); from iBUG-68 landmarks: means of points 36-41 and 42-47, point 30, "
                   "points 48 and 54 (0-based)")
RESIZE_RULE = ("one similarity transform per sample; area averaging where shrinking, bilinear where enlarging; "
               "replicated edge pixels outside the frame")

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
    detector: str = "auto"
    probe_frames: int = 8
    fallback: str = "center"

    def __post_init__(self):
        # recorded (in caches, model metadata) as the detector actually used, never as "auto"
        object.__setattr__(self, "detector", resolve_detector(self.detector))
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
    """The `size` x `size` crop that `matrix` (source pixels -> crop pixels) describes.

    A black border would darken the rows a crop shares with the frame edge (bilinear sampling mixes it in),
    so the border replicates edge pixels; a transform that shrinks is preceded by an area-averaging resize,
    since bilinear sampling alone aliases.
    """
    crop = axis_aligned_crop(matrix, image.shape[:2], size)
    if crop is not None:
        x, y, side = crop
        return resize_square(image[y: y + side, x: x + side], size)
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 0.95:
        image, matrix = preshrink(image, matrix, scale)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image.copy()
    shrink = image.shape[0] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def axis_aligned_crop(matrix: np.ndarray, shape: tuple[int, int], size: int) -> tuple[int, int, int] | None:
    """(x, y, side) when `matrix` maps a whole-pixel square inside the frame onto the output (as
    `resize_matrix` does), i.e. the warp is a crop and a resize; None otherwise."""
    (a, b, tx), (c, d, ty) = matrix
    if abs(b) > 1e-9 or abs(c) > 1e-9 or abs(a - d) > 1e-9 * abs(a) or a <= 0:
        return None
    # resize_matrix follows cv2.resize's pixel-centre convention: x_out = a * (x_in + 0.5) - 0.5 - a * x0
    x0, y0, side = (0.5 * a - 0.5 - tx) / a, (0.5 * a - 0.5 - ty) / a, size / a
    values = np.array([x0, y0, side])
    if np.abs(values - values.round()).max() > 1e-6:
        return None
    x0, y0, side = (int(round(v)) for v in values)
    height, width = shape
    inside = x0 >= 0 and y0 >= 0 and x0 + side <= width and y0 + side <= height
    return (x0, y0, side) if inside and side > 0 else None


def preshrink(image: np.ndarray, matrix: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Area-average the frame to about the output's scale, and the matrix that now maps it to the output."""
    height, width = image.shape[:2]
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    sx, sy = new_w / width, new_h / height
    # small pixel x' sees source pixel x = (x' + 0.5) / sx - 0.5
    to_source = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])
    return small, matrix @ to_source


def warp_frames(frames: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """One transform for every frame of a clip."""
    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = warp(frame, matrix, size)
    return out


def resize_matrix(height: int, width: int, size: int) -> np.ndarray:
    """Centre square of the frame scaled to `size` (cv2.resize's pixel centres): the transform for frames that
    are already face crops."""
    side = min(height, width)
    scale = size / side
    x0, y0 = (width - side) // 2, (height - side) // 2
    return np.array([[scale, 0, 0.5 * scale - 0.5 - x0 * scale], [0, scale, 0.5 * scale - 0.5 - y0 * scale]])


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


DLIB_MODELS_PACKAGE = "face_recognition_models"
DLIB_INSTALL = "pip install 'facex[faces]' (dlib-bin and face-recognition-models)"


def dlib_model_file(name: str) -> Path:
    """A model file inside the face-recognition-models wheel, found by path: importing that package needs
    pkg_resources, which current setuptools no longer ships."""
    spec = importlib.util.find_spec(DLIB_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(f"--detector dlib needs its model files: {DLIB_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise DetectorUnavailable(f"{path}: dlib model file missing; reinstall face-recognition-models")
    return path


class DetectorUnavailable(RuntimeError):
    pass


class DlibDetector:
    """dlib's HOG face detector and its 68-point shape predictor; the largest face wins. The eye centres of
    the 68 points let alignment correct head roll."""

    def __init__(self):
        try:
            import dlib
        except ImportError:
            raise DetectorUnavailable(f"--detector dlib needs dlib: {DLIB_INSTALL}") from None
        self._faces = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(dlib_model_file("shape_predictor_68_face_landmarks.dat")))

    def landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        """iBUG-68 points [68, 2] of the largest face, or None."""
        rgb = np.ascontiguousarray(rgb)
        upsample = 1 if min(rgb.shape[:2]) < 400 else 0  # small frames: faces under ~80 px need one upsampling
        faces = self._faces(rgb, upsample)
        if len(faces) == 0:
            return None
        face = max(faces, key=lambda r: r.width() * r.height())
        shape = self._shape(rgb, face)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        points = self.landmarks(rgb)
        return None if points is None else five_points(points)


def dlib_available() -> bool:
    return importlib.util.find_spec("dlib") is not None and importlib.util.find_spec(DLIB_MODELS_PACKAGE) is not None


def resolve_detector(spec: str) -> str:
    """'auto' -> 'dlib' where dlib and its model files are installed, else 'cascade'; other names unchanged."""
    if spec == "auto":
        return "dlib" if dlib_available() else "cascade"
    return spec


DETECTORS: dict[str, Callable[[], Detector]] = {"cascade": CascadeDetector, "dlib": DlibDetector}
DETECTOR_NAMES = ("auto", "none", *DETECTORS)


def load_detector(spec: str) -> Detector | None:
    """'none' -> None (resize only), 'auto', a name from DETECTORS, or 'module:factory' for a user's detector."""
    spec = resolve_detector(spec)
    if spec == "none":
        return None
    if spec in DETECTORS:
        return DETECTORS[spec]()
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"detector {spec!r}: expected one of {list(DETECTOR_NAMES)} or 'module:factory'")
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


def preprocessing_record(settings: AlignSettings) -> dict:
    """How a model input is made from a frame, for a consumer that cannot read this repository (model metadata)."""
    detector = settings.detector
    if detector == "none":
        detector = ("none (inputs are the dataset's face crops, centre square resized; for camera frames detect "
                    "the face and align it with align_template)")
    return {"face_detector": detector, "landmark_scheme": LANDMARK_SCHEME,
            "align_template": np.round(template(settings.size, settings.margin), 3).tolist(),
            "align_margin": settings.margin, "resize_interpolation": RESIZE_RULE}
