"""The emotion LightningModule: what is emotion's own on top of the shared classification step."""
from __future__ import annotations

from typing import Sequence

import torch

from common.module import ClassificationModule
from emotion.contract import CONTRACT
from emotion.model import WeightFiles, build, load_weights, refuse_weight_arguments, split_weight_arguments


class EmotionModule(ClassificationModule):
    """Macro-expression classifier.

    Args:
        arch: `posterpp`, `dan`, or any timm model name (e.g. resnet18, convnext_tiny).
        class_names: linked from the data module (shared label order).
        image_size: linked from the data module.
        pretrained: a local whole-model file: an official POSTER++ or DAN checkpoint, or timm weights for a timm
            arch (head replaced when the class count differs). Never downloaded.
        backbone_weights: DAN's ResNet-18 trunk (`resnet18_msceleb.pth`) or POSTER++'s IR-50 (`ir50.pth`).
        landmark_weights: POSTER++'s MobileFaceNet (`mobilefacenet_model_best.pth.tar`).
        allow_pickle: read weight files that pickle more than tensors (trusted files only).
        model_kwargs: other constructor arguments of the architecture (e.g. `{resize_mode: nearest}`); weight
            files are refused there (they belong in the options above).

    Weight files are read when a run starts from scratch, never when a checkpoint is restored. The remaining
    arguments (augmentation, Mixup/CutMix, loss, optimiser) are `ClassificationModule`'s and `TaskModule`'s.
    """

    task = "emotion"
    contract = CONTRACT

    def __init__(self, class_names: Sequence[str], image_size: int = 224, arch: str = "resnet18",
                 pretrained: str | None = None, backbone_weights: str | None = None,
                 landmark_weights: str | None = None, allow_pickle: bool = False,
                 model_kwargs: dict | None = None, **kwargs):
        super().__init__(class_names, image_size, **kwargs)
        self.save_hyperparameters()
        self.arch = arch
        architecture_kwargs = dict(model_kwargs or {})
        refuse_weight_arguments(arch, architecture_kwargs)
        self.weight_files = split_weight_arguments(
            arch, architecture_kwargs, WeightFiles(pretrained, backbone_weights, landmark_weights, allow_pickle))
        self.net = build(arch, len(class_names), **architecture_kwargs)

    @property
    def arch_name(self) -> str:
        return self.arch

    def load_initial_weights(self) -> None:
        load_weights(self.net, self.arch, self.weight_files)

    def extra_loss(self, output, target: torch.Tensor):
        if isinstance(output, dict) and hasattr(self.net, "extra_loss"):
            return self.net.extra_loss(output, target)
        return 0.0

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        from common.synth import emotion_sample

        faces = [emotion_sample(subject=10_000 + i, label=i % self.num_classes, seed=i, size=self.image_size)[0]
                 for i in range(batch)]
        images = torch.stack([torch.from_numpy(face).permute(2, 0, 1) for face in faces]).float() / 255
        return (images,)

    def export_metadata(self) -> dict[str, str]:
        return {**super().export_metadata(), "arch": self.arch}
