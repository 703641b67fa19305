"""Frame -> face -> every model in a folder: the per-frame pipeline of the command line and of the golden vectors.

For each frame: one face detection (five points, common.data.align's detectors), then for each model the crop its
metadata describes (the 5-point similarity onto `align_template` for its size and `align_margin`, area averaging
where shrinking, bilinear where enlarging, replicated edges), as float RGB in [0, 1], NCHW:

    emotion    image [1, 3, S, S] -> probs
    au         image [1, 3, S, S] -> au_prob, au_intensity -> OpenFace columns
    microexp   faces go through a ClipBuffer; every completed clip [1, 16, 3, S, S] -> probs
    spotting   grey face of the feature size -> StreamingSpotter -> intervals; micro intervals, when a
               micro-expression model is present, are classified (SpotThenRecognise)

A frame where no face is found is reported as such (every model's columns empty) and the clip and spotting streams
skip it (the frame numbers keep their gaps).

The clip models (micro-expression, spotting) were trained on faces warped with ONE transform per clip or video, so
that the motion they see is the face's, not the detector's jitter; here too their points are held (`SteadyPoints`)
and re-taken only when the face has moved by more than `steady_tolerance` of the eye distance.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from common.data.align import alignment_matrix, load_detector, resize_matrix, warp
from runtime.check import UnreadableModel, ContractBroken
from runtime.decode import au_names, au_threshold, class_names, openface_columns
from runtime.model import Model
from runtime.stream import ClipBuffer, SpotThenRecognise, StreamingSpotter, feature_settings

TASK_ORDER = ("emotion", "au", "microexp", "spotting")


def find_models(folder: Path | str, watch: bool = False, providers=None, threads: int | None = None,
                keep_labels: bool = False, strict: bool = True, refused: list | None = None) -> dict[str, Model]:
    """{task: Model} for the .onnx files of a folder (one per task; a second of the same task is an error).

    A file the contract's check refuses stops everything with `strict`; without, it is left out and (path, reason)
    is appended to `refused`, and only a folder where nothing can be served is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: models folder not found")
    models: dict[str, Model] = {}
    left_out = [] if refused is None else refused
    for path in sorted(folder.glob("*.onnx")):
        try:
            model = Model(path, watch=watch, providers=providers, threads=threads, keep_labels=keep_labels)
        except (UnreadableModel, ContractBroken) as error:
            if strict:
                raise ValueError(f"{path}: cannot serve it: {error}") from None
            left_out.append((path, str(error)))
            continue
        if model.task in models:
            raise ValueError(f"{folder}: two {model.task} models ({models[model.task].path.name}, {path.name})")
        models[model.task] = model
    if not models and left_out:
        raise ValueError(f"{folder}: no model can be served (" + "; ".join(r for _, r in left_out) + ")")
    if not models:
        raise FileNotFoundError(f"{folder}: no .onnx models")
    return {task: models[task] for task in TASK_ORDER if task in models}


def input_side(model: Model) -> int:
    if model.task == "spotting":
        return feature_settings(model.metadata).size
    return int(json.loads(model.metadata["input_size"])[-1])


def margin_of(model: Model) -> float:
    if model.task == "spotting":
        return feature_settings(model.metadata).margin
    return float(model.metadata.get("align_margin") or 0.0)


def to_input(face: np.ndarray) -> np.ndarray:
    """uint8 RGB [S, S, 3] -> float32 [3, S, S] in [0, 1]."""
    return np.ascontiguousarray(face.transpose(2, 0, 1), dtype=np.float32) / 255


class FaceFinder:
    """Five points per frame from a detector ('auto', 'dlib', 'cascade', or 'none': the frame is the face)."""

    def __init__(self, detector: str = "auto"):
        self.spec = detector
        self.detector = load_detector(detector)

    def points(self, rgb: np.ndarray) -> np.ndarray | None:
        if self.detector is None:
            return None
        return self.detector(rgb)

    def crop(self, rgb: np.ndarray, points: np.ndarray | None, size: int, margin: float) -> np.ndarray:
        if points is None:  # detector 'none': the frame is already the face
            return warp(rgb, resize_matrix(rgb.shape[0], rgb.shape[1], size), size)
        return warp(rgb, alignment_matrix(points, size, margin), size)


class SteadyPoints:
    """The landmarks of the last reference frame while the detected face stays within `tolerance` x eye distance."""

    def __init__(self, tolerance: float = 0.15):
        self.tolerance, self.points = tolerance, None

    def __call__(self, points: np.ndarray | None) -> np.ndarray | None:
        if points is None:
            return None
        points = np.asarray(points, np.float64)
        if self.points is not None:
            eyes = float(np.linalg.norm(self.points[1] - self.points[0])) or 1.0
            if np.abs(points - self.points).max() <= self.tolerance * eyes:
                return self.points
        self.points = points
        return points


@dataclass
class FrameResult:
    number: int
    time: float
    face: bool
    box: tuple[float, float, float, float] | None = None
    crops: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    columns: dict[str, object] = field(default_factory=dict)
    intervals: list = field(default_factory=list)


