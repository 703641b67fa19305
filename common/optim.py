"""Optimisers and schedules from a few plain config values, shared by every task."""
from __future__ import annotations

import math

import torch
from torch import nn

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "exponential", "none")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases and embeddings: decaying them only hurts (standard timm practice)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith((".bias", "pos_embed", "cls_token")) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = parameter_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer {name!r} is not one of {OPTIMIZERS}")


def build_scheduler(optimizer, name: str, total_steps: int, steps_per_epoch: int, warmup_epochs: float,
                    gamma: float, min_lr_ratio: float) -> dict | None:
    """A per-step LambdaLR: linear warm-up, then cosine to `min_lr_ratio` or exponential decay by `gamma` per epoch."""
    if name == "none" and warmup_epochs == 0:
        return None
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is not one of {SCHEDULERS}")
    warmup = int(warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if name == "exponential":
            return gamma ** ((step - warmup) // max(1, steps_per_epoch))
        return 1.0

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
