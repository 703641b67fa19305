"""The micro-expression LightningModule: the shared classification step on clips [N, T, 3, H, W]."""
from __future__ import annotations

import json
from typing import Sequence

import torch

from common.module import ClassificationModule
from microexp.contract import CONTRACT
from microexp.model import FEATURE_ARCHS, VideoMAE, build, load_weights

# Clips change little frame to frame and micro-expressions are small: a crop and a flip, no colour jitter
# (which would differ in strength from what the face does), no erasing of the moving region.
CLIP_AUGMENTATION = {"resized_crop": {"scale": (0.85, 1.0), "ratio": (0.95, 1.05)}, "hflip": {}}


class MicroExpModule(ClassificationModule):
    """Micro-expression classifier.

    Args:
        arch: videomae_s, videomae_b (VideoMAE V2 + temporal adapters), videomae_tiny, or the toolkit's
            baselines: cnn_lstm (frames) and roi_transformer (7-region optical flow: `--data.inputs roi_flow`;
            a baseline to measure against, not exported).
        class_names, image_size, clip_length, preprocessing: linked from the data module.
        pretrained: a local VideoMAE V2 checkpoint (e.g. vit_s_k710_dl_from_giant.pth), or timm ResNet-18
            weights for cnn_lstm; read when a run starts from scratch, never when a checkpoint is restored.
        freeze_backbone: train adapters, norms and head only (VideoMAE).
        adapter_ratio, drop_path, head_dropout, grad_checkpointing: VideoMAE options (see microexp.model);
            `--model.layer_decay` (layer-wise lr decay) applies to VideoMAE's blocks.
        hidden_size, num_layers: the CNN+LSTM's LSTM (the toolkit's 128 and 2).
        dropout: the CNN+LSTM's dropout between LSTM layers (0.3) or the ROI-Transformer's (0.1); None: those.
        allow_pickle: read weight files that pickle more than tensors (trusted files only).

    The remaining arguments (augmentation, Mixup/CutMix, loss, optimiser) are `ClassificationModule`'s and
    `TaskModule`'s; clips get one augmentation parameter set for all their frames.
    """

    task = "microexp"
    contract = CONTRACT

    def __init__(self, class_names: Sequence[str], image_size: int = 224, clip_length: int = 16,
                 arch: str = "videomae_s", pretrained: str | None = None, freeze_backbone: bool = False,
                 adapter_ratio: float = 0.25, drop_path: float = 0.1, head_dropout: float = 0.0,
                 grad_checkpointing: bool = False, hidden_size: int = 128, num_layers: int = 2,
                 dropout: float | None = None, allow_pickle: bool = False, augment=CLIP_AUGMENTATION, **kwargs):
        super().__init__(class_names, image_size, augment=augment, **kwargs)
        self.save_hyperparameters()
        self.arch, self.clip_length = arch, clip_length
        chosen_dropout = {} if dropout is None else {"dropout": dropout}
        options = {"cnn_lstm": dict(hidden=hidden_size, layers=num_layers, **chosen_dropout),
                   "roi_transformer": chosen_dropout}.get(arch, dict(
                       adapter_ratio=adapter_ratio, freeze_backbone=freeze_backbone, drop_path=drop_path,
                       head_dropout=head_dropout, grad_checkpointing=grad_checkpointing))
        self.net = build(arch, len(class_names), clip_length, image_size, **options)
        self.reads_features = arch in FEATURE_ARCHS
        if self.reads_features:
            self.augmenter = self.mixer = None  # flow features are neither images nor mixable as pixels

    @property
    def arch_name(self) -> str:
        return self.arch

    @property
    def lr_layer_of(self):
        if not isinstance(self.net, VideoMAE):
            return None
        return lambda name: self.net.lr_layer(name.removeprefix("net."))

    def setup(self, stage: str) -> None:
        inputs = getattr(getattr(self.trainer, "datamodule", None), "inputs", None)
        wanted = "roi_flow" if self.reads_features else "clips"
        if inputs is not None and inputs != wanted:
            raise ValueError(f"--model.arch {self.arch} reads {wanted}, but --data.inputs is {inputs!r}; "
                             f"pass --data.inputs {wanted}")

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.reads_features else self.normalize(x)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.reads_features:
            return {**batch, "input": batch["input"].float()}
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def export_wrapper(self, activation: bool = True):
        if self.reads_features:
            raise ValueError(f"{self.arch} reads optical-flow features computed outside the network; it is a "
                             f"baseline to measure against and has no ONNX export")
        return super().export_wrapper(activation)

    def load_initial_weights(self) -> None:
        load_weights(self.net, self.arch, self.hparams.pretrained, self.hparams.allow_pickle)

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        from microexp.data import SyntheticMicroClips

        clips = SyntheticMicroClips(range(10_000, 10_000 + batch), 1, self.clip_length, self.image_size)
        return (torch.stack([clips[i]["input"] for i in range(batch)]).float() / 255,)

    def export_metadata(self) -> dict[str, str]:
        metadata = super().export_metadata()
        metadata.update({"arch": self.arch, "clip_length": str(self.clip_length),
                         "fps": json.dumps(self.preprocessing.get("fps", {})),
                         "clip_sampling": str(self.preprocessing.get("clip_sampling", ""))})
        return metadata