class Pipeline:
    def __init__(self, models: dict[str, Model], fps: float, detector: str = "auto", clip_stride: int = 8,
                 subject: str = "", video: str = "", steady_tolerance: float = 0.15):
        self.models, self.fps = models, fps
        self.faces = FaceFinder(detector)
        self.steady = SteadyPoints(steady_tolerance)
        self.subject, self.video = subject, video
        self.clips = ClipBuffer.for_model(models["microexp"].metadata, fps, clip_stride) if "microexp" in models else None
        self.spotter = (StreamingSpotter(lambda x: models["spotting"].predict(x)["scores"], models["spotting"].metadata, fps)
                        if "spotting" in models else None)
        self.recogniser = None
        if self.spotter is not None and "microexp" in models:
            micro = models["microexp"]
            self.recogniser = SpotThenRecognise(lambda clip: micro.predict(clip)["probs"], class_names(micro.metadata),
                                                int(micro.metadata.get("clip_length") or 16),
                                                history=self.spotter.margin * self.spotter.step + 10 * int(fps))
        self.recognised: list = []

    def columns(self) -> list[str]:
        names = ["frame", "time", "face", "face_x", "face_y", "face_w", "face_h"]
        if "emotion" in self.models:
            classes = class_names(self.models["emotion"].metadata)
            names += ["emotion"] + [f"p_{c}" for c in classes]
        if "au" in self.models:
            aus = au_names(self.models["au"].metadata)
            names += [f"{a}_r" for a in aus] + [f"{a}_c" for a in aus] + [f"{a}_p" for a in aus]
        if "microexp" in self.models:
            names += ["micro_class"] + [f"micro_p_{c}" for c in class_names(self.models["microexp"].metadata)]
        if "spotting" in self.models:
            names += ["spotted"]
        return names

    def frame(self, rgb: np.ndarray, number: int, keep: bool = False) -> FrameResult:
        result = FrameResult(number, number / self.fps, False)
        points = self.faces.points(rgb)
        if points is None and self.faces.detector is not None:
            return result  # no face: reported, streams skip the frame
        result.face = True
        if points is not None:
            x0, y0 = points.min(0)
            x1, y1 = points.max(0)
            w, h = x1 - x0, y1 - y0
            result.box = (float(x0 - 0.6 * w), float(y0 - 0.9 * h), float(2.2 * w), float(2.4 * h))
        else:
            result.box = (0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0]))
        steady = self.steady(points)
        crops = {task: self.faces.crop(rgb, steady if task in ("microexp", "spotting") else points, input_side(m),
                                       margin_of(m)) for task, m in self.models.items()}
        if keep:
            result.crops = crops
        for task in ("emotion", "au"):
            if task in self.models:
                x = to_input(crops[task])[None]
                out = self.models[task].predict(x)
                result.outputs[task] = out
                if keep:
                    result.inputs[task] = x
                self._decode(task, out, result)
        if self.clips is not None:
            clip = self.clips.push(crops["microexp"], number)
            if clip is not None:
                x = np.stack([to_input(f) for f in clip])[None]
                out = self.models["microexp"].predict(x)
                result.outputs["microexp"] = out
                if keep:
                    result.inputs["microexp"] = x
                self._decode("microexp", out, result)
        if self.recogniser is not None:
            self.recogniser.push(crops["microexp"], number)
        if self.spotter is not None:
            grey = cv2.cvtColor(crops["spotting"], cv2.COLOR_RGB2GRAY)
            result.intervals = self.spotter.push(grey, number)
            self._recognise(result.intervals)
        return result

    def finish(self) -> list:
        """End of the stream: the last clip and the last intervals."""
        tail = []
        if self.spotter is not None:
            tail = self.spotter.flush()
            self._recognise(tail)
        return tail

    def _recognise(self, intervals: Sequence) -> None:
        if self.recogniser is None:
            return
        for interval in intervals:
            if interval.type == "micro":
                found = self.recogniser.recognise(interval)
                if found is not None:
                    self.recognised.append(found)

    def _decode(self, task: str, out: dict, result: FrameResult) -> None:
        if task == "emotion":
            classes = class_names(self.models[task].metadata)
            probs = out["probs"][0]
            result.columns["emotion"] = classes[int(probs.argmax())]
            result.columns.update({f"p_{c}": float(p) for c, p in zip(classes, probs)})
        elif task == "au":
            metadata = self.models[task].metadata
            columns = openface_columns(out["au_prob"], out["au_intensity"], au_names(metadata), au_threshold(metadata))
            result.columns.update({k: v[0].item() for k, v in columns.items()})
        elif task == "microexp":
            classes = class_names(self.models[task].metadata)
            probs = out["probs"][0]
            result.columns["micro_class"] = classes[int(probs.argmax())]
            result.columns.update({f"micro_p_{c}": float(p) for c, p in zip(classes, probs)})

    def row(self, result: FrameResult) -> dict:
        row = {"frame": result.number, "time": f"{result.time:.3f}", "face": int(result.face)}
        if result.box is not None:
            row.update(zip(("face_x", "face_y", "face_w", "face_h"), (f"{v:.1f}" for v in result.box)))
        for key, value in result.columns.items():
            row[key] = f"{value:.6f}" if isinstance(value, float) else value
        if result.intervals:
            row["spotted"] = ";".join(f"{i.type}:{i.onset}-{i.offset}" for i in result.intervals)
        return row
