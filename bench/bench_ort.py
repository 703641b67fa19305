"""ONNX Runtime against eager PyTorch at batch 1 on this CPU, for every architecture the recipes use.

    python -m bench.bench_ort [--arch NAME ...] [--threads 2] [--runs 10] [--attention plain|fused] [--ort-defaults]
                              [--json]

Each model is built at random initialisation (speed does not depend on the weights) and exported through
common.export exactly as a trained checkpoint is; eager is the same graph in PyTorch (`torch.inference_mode`, the
same number of intra-op threads). The two are timed interleaved, one call each in turn after a warm-up, and the
medians compared: ratio = ORT / eager (below 1: ONNX Runtime is faster). ONNX Runtime runs with the runtime's
session options (runtime.model.session_options); `--ort-defaults` with ONNX Runtime's own defaults and only the
thread count set, to see what the options give. `--json` prints a list of {arch, ort_ms, eager_ms, ratio}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EMOTIONS = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]


def builders() -> dict[str, Callable]:
    """arch -> a function making the task module (eval mode) the recipes train."""
    from au.module import AUModule
    from common.labels import au_name, au_set
    from emotion.module import EmotionModule
    from microexp.module import MicroExpModule
    from spotting.features import FeatureSettings
    from spotting.module import SpottingModule

    aus = [au_name(a) for a in au_set("app17")]
    micro = ["negative", "positive", "surprise"]
    return {
        "resnet18": lambda: EmotionModule(EMOTIONS, arch="resnet18"),
        "posterpp": lambda: EmotionModule(EMOTIONS, arch="posterpp", model_kwargs={"resize_mode": "nearest"}),
        "dan": lambda: EmotionModule(EMOTIONS, arch="dan"),
        "megraphau_r50": lambda: AUModule(aus, backbone="resnet50", stage=2),
        "megraphau_swin_b": lambda: AUModule(aus, backbone="swin_base_patch4_window7_224", stage=2),
        "videomae_s": lambda: MicroExpModule(micro, arch="videomae_s"),
        "videomae_b": lambda: MicroExpModule(micro, arch="videomae_b"),
        "cnn_lstm": lambda: MicroExpModule(micro, arch="cnn_lstm", image_size=128),
        "spotting_tcn": lambda: SpottingModule(features=FeatureSettings(detector="none").to_dict()),
    }


def measure(arch: str, threads: int, runs: int, attention: str = "plain", ort_defaults: bool = False) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from common.export import export_module
    from runtime.model import session_options

    torch.manual_seed(0)
    module = builders()[arch]().eval()
    with tempfile.TemporaryDirectory() as folder:
        path, graphs = export_module(module, Path(folder) / f"{arch}.onnx", samples=1, attention=attention)
        options = session_options(threads)
        if ort_defaults:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = graphs.inputs[0][:1]
    feed = {session.get_inputs()[0].name: x.numpy()}
    torch.set_num_threads(threads)
    with torch.inference_mode():
        eager = lambda: graphs.final(x)  # noqa: E731
        ort_run = lambda: session.run(None, feed)  # noqa: E731
        eager(), ort_run()  # warm-up: allocation, lazy initialisation
        ort_times, eager_times = [], []
        for _ in range(runs):
            for fn, times in ((ort_run, ort_times), (eager, eager_times)):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1000)
        got = session.run(None, feed)[0]
        want = graphs.final(x)
        want = (want[0] if isinstance(want, (tuple, list)) else want).numpy()
    ort_ms, eager_ms = statistics.median(ort_times), statistics.median(eager_times)
    return {"arch": arch, "ort_ms": significant(ort_ms, 4), "eager_ms": significant(eager_ms, 4),
            "ratio": significant(ort_ms / eager_ms, 3),
            "max_abs_diff": float(np.abs(got - want).max())}


def significant(value: float, digits: int) -> float:
    """Rounded to significant digits, not decimals: a 0.02 ratio or a 0.4 ms model keeps its precision."""
    return float(f"{value:.{digits}g}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_ort", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", choices=sorted(builders()), help="default: all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--attention", choices=("plain", "fused"), default="plain",
                        help="how attention is exported (common.export --attention)")
    parser.add_argument("--ort-defaults", action="store_true", help="ONNX Runtime's default session options")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    if not args.json:
        print(f"{'arch':18s} {'ORT ms':>9s} {'eager ms':>9s} {'ORT/eager':>10s}", flush=True)
    for arch in args.arch or list(builders()):
        row = measure(arch, args.threads, args.runs, args.attention, args.ort_defaults)
        rows.append(row)
        if not args.json:
            print(f"{arch:18s} {row['ort_ms']:9.1f} {row['eager_ms']:9.1f} {row['ratio']:10.3g}", flush=True)
    if args.json:
        print(json.dumps([{k: r[k] for k in ("arch", "ort_ms", "eager_ms", "ratio")} for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
