"""`python -m runtime.vectors --models DIR --video V --out DIR [--frames 48] [--detector auto]`: golden test vectors
for the application's port, stage by stage; `python -m runtime.vectors --check DIR` re-runs them.

For each model, from the first --frames frames of the video:
    <task>/model.json      the model's inputs and outputs (names, shapes, element types) and metadata strings, for a
                           port that checks the contract and reads its settings without loading the ONNX file
    <task>/frame.npy       the raw RGB frame uint8 [H, W, 3] (the first frame with a face)
    <task>/points.npy      the five landmarks found in it (float64 [5, 2]; absent with --detector none)
    <task>/matrix.npy      the 2x3 similarity transform, source pixels -> crop pixels
    <task>/crop.npy        the aligned crop uint8 [S, S, 3]
    <task>/input.npy       the exact input tensor float32 (NCHW, or NTCHW for a clip, [1, T, D] for spotting)
    <task>/<output>.npy    each expected output
    au/columns.json        the decoded OpenFace columns of the AU outputs
    microexp/pushed_numbers.npy the frame numbers pushed into the clip buffer until it gave the clip
    microexp/clip_numbers.npy   the frame numbers the clip buffer chose for the clip in input.npy, and the buffer's
                           settings in the index
    microexp/clip_crops.npy     the aligned faces of those frames uint8 [T, S, S, 3]
    spotting/faces.npy     the aligned grey faces of the frame sequence uint8 [T, S, S], numbers.npy their frame numbers
    spotting/intervals.json     the intervals spotted on the frame sequence (frame numbers, type, apex, score)
index.json lists every file with its shape, dtype and the tolerance a port must meet (absolute; uint8 crops within
2 grey levels, as OpenCV releases may round a bilinear sample differently), and the OpenCV release that wrote them:
spotting features from DIS flow carry a second, wider tolerance for a port on another OpenCV release.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from runtime.decode import au_names, au_threshold, openface_columns
from runtime.pipeline import FaceFinder, find_models, input_side, margin_of, to_input
from runtime.stream import ClipBuffer, StreamingSpotter

TOLERANCE = {"uint8": 2.0, "input": 1e-6, "output": 1e-4, "points": 1e-3, "matrix": 1e-6}
# Spotting features from OpenCV's DIS flow: (the same OpenCV release, another release). DIS changed between
# releases (4.6 against 4.14: up to 0.07 px of flow, 3e-3 in features); Farneback did not.
DIS_TOLERANCE = (1e-4, 5e-3)


def read_frames(video: Path, count: int) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise FileNotFoundError(f"{video}: cannot open the video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while len(frames) < count:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise ValueError(f"{video}: no frames")
    return frames, float(fps)


class Writer:
    def __init__(self, out: Path):
        self.out, self.entries = out, []

    def save(self, task: str, name: str, value: np.ndarray, tolerance: float, note: str = "", **more) -> None:
        path = self.out / task / f"{name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, value)
        self.entries.append({"task": task, "stage": name, "file": str(path.relative_to(self.out)),
                             "shape": list(value.shape), "dtype": str(value.dtype), "tolerance": tolerance,
                             "note": note, **more})

    def json(self, task: str, name: str, value, note: str = "") -> None:
        path = self.out / task / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2))
        self.entries.append({"task": task, "stage": name, "file": str(path.relative_to(self.out)), "note": note})


def write_vectors(models_dir: Path, video: Path, out: Path, frames: int = 48, detector: str = "auto") -> Path:
    models = find_models(models_dir)
    images, fps = read_frames(video, frames)
    finder = FaceFinder(detector)
    found = [(n, image, finder.points(image)) for n, image in enumerate(images)]
    usable = [(n, image, points) for n, image, points in found if points is not None or finder.detector is None]
    if not usable:
        raise ValueError(f"{video}: no face in the first {len(images)} frames")
    writer = Writer(Path(out))
    number, image, points = usable[0]
    for task, model in models.items():
        size, margin = input_side(model), margin_of(model)
        writer.json(task, "model", {"path": model.path.name, "inputs": model.info.inputs,
                                    "outputs": model.info.outputs, "metadata": model.metadata})
        writer.save(task, "frame", image, 0.0, f"frame {number} of the video, RGB")
        if points is not None:
            from common.data.align import alignment_matrix

            writer.save(task, "points", np.asarray(points, np.float64), TOLERANCE["points"], "left eye, right eye, "
                        "nose tip, left mouth corner, right mouth corner")
            writer.save(task, "matrix", alignment_matrix(points, size, margin), TOLERANCE["matrix"])
        crop = finder.crop(image, points, size, margin)
        writer.save(task, "crop", crop, TOLERANCE["uint8"], f"{size} px aligned face")
        if task in ("emotion", "au"):
            x = to_input(crop)[None]
            writer.save(task, "input", x, TOLERANCE["input"], "float32 NCHW RGB in [0, 1]")
            outputs = model.predict(x)
            for name, value in outputs.items():
                writer.save(task, name, value, TOLERANCE["output"])
            if task == "au":
                columns = openface_columns(outputs["au_prob"], outputs["au_intensity"], au_names(model.metadata),
                                           au_threshold(model.metadata))
                writer.json(task, "columns", {k: v[0].item() for k, v in columns.items()}, "OpenFace order: _r, _c, _p")
        elif task == "microexp":
            buffer = ClipBuffer.for_model(model.metadata, fps)
            clip, chosen, pushed = None, None, []
            for n, image_n, points_n in usable:
                pushed.append(n)
                emitted = buffer.push(finder.crop(image_n, points_n, size, margin), n)
                if emitted is not None:
                    clip, chosen = emitted, buffer.sample_numbers()  # the buffer is unchanged since the clip
                    break
            if clip is None:
                clip, chosen = buffer.flush(), buffer.sample_numbers()
            x = np.stack([to_input(f) for f in clip])[None]
            settings = {"length": buffer.length, "span": buffer.span, "camera_fps": fps, "stride": buffer.stride}
            writer.save(task, "pushed_numbers", np.asarray(pushed, np.int64), 0.0, "frames pushed, in order")
            writer.save(task, "clip_numbers", np.asarray(chosen, np.int64), 0.0, json.dumps(settings))
            writer.save(task, "clip_crops", np.stack(clip), TOLERANCE["uint8"], "the clip's aligned faces")
            writer.save(task, "input", x, TOLERANCE["input"], "float32 NTCHW RGB in [0, 1]")
            for name, value in model.predict(x).items():
                writer.save(task, name, value, TOLERANCE["output"])
        elif task == "spotting":
            spotter = StreamingSpotter(lambda f: model.predict(f)["scores"], model.metadata, fps)
            intervals, faces, numbers = [], [], []
            for n, image_n, points_n in usable:
                faces.append(cv2.cvtColor(finder.crop(image_n, points_n, size, margin), cv2.COLOR_RGB2GRAY))
                numbers.append(n)
                intervals += spotter.push(faces[-1], n)
            intervals += spotter.flush()
            writer.save(task, "faces", np.stack(faces), TOLERANCE["uint8"], "aligned grey faces pushed, in order")
            writer.save(task, "numbers", np.asarray(numbers, np.int64), 0.0, "their frame numbers")
            x = spotter.features[None]
            dis = spotter.features_settings.method == "dis"
            writer.save(task, "input", x, DIS_TOLERANCE[0], "features [1, T, D] of the frame sequence" +
                        ("; DIS flow differs between OpenCV releases, hence the wider tolerance for another release"
                         if dis else ""), tolerance_other_opencv=DIS_TOLERANCE[1] if dis else DIS_TOLERANCE[0])
            writer.save(task, "scores", model.predict(x)["scores"], TOLERANCE["output"])
            writer.json(task, "intervals", [vars(i) for i in intervals], "spotting.postprocess on the scores")
    index = {"video": str(video), "fps": fps, "first_face_frame": number, "detector": finder.spec,
             "opencv": cv2.__version__,
             "models": {task: model.path.name for task, model in models.items()}, "entries": writer.entries}
    (Path(out) / "index.json").write_text(json.dumps(index, indent=2))
    return Path(out) / "index.json"


def check_vectors(folder: Path, models_dir: Path | None = None) -> list[str]:
    """Run each model on its stored input and compare with the stored outputs; the problems found (empty: all good)."""
    folder = Path(folder)
    index = json.loads((folder / "index.json").read_text())
    models = find_models(models_dir or folder.parent)
    problems = []
    for task in index["models"]:
        if task not in models:
            problems.append(f"{task}: no model to check")
            continue
        x = np.load(folder / task / "input.npy")
        got = models[task].predict(x)
        for entry in index["entries"]:
            if entry["task"] == task and entry["stage"] in got:
                want = np.load(folder / entry["file"])
                error = float(np.abs(got[entry["stage"]] - want).max())
                if not error <= entry["tolerance"]:
                    problems.append(f"{task} {entry['stage']}: max difference {error:.2e} > {entry['tolerance']}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.vectors", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="folder of exported .onnx models")
    parser.add_argument("--video", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--detector", default="auto")
    parser.add_argument("--check", type=Path, help="a vectors folder to re-check (with --models)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check_vectors(args.check, args.models)
            print("\n".join(problems) or f"{args.check}: every stored output reproduced")
            return 1 if problems else 0
        if not (args.models and args.video and args.out):
            parser.error("--models, --video and --out are needed (or --check DIR)")
        print(write_vectors(args.models, args.video, args.out, args.frames, args.detector))
    except (FileNotFoundError, ValueError) as error:
        print(f"vectors: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
