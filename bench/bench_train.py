"""Emotion training throughput on this machine, and Lightning's overhead over a plain PyTorch loop.

    python -m bench.bench_train [--batch 32 --size 224 --steps 8 --warmup 2 --arch resnet18]

Both loops run the same EmotionModule (augmentation, normalisation, forward, loss, backward, AdamW step)
over the same pre-rendered uint8 batches, in fp32, so the ratio isolates the framework's per-step cost.
"""
from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from common.optim import build_optimizer
from common.synth import emotion_sample
from emotion.data import EMOTION_CLASSES
from emotion.module import EmotionModule


class RenderedFaces(Dataset):
    """Faces rendered once, served as the batch dicts every task module reads."""

    def __init__(self, count: int, size: int):
        faces = [emotion_sample(subject=i % 24, label=i % 7, seed=i, size=size)[0] for i in range(count)]
        self.images = torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in faces])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"input": self.images[i], "target": i % 7}


def make_module(arch: str, size: int) -> EmotionModule:
    torch.manual_seed(0)
    return EmotionModule(list(EMOTION_CLASSES[:7]), image_size=size, arch=arch, scheduler="none")


def plain_loop(module: EmotionModule, loader: DataLoader, warmup: int) -> float:
    """Seconds per step after `warmup` steps, written the way one would without a framework."""
    cfg = module.optim_config
    optimizer = build_optimizer(module, cfg["optimizer"], cfg["lr"], cfg["weight_decay"])
    module.train()
    start = None
    for step, batch in enumerate(loader):
        if step == warmup:
            start = time.perf_counter()
        batch = module.on_after_batch_transfer(batch, 0)
        loss = module.classification_loss(module(batch["input"]), batch["target"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / (len(loader) - warmup)


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.end, self.steps = time.perf_counter(), batch_idx + 1 - self.warmup


def lightning_loop(module: EmotionModule, loader: DataLoader, warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    return (timer.end - timer.start) / timer.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--arch", default="resnet18")
    args = parser.parse_args()
    data = RenderedFaces(args.batch * (args.steps + args.warmup), args.size)
    loader = DataLoader(data, batch_size=args.batch, shuffle=False)
    plain = plain_loop(make_module(args.arch, args.size), loader, args.warmup)
    framework = lightning_loop(make_module(args.arch, args.size), loader, args.warmup)
    print(f"device: CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32, {args.arch}, "
          f"batch {args.batch}, {args.size}px")
    print(f"emotion training, plain PyTorch loop: {args.batch / plain:.1f} samples/s ({plain * 1000:.0f} ms/step)")
    print(f"emotion training, Lightning:          {args.batch / framework:.1f} samples/s ({framework * 1000:.0f} ms/step)")
    print(f"Lightning / plain step time: {framework / plain:.3f}x (goal <= 1.10x)")


if __name__ == "__main__":
    main()
