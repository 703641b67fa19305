"""`python -m runtime VIDEO|CAMERA_INDEX --models DIR --out results.csv [--annotate OUT.mp4]`

Runs every model in DIR (one .onnx per task: emotion, au, microexp, spotting) on each frame's face and writes one
row per frame to --out: frame, time, face (0 where no face was found: the model columns stay empty), the face box,
the emotion and its probabilities, the AU columns (AUxx_r, AUxx_c, AUxx_p), the micro-expression class and
probabilities on frames where a clip completes, and `spotted` on frames where intervals became final. Spotted
intervals also go to <out>_intervals.csv (vid, onset, offset, type, apex, score, onset_s, apex_s, offset_s), and
with a micro-expression model each spotted micro interval is classified into <out>_strs.csv (MEGC2024 STRS
columns subject, video, onset, offset, emotion). Models replaced in DIR while it runs are picked up (a broken file is
refused and the old model keeps serving). --annotate writes the video with the face box, the top emotion, the
active AUs and the spotted intervals drawn on it.

A model file the contract's check refuses is named on stderr with the reason and the others are served; the exit
status is non-zero only when none can be served (`--strict`: any refused file stops everything). Ctrl-C stops
after the current frame: the rows written so far stay in --out (and the intervals found so far in their file), and
the exit status is 130. Progress is a live line on a terminal and a plain line every 10 s in a log.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from common.console import Progress
from runtime.pipeline import Pipeline, find_models

INTERRUPTED = 130


def open_capture(source: str) -> tuple[cv2.VideoCapture, float, int]:
    capture = cv2.VideoCapture(int(source)) if source.isdigit() else cv2.VideoCapture(source)
    if not capture.isOpened():
        raise FileNotFoundError(f"{source}: cannot open the video or camera")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return capture, float(fps), total


class Annotator:
    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        self.active: list = []

    def draw(self, bgr: np.ndarray, result, fps: float) -> None:
        image = bgr.copy()
        if result.box is not None:
            x, y, w, h = (int(round(v)) for v in result.box)
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 255, 0), 1)
        lines = [] if result.face else ["no face"]
        if "emotion" in result.columns:
            lines.append(str(result.columns["emotion"]))
        aus = [k[:-2] for k, v in result.columns.items() if k.endswith("_c") and v == 1]
        if aus:
            lines.append(" ".join(aus))
        self.active = [i for i in self.active + list(result.intervals) if i.offset + fps >= result.number]
        lines += [f"{i.type} {i.onset}-{i.offset}" for i in self.active]
        for k, text in enumerate(lines):
            cv2.putText(image, text, (4, 14 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
        self.writer.write(image)

    def close(self) -> None:
        self.writer.release()


INTERVAL_EXTRA = ("apex", "score", "onset_s", "apex_s", "offset_s")


def detector_of(models: dict) -> str:
    """The detector the models were trained with where their metadata names one this runtime has, else auto."""
    for model in models.values():
        named = model.metadata.get("face_detector", "").split(" ")[0]
        if named in ("dlib", "cascade"):
            return named
    return "auto"


def run(source: str, models_dir: Path, out: Path, annotate: Path | None = None, detector: str | None = None,
        watch: bool = True, progress: bool = True, providers: list[str] | None = None, threads: int | None = None,
        clip_stride: int = 8, strict: bool = False) -> dict:
    """Writes the files and returns {"frames", "files", "intervals", "refused": [(path, reason)], "interrupted"}."""
    capture, fps, total = open_capture(source)
    refused: list = []
    models = find_models(models_dir, watch=watch, providers=providers, threads=threads, keep_labels=True,
                         strict=strict, refused=refused)
    for path, reason in refused:
        print(f"runtime: not serving {path.name}: {reason}", file=sys.stderr, flush=True)
    video = Path(source).stem if not source.isdigit() else f"camera{source}"
    pipeline = Pipeline(models, fps, detector or detector_of(models), clip_stride=clip_stride, subject="", video=video)
    columns = pipeline.columns()
    intervals: list = []
    annotator = None
    out.parent.mkdir(parents=True, exist_ok=True)
    frames, interrupted, meter = 0, False, Progress(total, "frames", progress)
    try:
        with open(out, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            try:
                while True:
                    ok, bgr = capture.read()
                    if not ok:
                        break
                    if annotate is not None and annotator is None:
                        annotator = Annotator(annotate, fps, (bgr.shape[1], bgr.shape[0]))
                    result = pipeline.frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), frames)
                    intervals += result.intervals
                    writer.writerow(pipeline.row(result))
                    if annotator is not None:
                        annotator.draw(bgr, result, fps)
                    frames += 1
                    meter.update(frames)
            except KeyboardInterrupt:
                interrupted = True
        intervals += pipeline.finish()
    finally:
        capture.release()
        if annotator is not None:
            annotator.close()
        for model in models.values():
            model.close()
    meter.close(frames)
    files = {"frames": out}
    if "spotting" in models:
        files["intervals"] = write_intervals(out.with_name(out.stem + "_intervals.csv"), video, intervals, fps)
    if pipeline.recogniser is not None:
        from runtime.stream import STRS_COLUMNS, strs_rows

        path = out.with_name(out.stem + "_strs.csv")
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=STRS_COLUMNS)
            writer.writeheader()
            writer.writerows(strs_rows(video, video, pipeline.recognised))
        files["strs"] = path
    return {"frames": frames, "files": files, "intervals": intervals, "refused": refused, "interrupted": interrupted}


def write_intervals(path: Path, video: str, intervals: Sequence, fps: float) -> Path:
    """A MEGC submission file (`spotting.evaluate` scores it) with the apex, score and times in seconds beside."""
    from spotting.evaluate import Spot, write_submission

    ordered = sorted(intervals, key=lambda i: (i.onset, i.type))
    return write_submission(path, [Spot(video, i.onset, i.offset, i.type) for i in ordered],
                            [{"apex": i.apex, "score": f"{i.score:.4f}", "onset_s": f"{i.onset / fps:.3f}",
                              "apex_s": f"{i.apex / fps:.3f}", "offset_s": f"{i.offset / fps:.3f}"} for i in ordered],
                            INTERVAL_EXTRA)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a video file, or a camera index (0, 1, ...)")
    parser.add_argument("--models", required=True, type=Path, help="folder of exported .onnx models")
    parser.add_argument("--out", required=True, type=Path, help="per-frame results CSV")
    parser.add_argument("--annotate", type=Path, help="also write an annotated video")
    parser.add_argument("--detector", help="face detector: dlib, cascade, auto, none (frames are faces), or "
                        "module:factory; default: the one the models' metadata names, else auto")
    parser.add_argument("--providers", nargs="+", help="ONNX Runtime providers in order (default: CUDA if available, CPU)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per model")
    parser.add_argument("--clip-stride", type=int, default=8, help="frames between two micro-expression clips")
    parser.add_argument("--strict", action="store_true", help="refuse to start when any model in --models is refused")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        result = run(args.source, args.models, args.out, args.annotate, args.detector, providers=args.providers,
                     threads=args.threads, clip_stride=args.clip_stride, strict=args.strict)
    except (FileNotFoundError, ValueError) as error:
        print(f"runtime: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the first frame (loading the models)
        print("runtime: interrupted before the first frame", file=sys.stderr)
        return INTERRUPTED
    files = ", ".join(str(p) for p in result["files"].values())
    if result["interrupted"]:
        print(f"runtime: interrupted after {result['frames']} frames; what was found so far is kept in {files}",
              file=sys.stderr)
        return INTERRUPTED
    print(f"{result['frames']} frames -> {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
