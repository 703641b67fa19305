"""The C++ application side against the Python runtime on the same frames: per-frame time of the face crop, the
clip buffer, the spotting features and the post-processing (C++ / Python as a ratio), and, where the C++ ONNX
Runtime layer is built (ONNXRUNTIME_ROOT), frames per second of the whole pipeline both ways.

    python -m bench.bench_cpp [--frames 120] [--threads 2] [--pipeline] [--micro videomae_s]

Builds runtime/cpp into build/cpp (as the tests do). The frames: a synthetic face in 640 x 480 camera frames, its
five points known; the spotting faces: 128 px grey faces of a synthetic long video; the scores: a long video's
scores from the spotting model. `--pipeline` also exports the four architectures (as bench_runtime: random
weights, speed does not depend on them) and runs `python -m runtime` and `facex_run` on the same video.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUILD = REPO / "build" / "cpp"


def build(ort_root: str | None = None) -> Path:
    """runtime/cpp built into build/cpp (Release), with the ONNX Runtime layer where `ort_root` (default: the
    environment's ONNXRUNTIME_ROOT) names an SDK; a failing step raises RuntimeError with the tail of its output."""
    root = os.environ.get("ONNXRUNTIME_ROOT", "") if ort_root is None else ort_root
    BUILD.mkdir(parents=True, exist_ok=True)
    configure = ["cmake", "-S", str(REPO / "runtime" / "cpp"), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DONNXRUNTIME_ROOT={root}"]
    for command in (configure, ["cmake", "--build", str(BUILD), "-j", str(os.cpu_count() or 2)]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return BUILD


def camera_frames(count: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic face (256 px) moving slowly in 640 x 480 frames, and its five points per frame."""
    from common.data.align import template
    from common.synth import long_video

    video = long_video(8, 0, fps=30.0, seconds=count / 30.0 + 1, size=256)
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (0, 0), 4)
    frames, points = [], []
    for n in range(count):
        x, y = 190 + int(20 * np.sin(n / 15)), 110 + int(10 * np.cos(n / 20))
        frame = background.copy()
        frame[y:y + 256, x:x + 256] = video.frame(n)
        frames.append(frame)
        points.append(template(256, 0.0) + [x, y])
    return np.stack(frames), np.stack(points)


def write_case(folder: Path, frames: int) -> dict:
    from common.synth import long_video
    from spotting.features import FeatureSettings

    images, points = camera_frames(frames)
    np.save(folder / "frames.npy", images)
    np.save(folder / "points.npy", points)
    settings = FeatureSettings(detector="none")
    video = long_video(9, 0, fps=30.0, seconds=frames / 30.0 + 1, size=settings.size)
    np.save(folder / "faces.npy", np.stack([cv2.cvtColor(video.frame(n), cv2.COLOR_RGB2GRAY) for n in range(frames)]))
    rng = np.random.default_rng(1)
    t = np.arange(1800)
    scores = np.stack([np.clip(sum(np.exp(-0.5 * ((t - c) / 6) ** 2) for c in rng.uniform(0, 1800, 40)), 0, 1)
                       for _ in range(6)], 1).astype(np.float32)
    np.save(folder / "scores.npy", scores)
    spec = {"feature_settings": settings.to_dict(), "thresholds": {"macro": 0.5, "micro": 0.5}, "boundary": 0.5,
            "min_gap_seconds": 0.3}
    (folder / "spec.json").write_text(json.dumps(spec))
    return spec


def python_times(folder: Path, spec: dict) -> dict[str, float]:
    from common.data.align import alignment_matrix, warp
    from runtime.stream import ClipBuffer
    from spotting.features import FeatureSettings, FlowFeatures
    from spotting.postprocess import SpotSettings, TYPES, plausible_lengths, spot

    def ms_per(count, body):
        body(0)
        start = time.perf_counter()
        for i in range(count):
            body(i)
        return (time.perf_counter() - start) * 1000 / count

    frames, points = np.load(folder / "frames.npy"), np.load(folder / "points.npy")
    faces = [None] * len(frames)

    def crop(i):
        faces[i] = warp(frames[i], alignment_matrix(points[i], 224, 0.15), 224)

    times = {"crop": ms_per(len(frames), crop)}
    buffer = ClipBuffer(16, 0.5, 30.0, 8)
    times["clip_buffer"] = ms_per(len(frames), lambda i: buffer.push(faces[i], i))
    settings = FeatureSettings(**{k: v for k, v in spec["feature_settings"].items() if k != "names"})
    maker, grey, k = FlowFeatures(settings), np.load(folder / "faces.npy"), settings.gap(30.0)
    times["features"] = ms_per(len(grey) - k, lambda i: maker.pooled(maker.flow(grey[i], grey[i + k])))
    scores = np.load(folder / "scores.npy")
    post = SpotSettings(spec["thresholds"], plausible_lengths(30.0), spec["boundary"],
                        {kind: max(1, round(spec["min_gap_seconds"] * 30)) for kind in TYPES})
    numbers = np.arange(len(scores))
    times["postprocess"] = ms_per(20, lambda i: spot(scores, numbers, post, 1)) / len(scores)
    return times


def pipeline_rates(build_dir: Path, seconds: float, threads: int, micro: str) -> tuple[float, float]:
    from bench.bench_runtime import export_models
    from common.synth import long_video
    from runtime.__main__ import main as python_runtime

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        export_models(folder / "models", micro)
        video = long_video(3, 0, fps=30.0, seconds=seconds, size=256)
        path = folder / "clip.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (256, 256))
        for frame in video.frames():
            writer.write(frame[:, :, ::-1])
        writer.release()
        start = time.perf_counter()
        python_runtime([str(path), "--models", str(folder / "models"), "--out", str(folder / "py.csv"), "--detector",
                        "none", "--providers", "CPUExecutionProvider", "--threads", str(threads)])
        python_fps = video.n_frames / (time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([str(build_dir / "facex_run"), str(path), "--models", str(folder / "models"), "--out",
                        str(folder / "cpp.csv"), "--detector", "none", "--cpu", "--threads", str(threads)],
                       check=True, capture_output=True)
        cpp_fps = video.n_frames / (time.perf_counter() - start)
    return python_fps, cpp_fps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_cpp", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipeline", action="store_true", help="also the whole pipeline (needs ONNXRUNTIME_ROOT)")
    parser.add_argument("--seconds", type=float, default=10.0, help="--pipeline: video length")
    parser.add_argument("--micro", default="videomae_s", help="--pipeline: the micro-expression architecture")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    build_dir = build()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        spec = write_case(folder, args.frames)
        cpp = json.loads(subprocess.run([str(build_dir / "facex_bench"), str(folder)], check=True, capture_output=True,
                                        text=True, env={**os.environ, "OPENCV_FOR_THREADS_NUM": "1"}).stdout)
        python = python_times(folder, spec)
    print(f"{'per frame':30s} {'Python ms':>10s} {'C++ ms':>10s} {'C++ / Python':>13s}")
    names = {"crop": "face crop (640x480 -> 224)", "clip_buffer": "clip buffer push (16 x 224)",
             "features": "spotting features (128 px)", "postprocess": "post-processing"}
    for key, label in names.items():
        print(f"{label:30s} {python[key]:10.5f} {cpp[key]:10.5f} {cpp[key] / python[key]:13.2f}")
    if args.pipeline:
        if not (build_dir / "facex_run").exists():
            print("pipeline: facex_run is not built (set ONNXRUNTIME_ROOT to an ONNX Runtime SDK)")
            return 0
        python_fps, cpp_fps = pipeline_rates(build_dir, args.seconds, args.threads, args.micro)
        print(f"whole pipeline, four models, {args.threads} ORT threads: Python {python_fps:.2f} frames/s, "
              f"C++ {cpp_fps:.2f} frames/s ({cpp_fps / python_fps:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
