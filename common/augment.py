"""The one device-side input path of every task: uint8 -> float, augmentation, normalisation.

Batches travel to the device as uint8 channels-first (images [B, C, H, W], clips [B, T, C, H, W]: a quarter of
the bytes of float32); there they become float in [0, 1], are augmented with kornia, and `Normalize` (which
lives inside exported graphs too) turns them into network input. A clip is augmented as a whole, with one set
of random parameters for all its frames: a crop, flip or colour change that differed from frame to frame would
add motion that is not in the face, and micro-expressions are that small.

Augmentation is configured as a mapping from operation to kornia arguments (see `AUGMENTATIONS`), e.g.
`{hflip: {}, erasing: {scale: [0.02, 0.1]}}`; `true` is `DEFAULT_AUGMENTATION`, `false` none.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import kornia.augmentation as K
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

AugmentSpec = bool | Mapping[str, Mapping[str, Any] | None] | None

# Applied in this order whatever the order of the config: geometric ops come before erasing, so the erased box
# stays a box.
AUGMENTATIONS: dict[str, type] = {
    "crop": K.RandomCrop,
    "resized_crop": K.RandomResizedCrop,
    "affine": K.RandomAffine,
    "hflip": K.RandomHorizontalFlip,
    "color_jitter": K.ColorJitter,
    "grayscale": K.RandomGrayscale,
    "erasing": K.RandomErasing,
}
DEFAULT_AUGMENTATION: dict[str, dict[str, Any]] = {
    "resized_crop": {"scale": (0.75, 1.0), "ratio": (0.9, 1.1)},
    "hflip": {},
    "color_jitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.02, "p": 0.8},
    "erasing": {"scale": (0.02, 0.15), "p": 0.25},
}


class Normalize(nn.Module):
    """Float RGB in [0, 1] -> the network's normalised input, on any [..., C, H, W] layout (ImageNet constants
    from timm by default)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [B, (T,) C, H, W] -> float in [0, 1]; a float batch passes through."""
    if batch.dim() not in (4, 5):
        raise ValueError(f"expected a batch [B, C, H, W] or [B, T, C, H, W], got shape {tuple(batch.shape)}")
    return batch.float().div_(255) if batch.dtype == torch.uint8 else batch.float()


class DeviceAugment(nn.Module):
    """The operations of a spec, applied to images [B, C, H, W] or clips [B, T, C, H, W] (one parameter set per
    clip); output side `size`."""

    def __init__(self, size: int, spec: Mapping[str, Mapping[str, Any] | None]):
        super().__init__()
        unknown = sorted(set(spec) - set(AUGMENTATIONS))
        if unknown:
            raise ValueError(f"augment: unknown operation(s) {unknown}; choose from {list(AUGMENTATIONS)}")
        ops = [_operation(name, size, dict(spec[name] or {})) for name in AUGMENTATIONS if name in spec]
        self.images = K.AugmentationSequential(*ops)
        self.clips = K.VideoSequential(*ops, data_format="BTCHW", same_on_frame=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return self.images(x)
        if x.dim() == 5:
            return self.clips(x)
        raise ValueError(f"augmentation expects [B, C, H, W] or [B, T, C, H, W], got {tuple(x.shape)}")


def build_augmentation(size: int, spec: AugmentSpec = True) -> DeviceAugment | None:
    """The augmentation described by `spec`, or None for none."""
    if spec is True:
        spec = DEFAULT_AUGMENTATION
    return DeviceAugment(size, spec) if spec else None


def _operation(name: str, size: int, kwargs: dict[str, Any]) -> nn.Module:
    kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in kwargs.items()}
    if name == "resized_crop":
        return K.RandomResizedCrop((size, size), **kwargs)
    if name == "crop":  # a fixed-size crop at a random place (ME-GraphAU's 224 from 256)
        side = kwargs.pop("size", size)
        return K.RandomCrop((side, side), **kwargs)
    if name == "affine":
        kwargs.setdefault("degrees", 0.0)
    return AUGMENTATIONS[name](**kwargs)
