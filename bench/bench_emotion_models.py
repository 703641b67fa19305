"""Size, compute and speed of the emotion architectures, as the issue's deployment target asks for them.

    python -m bench.bench_emotion_models [--models posterpp dan resnet18 --batch 8 --steps 3 --runs 20 --threads 1]

Per model, at 224x224 RGB and 7 classes:
- parameters: every tensor (full) and the thop convention papers quote (parameters of leaf modules that run);
- GMACs of one image: torch.utils.flop_counter.FlopCounterMode's FLOPs / 2 (matmuls and convolutions);
- training samples/s on this CPU: EmotionModule.compute_loss + backward + one AdamW step, fp32, after warm-up
  (a SAM recipe runs two forward/backward passes per step, so about half of this);
- ONNX Runtime CPU latency at batch 1 (median), on the graph common.export writes (normalisation and softmax
  inside);
- an RTX 3060 estimate from the MACs alone (see GPU_ASSUMPTION): no GPU is measured here.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.timing import median_ms
from common.export import export_module
from common.optim import build_optimizer
from common.weights import full_param_count, thop_style_param_count
from emotion.data import EMOTION_CLASSES
from emotion.module import EmotionModule

# RTX 3060 (GA106, 28 SMs at 1.78 GHz boost): 12.7 TFLOPS fp32 on CUDA cores, ~25 TFLOPS dense fp16 on tensor
# cores. Batch-1 inference of networks this size reaches a fraction of peak; the utilisations below are
# assumptions, and kernel-launch overhead (tens of kernels, ~5-10 us each) is added as a fixed term.
RTX3060_TFLOPS = {"fp32": 12.7, "fp16": 25.0}
ASSUMED_UTILISATION = {"fp32": 0.35, "fp16": 0.25}
ASSUMED_OVERHEAD_MS = 0.5
GPU_ASSUMPTION = (
    "RTX 3060 estimate = 2 * MACs / (peak * utilisation) + overhead, with peak fp32 12.7 / fp16 25 TFLOPS, "
    f"utilisation fp32 {ASSUMED_UTILISATION['fp32']:.0%} / fp16 {ASSUMED_UTILISATION['fp16']:.0%}, "
    f"overhead {ASSUMED_OVERHEAD_MS} ms"
)
CLASSES = list(EMOTION_CLASSES[:7])
SIZE = 224


@dataclass
class Row:
    model: str
    params_m: float
    thop_params_m: float
    gmacs: float
    train_samples_s: float
    ort_ms: float

    def gpu_ms(self, precision: str) -> float:
        flops = 2 * self.gmacs * 1e9
        return flops / (RTX3060_TFLOPS[precision] * 1e12 * ASSUMED_UTILISATION[precision]) * 1e3 + ASSUMED_OVERHEAD_MS


def make_module(arch: str) -> EmotionModule:
    torch.manual_seed(0)
    return EmotionModule(CLASSES, image_size=SIZE, arch=arch, augment=False)


def gmacs(module: EmotionModule) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module.net.eval()(torch.randn(1, 3, SIZE, SIZE))
    return counter.get_total_flops() / 2 / 1e9


def train_samples_per_s(module: EmotionModule, batch: int, steps: int, warmup: int = 1) -> float:
    optimizer = build_optimizer(module, "adamw", 1e-4, 0.05)
    images = torch.rand(batch, 3, SIZE, SIZE)
    target = torch.arange(batch) % len(CLASSES)
    module.train()
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        loss = module.compute_loss({"input": images, "target": target})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def ort_latency_ms(module: EmotionModule, runs: int, threads: int) -> float:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        path, graphs = export_module(module.eval(), Path(folder) / "model.onnx", samples=1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: graphs.inputs[0].numpy()}
    return median_ms(lambda: session.run(None, feed), runs)


def measure(arch: str, args) -> Row:
    module = make_module(arch)
    example = torch.randn(1, 3, SIZE, SIZE)
    return Row(
        model=arch,
        params_m=full_param_count(module.net) / 1e6,
        thop_params_m=thop_style_param_count(module.net, example) / 1e6,
        gmacs=gmacs(module),
        train_samples_s=train_samples_per_s(module, args.batch, args.steps),
        ort_ms=ort_latency_ms(module, args.runs, args.threads),
    )


def table(rows: list[Row], args) -> str:
    header = (f"{'model':<10}{'params M':>10}{'thop M':>9}{'GMACs':>8}{'train/s':>9}{'ORT CPU ms':>12}"
              f"{'3060 fp32 ms':>14}{'3060 fp16 ms':>14}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.model:<10}{r.params_m:>10.2f}{r.thop_params_m:>9.2f}{r.gmacs:>8.2f}{r.train_samples_s:>9.2f}"
                     f"{r.ort_ms:>12.1f}{r.gpu_ms('fp32'):>14.2f}{r.gpu_ms('fp16'):>14.2f}")
    lines += [
        f"CPU: {args.threads} thread(s), torch {torch.__version__}, fp32; train/s at batch {args.batch} "
        f"({args.steps} timed steps after 1 warm-up; AdamW, one forward/backward per step; SAM doubles the cost)",
        f"ORT CPU: median of {args.runs} runs at batch 1, probs graph from common.export",
        GPU_ASSUMPTION,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["posterpp", "dan", "resnet18"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for torch and ORT (1: steadier timings on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(arch, args) for arch in args.models]
    print(table(rows, args))


if __name__ == "__main__":
    main()
