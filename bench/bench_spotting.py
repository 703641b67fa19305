"""Spotting on this machine: feature speed, training speed, a 5-minute video end to end, and F1 of the learned
spotter against the optical-flow baseline on held-out synthetic subjects.

    python -m bench.bench_spotting [--epochs 40] [--subjects 8 2 3] [--seconds 60] [--video-minutes 5] [--skip-f1]

1. Feature extraction frames/s (DIS and Farneback) on 600 pre-rendered 128-pixel synthetic frames: alignment warp,
   grey conversion, flow between frames 3 apart, pooling over 12 regions.
2. Training windows/s of the temporal network (width 64, depth 8) at batch 8 x 256 frames, fp32, forward + backward
   + AdamW.
3. A 5-minute 30 fps synthetic video written as an MP4, then timed end to end: decode, align, features, network,
   post-processing to intervals.
4. The synthetic recipe (configs/spotting/synthetic.yaml: 8 training, 2 validation, 3 test identities of 60 s) trained
   for --epochs; MEGC F1 (IoU >= 0.5) of the learned spotter and of the baseline, each with thresholds chosen on the
   validation identities, on the 3 test identities.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import training_seconds_per_step  # noqa: E402


def feature_rate(method: str) -> float:
    from common.synth import long_video
    from spotting.features import FeatureSettings, extract

    settings = FeatureSettings(detector="none", method=method)
    video = long_video(3, 0, fps=30.0, seconds=20.0, size=settings.size)
    frames = video.frames()
    start = time.perf_counter()
    extract(lambda p: frames[np.asarray(p)], np.arange(len(frames)), video.fps, settings)
    return len(frames) / (time.perf_counter() - start)


def training_rate(batch: int = 8, window: int = 256, steps: int = 10) -> float:
    from spotting.module import SpottingModule

    torch.manual_seed(0)
    data = {"input": torch.randn(batch, window, 35), "target": (torch.rand(batch, window, 6) > 0.9).float(),
            "mask": torch.ones(batch, window, dtype=torch.bool)}
    return batch / training_seconds_per_step(SpottingModule(), data, steps, lr=1e-3)


def write_video(path: Path, minutes: float) -> int:
    import cv2

    from common.synth import long_video

    video = long_video(7, 0, fps=30.0, seconds=60 * minutes, size=128)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (128, 128))
    for i in range(len(video)):
        writer.write(video.frame(i)[:, :, ::-1])
    writer.release()
    return len(video)


def end_to_end(path: Path) -> tuple[float, int, int]:
    """Seconds from the file to intervals; frames; intervals found (random network weights: timing only)."""
    from common.data.readers import open_frames
    from spotting.features import FeatureSettings, extract
    from spotting.module import SpottingModule
    from spotting.postprocess import SpotSettings, plausible_lengths, spot

    torch.manual_seed(0)
    module = SpottingModule().eval()
    start = time.perf_counter()
    with open_frames("video", path) as source:
        value = extract(source.read, source.numbers, source.fps or 30.0, FeatureSettings(detector="none"))
    with torch.no_grad():
        scores = module(torch.from_numpy(value.features)[None])[0].numpy()
    found = spot(scores, value.numbers, SpotSettings({"macro": 0.5, "micro": 0.5}, plausible_lengths(30.0)))
    return time.perf_counter() - start, len(value.numbers), len(found)


def learned_against_baseline(epochs: int, subjects: tuple[int, int, int], seconds: float, cache: Path) -> dict:
    import lightning as L

    from spotting.data import SpottingDataModule
    from spotting.module import SpottingModule

    L.seed_everything(42)
    data = SpottingDataModule(subjects=subjects, seconds=seconds, feature_cache=str(cache), num_workers=0)
    model = SpottingModule(feature_dim=data.feature_dim, features=data.features, warmup_epochs=1)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=str(cache.parent / "run"))
    start = time.perf_counter()
    trainer.fit(model, data)
    fit = time.perf_counter() - start
    results = trainer.test(model, data, verbose=False)[0]
    return {"fit_seconds": fit, **results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)  # the synthetic recipe's
    parser.add_argument("--subjects", type=int, nargs=3, default=(8, 2, 3))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--video-minutes", type=float, default=5.0)
    parser.add_argument("--skip-f1", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"machine: {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    for method in ("dis", "farneback"):
        print(f"feature extraction ({method}, 128 px, 12 regions): {feature_rate(method):.0f} frames/s")
    print(f"training (width 64, depth 8, batch 8 x 256 frames, fp32): {training_rate():.1f} windows/s")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "long.mp4"
        frames = write_video(path, args.video_minutes)
        seconds, count, found = end_to_end(path)
        print(f"end to end, {args.video_minutes:g}-minute 30 fps video ({frames} frames, MP4): {seconds:.1f} s "
              f"({count / seconds:.0f} frames/s; decode, align, features, network, intervals)")
        if not args.skip_f1:
            r = learned_against_baseline(args.epochs, tuple(args.subjects), args.seconds, Path(scratch) / "cache")
            print(f"synthetic, {args.subjects[2]} held-out identities, {args.epochs} epochs "
                  f"(fit {r['fit_seconds']:.0f} s incl. features):")
            print(f"  {'':22s} {'macro F1':>9s} {'micro F1':>9s} {'overall F1':>11s} {'precision':>10s} {'recall':>7s}")
            for name, prefix in (("learned spotter", "test/"), ("optical-flow baseline", "test/baseline_")):
                print(f"  {name:22s} {r[prefix + 'f1_macro']:9.3f} {r[prefix + 'f1_micro']:9.3f} {r[prefix + 'f1']:11.3f} "
                      f"{r[prefix + 'precision']:10.3f} {r[prefix + 'recall']:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
