"""Throughput of the synthetic face generator on one core.

    python bench/bench_synth.py [--seconds 2]

Prints lines like `synth render_face 224px: 812 frames/s/core`. On-the-fly generation keeps up with
training when this is in the hundreds per core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.synth import emotion_sample, expression_clip, render_face  # noqa: E402
from common.synth.face import identity  # noqa: E402


def _rate(fn, frames_per_call: int, seconds: float) -> float:
    fn(0)  # warm caches (identity, background, noise bank) outside the timed loop
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(calls + 1)
        calls += 1
    return calls * frames_per_call / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent on each measurement")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    subjects = 16
    for s in range(subjects):
        identity(s)
    aus = {6: 0.6, 12: 0.8, 25: 0.3}
    for size in (224, 256):
        rate = _rate(lambda i: render_face(aus, i % subjects, size=size, seed=i), 1, args.seconds)
        print(f"synth render_face {size}px: {rate:.0f} frames/s/core")
    rate = _rate(lambda i: emotion_sample(i % subjects, i % 7, i, 224), 1, args.seconds)
    print(f"synth emotion_sample 224px: {rate:.0f} frames/s/core")
    rate = _rate(lambda i: expression_clip(i % subjects, i, n_frames=16, size=224), 16, args.seconds)
    print(f"synth expression_clip 16x224px: {rate:.0f} frames/s/core")


if __name__ == "__main__":
    main()
