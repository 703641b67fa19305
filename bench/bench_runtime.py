"""The runtime on this machine: pipeline frames/s per model and all together, hot-reload latency, clip-buffer memory.

    python -m bench.bench_runtime [--seconds 10] [--threads 2] [--micro videomae_s]

Models are this project's architectures at random initialisation (speed does not depend on the weights), exported
through common.export: emotion ResNet-18 (224), AU ME-GraphAU ResNet-50 stage 2 with 17 AUs (256), micro-expression
VideoMAE V2 (--micro; 16x224 clips, one every 8 frames), spotting TCN. The video is a synthetic 30 fps long video at
256 px; the detector is `none` (the synthetic face fills the frame), so the numbers are the models and the
preprocessing, not face detection.
Reload: the emotion file is replaced 5 times by atomic rename while a thread calls predict; latency = replace ->
first answer from the new model; longest call = the slowest predict during the reloads.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export_models(folder: Path, micro: str) -> dict[str, Path]:
    import torch

    from au.module import AUModule
    from common.export import export_module
    from common.labels import au_name, au_set
    from emotion.module import EmotionModule
    from microexp.module import MicroExpModule
    from spotting.features import FeatureSettings
    from spotting.module import SpottingModule

    torch.manual_seed(0)
    modules = {
        "emotion": EmotionModule(["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]),
        "au": AUModule([au_name(a) for a in au_set("app17")], backbone="resnet50", stage=2),
        "microexp": MicroExpModule(["negative", "positive", "surprise"], arch=micro),
        "spotting": SpottingModule(features=FeatureSettings(detector="none").to_dict()),
    }
    paths = {}
    for task, module in modules.items():
        paths[task] = export_module(module.eval(), folder / f"{task}.onnx", samples=1)[0]
    return paths


def pipeline_rate(folder: Path, frames: np.ndarray, threads: int) -> tuple[float, int]:
    from runtime.pipeline import Pipeline, find_models

    models = find_models(folder, providers=["CPUExecutionProvider"], threads=threads)
    pipeline = Pipeline(models, 30.0, detector="none")
    pipeline.frame(frames[0], 0)  # warm-up
    start = time.perf_counter()
    for n, frame in enumerate(frames[1:], start=1):
        pipeline.frame(frame, n)
    pipeline.finish()
    return (len(frames) - 1) / (time.perf_counter() - start), (pipeline.clips.nbytes if pipeline.clips else 0)


def reload_measurement(path: Path, other: Path, replacements: int = 5) -> tuple[list[float], float]:
    import onnxruntime as ort

    from runtime.model import Model

    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    versions = [path.read_bytes(), other.read_bytes()]
    expected = [ort.InferenceSession(v, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0] for v in versions]
    live = path.parent / "live" / "emotion.onnx"
    live.parent.mkdir(exist_ok=True)
    live.write_bytes(versions[0])
    model = Model(live, watch=True, providers=["CPUExecutionProvider"], poll=0.05, settle=0.1)
    durations, latest, stop = [], [0], threading.Event()

    def caller():
        while not stop.is_set():
            start = time.perf_counter()
            out = model.predict(x)["probs"]
            durations.append(time.perf_counter() - start)
            latest[0] = 0 if np.allclose(out, expected[0], atol=1e-5) else 1

    thread = threading.Thread(target=caller)
    thread.start()
    latencies = []
    try:
        for k in range(1, replacements + 1):
            staged = live.with_suffix(".tmp")
            staged.write_bytes(versions[k % 2])
            start = time.perf_counter()
            os.replace(staged, live)
            while latest[0] != k % 2:
                time.sleep(0.002)
            latencies.append(time.perf_counter() - start)
    finally:
        stop.set()
        thread.join()
        model.close()
    return latencies, max(durations)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--micro", default="videomae_s")
    args = parser.parse_args(argv)
    from common.synth import long_video

    video = long_video(3, 0, fps=30.0, seconds=args.seconds, size=256)
    frames = video.frames()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        paths = export_models(scratch / "all", args.micro)
        print(f"exported 4 models in {time.perf_counter() - start:.0f} s; {len(frames)} frames of 256 px, "
              f"{args.threads} ONNX Runtime threads, CPU")
        for task, path in paths.items():
            alone = scratch / task
            alone.mkdir()
            (alone / path.name).write_bytes(path.read_bytes())
            rate, memory = pipeline_rate(alone, frames, args.threads)
            extra = f", clip buffer {memory / 2**20:.1f} MiB" if memory else ""
            print(f"  {task:9s} alone: {rate:6.1f} frames/s{extra}")
        rate, memory = pipeline_rate(scratch / "all", frames, args.threads)
        print(f"  all four together: {rate:.1f} frames/s (clip buffer {memory / 2**20:.1f} MiB)")
        import torch

        from common.export import export_module
        from emotion.module import EmotionModule

        torch.manual_seed(1)
        other = export_module(EmotionModule(["neutral", "happiness", "sadness", "surprise", "fear", "disgust",
                                              "anger"]).eval(), scratch / "other.onnx", samples=1)[0]
        latencies, longest = reload_measurement(paths["emotion"], other)
        print(f"hot reload (emotion ResNet-18, {len(latencies)} atomic replacements): file replaced -> new model "
              f"serving in median {statistics.median(latencies) * 1000:.0f} ms (max {max(latencies) * 1000:.0f} ms); "
              f"longest predict call meanwhile {longest * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
