"""Samples per second of one loader worker: raw JPEG / video paths against the prepared cache.

    python bench/bench_data.py [--images 200] [--clips 12] [--seconds 3] [--gpu-rate 3000]

Builds its data in a temporary folder (synthetic faces in realistic file formats), then times, in this one
process (= one DataLoader worker):
    images  224x224 aligned faces from 256x256 JPEG files (decode + warp) vs from the cache (memory map)
    clips   16-frame clips over a 60-frame interval from a folder of 640x480 JPEGs, from an H.264 mp4 via
            decord (keyframe every 30 frames), and from the cache
The page cache is warm in every case (the files were just written), which favours the raw paths if anything.

The last lines turn the cache rates into "workers per GPU": how many loader processes keep up with a model
training at --gpu-rate images/s (default 3,000: an assumption for a ResNet-18-class network in bf16 at 224x224
on one RTX 4090, about 1.8 GFLOPs forward, x3 for training, at roughly 15 % of the card's 165 dense bf16
TFLOP/s; measure your own and pass it).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data.align import AlignSettings  # noqa: E402
from common.data.cache import FrameCache, FrameSettings, RawFrames  # noqa: E402
from common.data.clips import clip_positions  # noqa: E402
from common.data.records import Interval, Sample  # noqa: E402
from common.prepare import prepare  # noqa: E402
from common.synth import render_face  # noqa: E402

CLIP_LENGTH, INTERVAL, SIZE = 16, 60, 224


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


def camera_frame(face: np.ndarray) -> np.ndarray:
    """A 640x480 lab-camera frame with the face in the middle (CASME II's raw frames are this size)."""
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[:, 80:560] = face
    return frame


def build_images(root: Path, count: int) -> list[Sample]:
    samples = []
    for i in range(count):
        path = root / "images" / f"{i:05d}.jpg"
        write_jpeg(path, render_face({12: (i % 5) / 5}, i % 20, size=256, seed=i))
        samples.append(Sample("bench", f"s{i % 20}", "image", path, extra={"face_box": (40, 40, 176, 176)}))
    return samples


def build_clips(root: Path, count: int) -> tuple[list[Sample], list[Sample]]:
    """The same 60 rendered frames as `count` folders of JPEGs and `count` mp4 files of 300 frames."""
    import av

    faces = [camera_frame(render_face({12: 0.6 * np.sin(np.pi * k / INTERVAL)}, 1, size=480, seed=0))
             for k in range(INTERVAL)]
    folders, videos = [], []
    for c in range(count):
        folder = root / "frames" / f"clip{c:03d}"
        for k, frame in enumerate(faces):
            write_jpeg(folder / f"img{k + 1}.jpg", frame)
        box = {"face_box": (80, 0, 480, 480)}
        folders.append(Sample("bench", f"s{c}", "frames", folder, Interval(1, 30, INTERVAL), extra=box))
        path = root / "videos" / f"clip{c:03d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
            stream.codec_context.gop_size = 30
            for k in range(300):
                for packet in stream.encode(av.VideoFrame.from_ndarray(faces[k % INTERVAL], format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        start = 120 + (c * 17) % 100
        videos.append(Sample("bench", f"s{c}", "video", path, Interval(start, start + 30, start + INTERVAL - 1),
                             extra=box))
    return folders, videos


def rate(load, count: int, seconds: float) -> float:
    """Samples per second, cycling over `count` samples for about `seconds` (after one warm-up pass)."""
    load(0)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        load(done % count)
        done += 1
    return done / (time.perf_counter() - start)


def clip_loader(source):
    def load(i: int) -> np.ndarray:
        return source.clip(i, clip_positions(source.samples[i].interval, CLIP_LENGTH))
    return load


def fresh_raw(samples, settings):
    """A RawFrames per read keeps it honest: no reader or alignment stays open between samples."""
    def load(i: int) -> np.ndarray:
        return clip_loader(RawFrames([samples[i]], settings))(0)
    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per measurement")
    parser.add_argument("--gpu-rate", type=float, default=3000.0, help="images/s the GPU trains at")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one loader worker = one core
    settings = FrameSettings(AlignSettings(size=SIZE))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        images = build_images(root, args.images)
        folders, videos = build_clips(root, args.clips)
        for name, samples in (("images", images), ("clips", folders)):
            prepare(samples, root / f"cache_{name}", root, "bench", name, settings, workers=0, progress=False)
        image_cache, clip_cache = FrameCache(root / "cache_images"), FrameCache(root / "cache_clips")
        results = {
            "image 224 from JPEG": rate(lambda i: RawFrames([images[i]], settings).read(0, [0]), len(images),
                                        args.seconds),
            "image 224 from cache": rate(lambda i: image_cache.read(i, [0]), len(images), args.seconds),
            "clip 16x224 from JPEG folder": rate(fresh_raw(folders, settings), len(folders), args.seconds),
            "clip 16x224 from mp4 (decord)": rate(fresh_raw(videos, settings), len(videos), args.seconds),
            "clip 16x224 from cache": rate(clip_loader(clip_cache), len(clip_cache), args.seconds),
        }
    report(results, args.gpu_rate)


def report(results: dict[str, float], gpu_rate: float) -> None:
    print(f"{'path (one worker, one core)':34s} {'samples/s':>10s}")
    for name, value in results.items():
        print(f"{name:34s} {value:10.1f}")
    image_gain = results["image 224 from cache"] / results["image 224 from JPEG"]
    clip_gain = results["clip 16x224 from cache"] / results["clip 16x224 from JPEG folder"]
    print(f"cache speed-up: images x{image_gain:.1f}, clips x{clip_gain:.1f} over JPEG")
    print(f"workers to feed {gpu_rate:.0f} images/s: "
          f"{gpu_rate / results['image 224 from cache']:.2f} from the cache, "
          f"{gpu_rate / results['image 224 from JPEG']:.1f} from JPEG; "
          f"clips at {gpu_rate / CLIP_LENGTH:.0f} clips/s: "
          f"{gpu_rate / CLIP_LENGTH / results['clip 16x224 from cache']:.2f} from the cache, "
          f"{gpu_rate / CLIP_LENGTH / results['clip 16x224 from JPEG folder']:.1f} from JPEG")


if __name__ == "__main__":
    main()
