"""GPU-side augmentation (kornia): one set of random parameters for every frame of a clip.

Batches travel to the device as uint8 (a quarter of the bytes of float32); `to_float` and `normalize` turn
them into model input there. A clip is augmented as a whole: a crop, flip or colour change that differed from
frame to frame would add motion that is not in the face, and micro-expressions are that small.

    augment = ClipAugment(size=224)
    x = normalize(augment(to_float(batch)))     # batch uint8 [B, T, H, W, 3] or [B, H, W, 3]
"""
from __future__ import annotations

from typing import Sequence

import kornia.augmentation as K
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 channels-last [B, (T,) H, W, C] -> float [B, (T,) C, H, W] in [0, 1]."""
    if batch.dim() not in (4, 5):
        raise ValueError(f"expected a batch [B, H, W, C] or [B, T, H, W, C], got shape {tuple(batch.shape)}")
    x = batch.movedim(-1, -3)
    return x.float().div_(255) if batch.dtype == torch.uint8 else x.float()


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Per-channel normalisation of [B, C, H, W] or [B, T, C, H, W]."""
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - mean_t) / std_t


class ClipAugment(nn.Module):
    """Random resized crop, flip, small affine, colour jitter, grayscale, erasing; each is off at 0.

    Input float [B, T, C, H, W] (clips) or [B, C, H, W] (images); output the same shape with H = W = size.
    Parameters are drawn per clip and shared by its frames. hue is off by default: on CPU it costs more than
    all the rest together, and lab-recorded faces vary little in hue.
    """

    def __init__(self, size: int, crop_scale: tuple[float, float] | None = (0.8, 1.0), flip: float = 0.5,
                 rotate: float = 10.0, translate: float = 0.05, color: float = 0.2, hue: float = 0.0,
                 gray: float = 0.0, erase: float = 0.0):
        super().__init__()
        self.size = size
        ops = augment_ops(size, crop_scale, flip, rotate, translate, color, hue, gray, erase)
        self.pipeline = K.VideoSequential(*ops, data_format="BTCHW", same_on_frame=True) if ops else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pipeline is None:
            return x
        if x.dim() == 4:
            return self.pipeline(x.unsqueeze(1)).squeeze(1)
        if x.dim() != 5:
            raise ValueError(f"ClipAugment expects [B, C, H, W] or [B, T, C, H, W], got {tuple(x.shape)}")
        return self.pipeline(x)


def augment_ops(size, crop_scale, flip, rotate, translate, color, hue, gray, erase) -> list[nn.Module]:
    ops: list[nn.Module] = []
    if crop_scale is not None:
        ops.append(K.RandomResizedCrop((size, size), scale=tuple(crop_scale), ratio=(0.9, 1.1)))
    if flip > 0:
        ops.append(K.RandomHorizontalFlip(p=flip))
    if rotate > 0 or translate > 0:
        ops.append(K.RandomAffine(degrees=rotate, translate=(translate, translate), p=0.5))
    if color > 0 or hue > 0:
        ops.append(K.ColorJitter(brightness=color, contrast=color, saturation=color, hue=hue, p=0.8))
    if gray > 0:
        ops.append(K.RandomGrayscale(p=gray))
    if erase > 0:
        ops.append(K.RandomErasing(p=erase, scale=(0.02, 0.2)))
    return ops
