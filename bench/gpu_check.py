"""Everything only a GPU can show, in one command of at most about 8 minutes on one card.

    python -m bench.gpu_check [--out DIR] [--steps 40]

1. Training: a bf16-mixed epoch (limited to --steps batches) of each task's default architecture on synthetic data
   at its real input size (emotion ResNet-18 224 px, micro-expression VideoMAE V2-S 16 x 224 px, AU ME-GraphAU
   ResNet-50 256 px, the spotting TCN), and POSTER++ and VideoMAE V2-B at their GPU recipes' batch sizes:
   samples/s and peak memory.
2. DDP on every GPU present: one step with devices = all against the same step on one device; the loss and the
   gradients must agree (skipped with one GPU).
3. Export of each default model, ONNX Runtime's CUDA provider against PyTorch on the GPU (max abs difference) and
   its latency at batch 1; the emotion model's against the application's < 5 ms target, with the card named.
4. bf16-mixed against fp32: the losses of a few identical steps must agree.

Every number is printed with the device it came from; `--out DIR` also writes them to DIR/gpu_check.json. Without
CUDA it says so in one line and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
# task -> extra train.py options for the GPU runs (the default recipes otherwise: real input sizes)
TRAINING = {
    "emotion (ResNet-18, 224)": ("emotion", []),
    "micro-expression (VideoMAE V2-S, 16x224)": ("microexp", []),
    "AU (ME-GraphAU R50 stage 2, 256)": ("au", []),
    "spotting (TCN)": ("spotting", []),
    "emotion POSTER++ (recipe batch)": ("emotion", ["--model.arch", "posterpp", "--model.model_kwargs",
                                                   "{resize_mode: nearest}", "--data.batch_size", "RECIPE:emotion/rafdb_posterpp.yaml"]),
    "micro-expression VideoMAE V2-B (recipe batch)": ("microexp", ["--model.arch", "videomae_b", "--data.batch_size",
                                                                   "RECIPE:microexp/megc2019_videomae_b.yaml"]),
}
EMOTION_TARGET_MS = 5.0
LATENCY_RUNS = 50  # batch-1 calls timed per model (median)


def recipe_batch(name: str) -> str:
    import yaml

    recipe = yaml.safe_load((REPO / "configs" / name).read_text())
    return str(recipe["data"]["init_args"]["batch_size"])


def training_rates(out: Path, steps: int) -> list[dict]:
    import torch

    from common.cli import main as train

    rows = []
    for label, (task, extra) in TRAINING.items():
        extra = [recipe_batch(e[7:]) if e.startswith("RECIPE:") else e for e in extra]
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        cli = train(["--task", task, "fit", *extra, "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed",
                     "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.limit_train_batches", str(steps),
                     "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
                     "--run.root", str(out / "runs"), "--run.wandb", "false", "--data.num_workers", "4"])
        seconds = time.perf_counter() - start
        batch = cli.datamodule.batch_size
        rows.append({"what": label, "batch": batch, "steps": int(cli.trainer.global_step),
                     "samples_per_s": round(cli.trainer.global_step * batch / seconds, 1),
                     "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
        print(f"  {label}: {rows[-1]['samples_per_s']} samples/s (batch {batch}, wall time including data and "
              f"validation), peak {rows[-1]['peak_memory_gib']} GiB", flush=True)
    return rows


def models() -> dict:
    from au.module import AUModule
    from common.labels import au_name, au_set
    from emotion.module import EmotionModule
    from microexp.module import MicroExpModule
    from spotting.features import FeatureSettings
    from spotting.module import SpottingModule

    return {"emotion": lambda: EmotionModule(["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"]),
            "microexp": lambda: MicroExpModule(["negative", "positive", "surprise"], arch="videomae_s"),
            "au": lambda: AUModule([au_name(a) for a in au_set("app17")], backbone="resnet50", stage=2),
            "spotting": lambda: SpottingModule(features=FeatureSettings(detector="none").to_dict())}


def ort_cuda(folder: Path) -> list[dict]:
    import numpy as np
    import onnxruntime as ort
    import torch

    from bench.timing import median_ms
    from common.export import export_module
    from runtime.model import provider_list, session_options

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("  ONNX Runtime has no CUDA provider here: pip install -e '.[gpu]' (onnxruntime-gpu)", flush=True)
        return []
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 parity, not TF32
    rows = []
    for task, make in models().items():
        torch.manual_seed(0)
        module = make().eval()
        path, graphs = export_module(module, folder / f"{task}.onnx", samples=2)
        session = ort.InferenceSession(str(path), session_options(), providers=provider_list(["CUDAExecutionProvider"]))
        x = graphs.inputs[0]
        feed = {session.get_inputs()[0].name: x.numpy()}
        got = session.run(None, feed)[0]
        with torch.no_grad():
            want = graphs.final.cuda()(x.cuda())
        want = (want[0] if isinstance(want, (tuple, list)) else want).float().cpu().numpy()
        single = {k: v[:1] for k, v in feed.items()}
        rows.append({"task": task, "provider": session.get_providers()[0], "max_abs_diff": float(np.abs(got - want).max()),
                     "latency_ms": round(median_ms(lambda: session.run(None, single), LATENCY_RUNS), 2)})
        if task == "microexp":  # attention as ONNX Runtime's MultiHeadAttention: meant to pay on a GPU
            fused, _ = export_module(module, folder / "microexp_fused.onnx", samples=1, attention="fused")
            fused_session = ort.InferenceSession(str(fused), session_options(), providers=provider_list(["CUDAExecutionProvider"]))
            rows[-1]["fused_attention_latency_ms"] = round(median_ms(lambda: fused_session.run(None, single), LATENCY_RUNS), 2)
        if "fused_attention_latency_ms" in rows[-1]:
            print(f"  microexp with fused attention (--attention fused): {rows[-1]['fused_attention_latency_ms']} ms", flush=True)
        note = (f" (target < {EMOTION_TARGET_MS} ms on an RTX 3060: "
                f"{'met' if rows[-1]['latency_ms'] < EMOTION_TARGET_MS else 'not met'} on this card)") if task == "emotion" else ""
        print(f"  {task}: ORT {rows[-1]['provider']} vs PyTorch max abs diff {rows[-1]['max_abs_diff']:.2e}, batch-1 "
              f"latency {rows[-1]['latency_ms']} ms{note}", flush=True)
    return rows


def emotion_batch(size: int = 224, batch: int = 16):
    import torch

    from emotion.data import EmotionDataModule

    data = EmotionDataModule(subjects=(4, 1, 1), per_subject=batch // 4, image_size=size, num_workers=0, batch_size=batch)
    data.setup("fit")
    items = [data.train_set[i] for i in range(batch)]
    return {"input": torch.stack([i["input"] for i in items]), "target": torch.tensor([i["target"] for i in items])}


def step_gradients(module, batch: dict, autocast: bool) -> tuple[float, dict]:
    import torch

    module.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = module.classification_loss(module(batch["input"].float().cuda() / 255), batch["target"].cuda())
    loss.backward()
    return float(loss), {n: p.grad.detach().float().clone() for n, p in module.named_parameters() if p.grad is not None}


def bf16_agreement(steps: int = 5) -> dict:
    import torch

    from emotion.module import EmotionModule

    batch = emotion_batch()
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        module = EmotionModule(["a", "b", "c", "d", "e", "f", "g"], augment=False).cuda().train()
        optimizer = torch.optim.SGD(module.parameters(), lr=0.01)
        trace = []
        for _ in range(steps):
            loss, _ = step_gradients(module, batch, precision == "bf16")
            optimizer.step()
            trace.append(loss)
        losses[precision] = trace
    worst = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(losses["fp32"], losses["bf16"]))
    print(f"  losses fp32 {[round(v, 4) for v in losses['fp32']]}, bf16 {[round(v, 4) for v in losses['bf16']]}: "
          f"largest relative difference {worst:.3f} ({'agree' if worst < 0.05 else 'DISAGREE'} within 5 %)", flush=True)
    return {**losses, "largest_relative_difference": worst, "agree": worst < 0.05}


def ddp_agreement() -> dict:
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        print(f"  {count} GPU: DDP needs two; skipped", flush=True)
        return {"gpus": count, "skipped": True}
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        from emotion.module import EmotionModule

        # eval mode: BatchNorm's running statistics, so that a shard and the whole batch are normalised alike
        reference = EmotionModule(["a", "b", "c", "d", "e", "f", "g"], augment=False).cuda().eval()
        batch = emotion_batch(batch=8 * count)
        loss, grads = step_gradients(reference, batch, False)
        torch.save({"state": reference.state_dict(), "batch": batch, "loss": loss, "grads": grads}, f"{folder}/ref.pt")
        mp.spawn(_ddp_rank, args=(count, folder), nprocs=count, join=True)
        result = json.loads(Path(folder, "ddp.json").read_text())
    print(f"  DDP on {count} GPUs: loss {result['loss']:.5f} vs one device {loss:.5f}, largest gradient difference "
          f"{result['grad_diff']:.2e} ({'agree' if result['agree'] else 'DISAGREE'})", flush=True)
    return {"gpus": count, **result}


def _ddp_rank(rank: int, world: int, folder: str) -> None:
    import torch
    import torch.distributed as dist

    from emotion.module import EmotionModule

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    saved = torch.load(f"{folder}/ref.pt", map_location=f"cuda:{rank}", weights_only=False)
    module = EmotionModule(["a", "b", "c", "d", "e", "f", "g"], augment=False).cuda()
    module.load_state_dict(saved["state"])
    model = torch.nn.parallel.DistributedDataParallel(module.eval(), device_ids=[rank])
    shard = {k: v.chunk(world)[rank] for k, v in saved["batch"].items()}
    loss = module.classification_loss(model(shard["input"].float().cuda() / 255), shard["target"].cuda())
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    if rank == 0:
        diff = max(float((p.grad - saved["grads"][n]).abs().max()) for n, p in module.named_parameters()
                   if p.grad is not None and n in saved["grads"])
        value = float(total) / world
        Path(folder, "ddp.json").write_text(json.dumps({"loss": value, "grad_diff": diff,
                                                        "agree": abs(value - saved["loss"]) < 1e-4 and diff < 1e-4}))
    dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write DIR/gpu_check.json (and keep the runs there)")
    parser.add_argument("--steps", type=int, default=40, help="training batches per model")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_check: PyTorch is not installed (pip install -e '.[train]')")
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here: nothing to check (run it on a GPU machine)")
        return 0
    device = torch.cuda.get_device_name(0)
    print(f"device: {device} ({torch.cuda.device_count()} visible), torch {torch.__version__}", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        report = {"device": device, "gpus": torch.cuda.device_count()}
        print("1. bf16-mixed training on synthetic data:", flush=True)
        report["training"] = training_rates(out, args.steps)
        print("2. DDP against one device:", flush=True)
        report["ddp"] = ddp_agreement()
        print("3. export and ONNX Runtime's CUDA provider:", flush=True)
        report["onnxruntime"] = ort_cuda(out)
        print("4. bf16-mixed against fp32:", flush=True)
        report["bf16"] = bf16_agreement()
        report["seconds"] = round(time.perf_counter() - start, 1)
        print(f"\n{'what':50s} {'samples/s':>10s} {'peak GiB':>9s}   ({device})")
        for row in report["training"]:
            print(f"{row['what']:50s} {row['samples_per_s']:10.1f} {row['peak_memory_gib']:9.2f}")
        for row in report["onnxruntime"]:
            print(f"ORT CUDA {row['task']:41s} {row['latency_ms']:7.2f} ms  max abs diff {row['max_abs_diff']:.1e}")
        print(f"done in {report['seconds']:.0f} s")
        if args.out:
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
