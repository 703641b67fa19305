"""Optimisers and schedules from a few plain config values, shared by every task."""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from timm.optim import param_groups_weight_decay
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


NO_DECAY_SUFFIXES = ("pos_embed", "cls_token")

# A model's depth for layer-wise learning-rate decay: name -> (layer of that parameter, deepest layer)
LayerOf = Callable[[str], tuple[int, int]]


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                     layer_of: LayerOf | None = None) -> list[dict]:
    """timm's groups: no weight decay on norms, biases (every 1-d tensor) and embeddings; decayed ones first.
    With `layer_decay` < 1 each layer also gets its own learning-rate scale, decay^(deepest - layer), so the layers
    nearest the input move least (BEiT/VideoMAE fine-tuning); needs `layer_of`."""
    embeddings = [name for name, _ in model.named_parameters() if name.endswith(NO_DECAY_SUFFIXES)]
    if layer_decay == 1.0:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=embeddings)
        return sorted(groups, key=lambda group: group["weight_decay"] == 0)
    if layer_of is None:
        raise ValueError(f"--model.layer_decay {layer_decay}: {type(model).__name__} has no layers to decay over "
                         f"(a ViT such as VideoMAE has); leave it at 1.0")
    groups: dict[tuple[bool, int], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decayed = param.ndim > 1 and name not in embeddings
        layer, deepest = layer_of(name)
        group = groups.setdefault((not decayed, layer), {"params": [], "weight_decay": weight_decay if decayed else 0.0,
                                                         "lr_scale": layer_decay ** (deepest - layer)})
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def is_sam(name: str) -> bool:
    return name.startswith(SAM_PREFIX)


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, sam_rho: float = 0.05,
                    layer_decay: float = 1.0, layer_of: LayerOf | None = None) -> torch.optim.Optimizer:
    """`adamw | adam | sgd`, or `sam_<base>`: SAM (common/sam.py) with radius `sam_rho` around that base."""
    base = name[len(SAM_PREFIX):] if is_sam(name) else name
    if base not in BASE_OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of {OPTIMIZERS}")
    groups = parameter_groups(model, weight_decay, layer_decay, layer_of)
    for group in groups:
        group["lr"] = lr * group.pop("lr_scale", 1.0)
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
