"""Mixup/CutMix on the device (timm's implementation), made safe for the batches this project produces."""
from __future__ import annotations

import torch
from timm.data import Mixup


def make_mixer(mixup_alpha: float, cutmix_alpha: float, prob: float, label_smoothing: float, num_classes: int) -> Mixup | None:
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, label_smoothing=label_smoothing,
                 num_classes=num_classes)


def mix_batch(mixer: Mixup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix images (N,C,H,W) or clips (N,T,C,H,W); returns soft targets.

    timm pairs sample i with N-1-i, so the batch must be even. Clips fold time into channels first: CutMix
    would otherwise cut along the time axis instead of the image plane.
    """
    if x.shape[0] % 2:
        raise ValueError(f"Mixup/CutMix needs an even batch, got {x.shape[0]}: use an even batch_size (train loader drops the last batch)")
    if x.ndim == 5:
        n, t, c, h, w = x.shape
        mixed, target = _mix(mixer, x.reshape(n, t * c, h, w), y)
        return mixed.reshape(n, t, c, h, w), target
    return _mix(mixer, x, y)


def _mix(mixer: Mixup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm builds targets from class indices only; soft labels (FERPlus votes) are mixed with the same lambda."""
    if y.ndim == 1:
        return mixer(x, y)
    lam = mixer._mix_batch(x)  # mixes x in place, returns the weight of the unflipped batch
    return x, y * lam + y.flip(0) * (1 - lam)
