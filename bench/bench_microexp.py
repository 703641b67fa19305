"""Micro-expression throughput on this machine, and what a composite LOSO costs on the user's two RTX 4090s.

    python -m bench.bench_microexp [--clips 24] [--steps 2] [--threads 2] [--skip-base]

Prints, with the assumptions of every estimate:
    data       clips/s of one loader worker: 16 x 224 x 224 clips through MicroClips (clip sampling, gather,
               tensor) from the prepared cache, and from the raw JPEG folders (decode + align on the fly); and
               the 7-region flow features of one clip (computed once, then cached)
    training   clips/s of a training step on this CPU at batch 2 (fp32), VideoMAE V2 ViT-S and ViT-B with the
               encoder frozen (adapters, norms and head train) and unfrozen, and the two baselines; peak memory
               (max RSS) of a process that only does that
    estimate   the hours of a MEGC2019-composite LOSO (68 folds) on two RTX 4090s, from FLOPs
Each training measurement runs in a fresh process, so its peak memory is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import training_seconds_per_step  # noqa: E402

CONFIGS = {  # name -> (arch, frozen, image size)
    "videomae_s frozen": ("videomae_s", True, 224),
    "videomae_s unfrozen": ("videomae_s", False, 224),
    "videomae_b frozen": ("videomae_b", True, 224),
    "videomae_b unfrozen": ("videomae_b", False, 224),
    "cnn_lstm (128 px)": ("cnn_lstm", False, 128),
    "roi_transformer (flow features)": ("roi_transformer", False, 224),
}
COMPOSITE_FOLDS, COMPOSITE_CLIPS = 68, 442
RTX4090_BF16_TFLOPS, UTILISATION, GPUS, EPOCHS = 165.0, 0.30, 2, 30


def data_rates(clips: int, seconds: float = 3.0) -> dict[str, float]:
    """One worker: MicroClips from a prepared cache, and from the raw folders."""
    from common.data.align import AlignSettings
    from common.data.cache import FrameSettings, RawFrames, open_source
    from common.data import load_samples
    from common.prepare import prepare
    from common.synth.formats.microexp import write_casme2
    from microexp.data import MicroClips
    from microexp.flow import roi_flow_features

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "casme2"
        write_casme2(root, subjects=max(1, clips // 4), per_subject=4, size=224, cropped=False)
        settings = FrameSettings(AlignSettings(size=224, detector="none"))
        samples = load_samples("casme2", root, "microexp")
        prepare(samples, Path(folder) / "cache", root, "microexp", "casme2", settings, workers=0, progress=False)
        sources = {"cache": open_source(Path(folder) / "cache", "casme2", "microexp"),
                   "raw JPEG folders": RawFrames(samples, settings)}
        rates = {}
        for name, frames in sources.items():
            name = f"from the {name}"
            dataset = MicroClips(frames, range(len(frames)), [0] * len(frames), ["x"] * len(frames),
                                 ["s"] * len(frames), 16, "uniform", 224, train=True)
            rates[name] = per_second(lambda i: dataset[i % len(dataset)], seconds)
        clip = dataset[0]["input"].permute(0, 2, 3, 1).numpy()
        for method in ("dis", "farneback"):
            rates[f"flow features ({method}), computed"] = per_second(lambda i: roi_flow_features(clip, method), seconds)
        return rates


def per_second(fn, seconds: float) -> float:
    fn(0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(count)
        count += 1
    return count / (time.perf_counter() - start)


def training_rate(arch: str, frozen: bool, size: int, steps: int, batch: int = 2) -> dict:
    """Clips/s of forward + backward + AdamW on this CPU, fp32."""
    from microexp.module import MicroExpModule

    torch.manual_seed(0)
    module = MicroExpModule(["negative", "positive", "surprise"], image_size=size, arch=arch, freeze_backbone=frozen,
                            augment=False)
    clips = torch.randn(batch, 16, 14) if module.reads_features else \
        torch.randint(0, 255, (batch, 16, 3, size, size), dtype=torch.uint8)
    elapsed = training_seconds_per_step(module, {"input": clips, "target": torch.arange(batch) % 3}, steps,
                                        transfer=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux -> MB
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"clips_per_s": batch / elapsed, "seconds_per_step": elapsed, "peak_mb": peak, "trainable": trainable}


def videomae_gflops(dim: int, depth: int, tokens: int = 1568, patch_inputs: int = 3 * 2 * 16 * 16) -> float:
    """Forward GFLOPs of a VideoMAE encoder (2 FLOPs per multiply-add): patch embedding, per block qkv, output
    projection and MLP (12 d^2 per token) and the two attention matmuls (2 N d per token)."""
    macs = tokens * patch_inputs * dim + depth * tokens * (12 * dim * dim + 2 * tokens * dim)
    return 2 * macs / 1e9


def composite_hours(gflops: float, frozen: bool) -> tuple[float, str]:
    """A composite LOSO: 68 folds, each training on the other 67 subjects' clips for 30 epochs and testing one."""
    train_clips = COMPOSITE_CLIPS * (COMPOSITE_FOLDS - 1) / COMPOSITE_FOLDS
    backward = 1.0 if frozen else 2.0  # activation gradients through every block; weight gradients only unfrozen
    total = COMPOSITE_FOLDS * EPOCHS * train_clips * gflops * (1 + backward) * 1e9
    seconds = total / (GPUS * RTX4090_BF16_TFLOPS * 1e12 * UTILISATION)
    assumption = (f"{COMPOSITE_FOLDS} folds x {EPOCHS} epochs x {train_clips:.0f} clips x {gflops:.0f} GFLOPs x "
                  f"{1 + backward:.0f} (forward + backward), over {GPUS} x {RTX4090_BF16_TFLOPS:.0f} dense bf16 "
                  f"TFLOP/s at {UTILISATION:.0%} utilisation")
    return seconds / 3600, assumption


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-base", action="store_true", help="leave out ViT-B (slow on a small CPU)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        arch, frozen, size = CONFIGS[args.one]
        print(json.dumps(training_rate(arch, frozen, size, args.steps)))
        return 0
    print(f"CPU: {os.cpu_count()} cores, {args.threads} torch threads, torch {torch.__version__}, fp32")
    for name, rate in data_rates(args.clips).items():
        print(f"data, one worker, 16x224x224 clips, {name}: {rate:.1f} clips/s")
    for name in CONFIGS:
        if args.skip_base and "videomae_b" in name:
            continue
        result = subprocess.run([sys.executable, "-m", "bench.bench_microexp", "--one", name, "--steps",
                                 str(args.steps), "--threads", str(args.threads)], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parents[1])
        if result.returncode != 0:
            print(f"training {name}: failed ({result.stderr.strip().splitlines()[-1]})")
            continue
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"training {name}, batch 2: {r['clips_per_s']:.2f} clips/s ({r['seconds_per_step']:.1f} s/step), "
              f"peak memory {r['peak_mb']:.0f} MB, {r['trainable'] / 1e6:.2f} M trainable parameters")
    for arch, dim in (("ViT-S", 384), ("ViT-B", 768)):
        gflops = videomae_gflops(dim, 12)
        for frozen in (True, False):
            hours, assumption = composite_hours(gflops, frozen)
            print(f"estimate, composite LOSO with VideoMAE V2 {arch} ({'frozen' if frozen else 'unfrozen'}): "
                  f"{hours:.1f} h on two RTX 4090s [{assumption}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
