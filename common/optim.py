"""Optimisers and schedules from a few plain config values, shared by every task."""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from common.sam import SAM

BASE_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": partial(torch.optim.SGD, momentum=0.9, nesterov=True),
}
SAM_PREFIX = "sam_"
OPTIMIZERS = (*BASE_OPTIMIZERS, *(SAM_PREFIX + name for name in BASE_OPTIMIZERS))
SCHEDULERS = ("cosine", "exponential", "step", "none")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases and embeddings: decaying them only hurts (standard timm practice)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith((".bias", "pos_embed", "cls_token")) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def is_sam(name: str) -> bool:
    return name.startswith(SAM_PREFIX)


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    sam_rho: float = 0.05) -> torch.optim.Optimizer:
    """`adamw | adam | sgd`, or `sam_<base>`: SAM (common/sam.py) with radius `sam_rho` around that base."""
    base = name[len(SAM_PREFIX):] if is_sam(name) else name
    if base not in BASE_OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of {OPTIMIZERS}")
    groups = parameter_groups(model, weight_decay)
    if is_sam(name):
        return SAM(groups, BASE_OPTIMIZERS[base], rho=sam_rho, lr=lr)
    return BASE_OPTIMIZERS[base](groups, lr=lr)


def build_scheduler(optimizer, name: str, total_steps: int, steps_per_epoch: int, warmup_epochs: float,
                    gamma: float, min_lr_ratio: float, step_epochs: int = 1) -> dict | None:
    """A per-step LambdaLR: linear warm-up, then cosine to `min_lr_ratio`, or decay by `gamma` every epoch
    (`exponential`, torch's ExponentialLR) or every `step_epochs` epochs (`step`, torch's StepLR)."""
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
        if name in ("exponential", "step"):
            period = steps_per_epoch * (step_epochs if name == "step" else 1)
            return gamma ** ((step - warmup) // max(1, period))
        return 1.0

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
