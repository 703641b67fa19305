"""ME-GraphAU on this machine: size, cost, CPU training speed, ONNX Runtime latency, and a GPU estimate.

    python -m bench.bench_au [--backbones resnet50 swin_base_patch4_window7_224] [--batch 8] [--steps 2] [--threads 2]

Per backbone (stage 2, BP4D's 12 AUs): parameters (the official count, without this project's intensity read-out),
GMACs of one face at the network's 224 crop and at the full 256 input (torch's FlopCounterMode FLOPs / 2), training
images/s on this CPU at batch 8 (fp32, forward + backward + AdamW), ONNX Runtime CPU latency at batch 1 of the
exported graph (256 in, both heads out), and an estimate of one BP4D fold on two RTX 4090s from the MACs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import median_ms, training_seconds_per_step  # noqa: E402

BP4D_FOLD_TRAIN_FRAMES = 2 * 140_000 // 3  # two of the three parts of the about 140,000 labelled BP4D frames
EPOCHS, GPUS, RTX4090_BF16_TFLOPS, UTILISATION = 20, 2, 165.0, 0.30


def module_for(backbone: str):
    from au.module import AUModule
    from common.labels import au_name, au_set

    torch.manual_seed(0)
    return AUModule([au_name(a) for a in au_set("bp4d12")], image_size=256, backbone=backbone, stage=2, augment=False)


def gmacs(net, size: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.eval()(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 2 / 1e9


def training_rate(module, batch: int, steps: int) -> float:
    data = {"input": torch.rand(batch, 3, 224, 224), "target": (torch.rand(batch, 12) > 0.7).float(),
            "mask": torch.ones(batch, 12, dtype=torch.bool), "intensity": torch.zeros(batch, 12),
            "intensity_mask": torch.zeros(batch, 12, dtype=torch.bool)}
    return batch / training_seconds_per_step(module, data, steps)


def ort_latency_ms(module, threads: int, runs: int = 10) -> float:
    import onnxruntime as ort

    from common.export import export_module

    with tempfile.TemporaryDirectory() as folder:
        path, _ = export_module(module.eval(), Path(folder) / "au.onnx", samples=1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"image": torch.rand(1, 3, 256, 256).numpy()}
        return median_ms(lambda: session.run(None, feed), runs)


def fold_hours(macs: float) -> float:
    flops = 2 * macs * 1e9 * 3 * BP4D_FOLD_TRAIN_FRAMES * EPOCHS  # forward + backward = 3 x forward
    return flops / (GPUS * RTX4090_BF16_TFLOPS * 1e12 * UTILISATION) / 3600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "swin_base_patch4_window7_224"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {args.threads} torch threads, torch {torch.__version__}, fp32; ME-GraphAU stage 2, 12 AUs")
    for backbone in args.backbones:
        module = module_for(backbone)
        params = sum(p.numel() for n, p in module.net.named_parameters() if "intensity" not in n) / 1e6
        at_224, at_256 = gmacs(module.net, 224), gmacs(module, 256)
        rate = training_rate(module, args.batch, args.steps)
        latency = ort_latency_ms(module, args.threads)
        print(f"{backbone}: {params:.2f} M parameters, {at_224:.2f} GMACs at the 224 crop ({at_256:.2f} through the "
              f"256 graph), training {rate:.2f} images/s at batch {args.batch}, ONNX Runtime {latency:.1f} ms at "
              f"batch 1; one BP4D fold on two RTX 4090s: about {fold_hours(at_224):.1f} h [estimate: "
              f"{BP4D_FOLD_TRAIN_FRAMES} training frames x {EPOCHS} epochs x 3 x forward, {GPUS} x "
              f"{RTX4090_BF16_TFLOPS:.0f} bf16 TFLOP/s at {UTILISATION:.0%}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
