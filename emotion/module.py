"""The emotion LightningModule: device-side augmentation, Mixup/CutMix, cross-entropy, export wrapper."""
from __future__ import annotations

import json
from typing import Any, Sequence

import kornia.augmentation as K
import torch
from torch import nn

from common.mixing import make_mixer, mix_batch
from common.module import ClassificationModule, Normalize
from emotion.model import create_model


class EmotionModule(ClassificationModule):
    """Macro-expression classifier.

    Args:
        arch: `posterpp`, `dan`, or any timm model name (e.g. resnet18, convnext_tiny).
        class_names: linked from the data module (shared label order).
        image_size: linked from the data module.
        pretrained: local weights file for the backbone (never downloaded).
        model_kwargs: extra constructor arguments of the architecture.
        augment: kornia augmentation on the device. `true`: the default recipe (random resized crop, flip, colour
            jitter, erasing); `false`: none; or a mapping from operation to its arguments, e.g.
            `{hflip: {}, erasing: {scale: [0.02, 0.1]}}`, to reproduce a paper's pipeline (see `AUGMENTATIONS`).
        mixup_alpha, cutmix_alpha, mix_prob: timm Mixup/CutMix (0 disables).
    """

    task = "emotion"

    def __init__(self, class_names: Sequence[str], image_size: int = 224, arch: str = "resnet18",
                 pretrained: str | None = None, model_kwargs: dict | None = None,
                 augment: bool | dict[str, dict[str, Any]] = True,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, mix_prob: float = 1.0, **kwargs):
        super().__init__(class_names, **kwargs)
        self.save_hyperparameters()
        self.arch = arch
        self.image_size = image_size
        self.net = create_model(arch, len(class_names), pretrained, **(model_kwargs or {}))
        self.normalize = Normalize()
        self.augmenter = image_augmentation(image_size, augment)
        self.mixer = make_mixer(mixup_alpha, cutmix_alpha, mix_prob, self.label_smoothing, self.num_classes)

    @property
    def arch_name(self) -> str:
        return self.arch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Float RGB in [0, 1] -> logits."""
        out = self.net(self.normalize(images))
        return out["logits"] if isinstance(out, dict) else out

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """uint8 images arrive on the device; scaling, augmentation and mixing happen there, once per batch (so
        SAM's two passes see the same samples), not in loader workers."""
        images, *rest = batch
        images = images.float().div_(255)
        if self.training and self.augmenter is not None:
            images = self.augmenter(images)
        if self.training and self.mixer is not None:
            images, rest[0] = mix_batch(self.mixer, images, rest[0])
        return (images, *rest)

    def compute_loss(self, batch) -> torch.Tensor:
        images, target = batch[0], batch[1]
        out = self.net(self.normalize(images))
        logits = out["logits"] if isinstance(out, dict) else out
        loss = self.classification_loss(logits, target)
        if isinstance(out, dict) and hasattr(self.net, "extra_loss"):
            loss = loss + self.net.extra_loss(out, target)
        return loss

    def validation_step(self, batch, batch_idx: int):
        self._evaluate("val", batch)

    def test_step(self, batch, batch_idx: int):
        self._evaluate("test", batch)

    def predict_step(self, batch, batch_idx: int):
        return self(batch[0]).softmax(-1)

    def _evaluate(self, stage: str, batch) -> None:
        images, target = batch[0], batch[1]
        logits = self(images)
        self.log(f"{stage}/loss", self.classification_loss(logits, target), sync_dist=True)
        self.update_metrics(stage, logits, target)

    # --- export hook ---
    def export_wrapper(self) -> nn.Module:
        return nn.Sequential(self.normalize, _Logits(self.net), nn.Softmax(dim=-1)).eval()

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        from common.synth import emotion_sample

        faces = [emotion_sample(subject=10_000 + i, label=i % self.num_classes, seed=i, size=self.image_size)[0]
                 for i in range(batch)]
        images = torch.stack([torch.from_numpy(face).permute(2, 0, 1) for face in faces]).float() / 255
        return (images,)

    def export_metadata(self) -> dict[str, str]:
        return {**super().export_metadata(), "classes": json.dumps(self.class_names),
                "input_size": json.dumps([self.image_size, self.image_size]), "arch": self.arch}


class _Logits(nn.Module):
    """Some architectures return a dict in training mode; the exported graph wants the logits tensor."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out["logits"] if isinstance(out, dict) else out


# name -> (kornia class, arguments that make the size-independent part of it); applied in this order whatever
# the order of the config, since geometric ops must come before erasing for the erased box to stay a box
AUGMENTATIONS: dict[str, type] = {
    "resized_crop": K.RandomResizedCrop,
    "affine": K.RandomAffine,
    "hflip": K.RandomHorizontalFlip,
    "color_jitter": K.ColorJitter,
    "erasing": K.RandomErasing,
}
DEFAULT_AUGMENTATION: dict[str, dict[str, Any]] = {
    "resized_crop": {"scale": (0.75, 1.0), "ratio": (0.9, 1.1)},
    "hflip": {},
    "color_jitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.02, "p": 0.8},
    "erasing": {"scale": (0.02, 0.15), "p": 0.25},
}


def image_augmentation(size: int, spec: bool | dict[str, dict[str, Any]] | None = True) -> nn.Module | None:
    """The device-side augmentation described by `spec` (see EmotionModule's `augment`), or None for none."""
    if spec is True:
        spec = DEFAULT_AUGMENTATION
    if not spec:
        return None
    unknown = sorted(set(spec) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"--model.augment: unknown operation(s) {unknown}; choose from {list(AUGMENTATIONS)}")
    ops = [_augmentation_op(name, size, dict(spec[name] or {})) for name in AUGMENTATIONS if name in spec]
    return K.AugmentationSequential(*ops)


def _augmentation_op(name: str, size: int, kwargs: dict[str, Any]) -> nn.Module:
    kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in kwargs.items()}
    if name == "resized_crop":
        return K.RandomResizedCrop((size, size), **kwargs)
    if name == "affine":
        kwargs.setdefault("degrees", 0.0)
    return AUGMENTATIONS[name](**kwargs)
