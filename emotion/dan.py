"""DAN, "Distract your Attention" (Wen et al., 2021), as a plain ``nn.Module`` with its two auxiliary losses.

Pipeline: ResNet-18 trunk -> [N, 512, 7, 7] feature map; several independent attention heads, each a spatial
attention (multi-shape convolutions summed over channels into one map) followed by a channel attention
(squeeze-excite on the pooled, spatially re-weighted features); the heads' 512-d outputs are log-softmaxed
across heads, summed, and classified by a linear layer followed by BatchNorm.

Training objective: cross-entropy + ``affinity_weight`` * affinity loss on the pooled trunk features (pull to
class centers, normalised by how spread out the centers are) + ``partition_weight`` * partition loss (reward
the heads for attending to different things: large variance across heads).
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.weights import LoadReport, load_pretrained
from emotion.backbones import ConvNormAct, ModuleKeyMap, ResNet18Trunk, resnet18_key_map, resnet18_module_pairs

FEATURE_DIM = 512


class SpatialAttention(nn.Module):
    """1x1 reduction, then 3x3 + 1x3 + 3x1 convolutions summed and ReLU'd; the channel sum is the attention map."""

    def __init__(self, channels: int = FEATURE_DIM, reduced: int = 256):
        super().__init__()
        self.reduce = ConvNormAct(channels, reduced, 1, bias=True)
        self.square = ConvNormAct(reduced, channels, 3, padding=1, bias=True)
        self.horizontal = ConvNormAct(reduced, channels, (1, 3), padding=(0, 1), bias=True)
        self.vertical = ConvNormAct(reduced, channels, (3, 1), padding=(1, 0), bias=True)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)
        y = self.act(self.square(y) + self.horizontal(y) + self.vertical(y))
        return x * y.sum(dim=1, keepdim=True)


class ChannelAttention(nn.Module):
    """Global average pool, then a 512-32-512 bottleneck gate; returns the gated 512-d vector."""

    def __init__(self, channels: int = FEATURE_DIM, hidden: int = 32):
        super().__init__()
        self.gate = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(channels, hidden),
                norm=nn.BatchNorm1d(hidden),
                act=nn.ReLU(inplace=True),
                fc2=nn.Linear(hidden, channels),
                sigmoid=nn.Sigmoid(),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        return pooled * self.gate(pooled)


class AttentionHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.spatial = SpatialAttention()
        self.channel = ChannelAttention()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(self.spatial(x))


class AffinityLoss(nn.Module):
    """Squared distance of each pooled feature to its class center, divided by the total variance of the centers.

    Minimising it makes classes compact (numerator) while pushing centers apart (denominator). The centers are
    learnable parameters and must be optimised together with the network. Soft targets (Mixup/CutMix, vote
    shares) weight the squared distance to every class's center by that class's share.
    """

    def __init__(self, num_classes: int, feat_dim: int = FEATURE_DIM):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if features.ndim == 4:
            features = features.mean(dim=(2, 3))
        features = features.float()
        if target.ndim == 2:
            shares = F.pad(target.float(), (0, len(self.centers) - target.shape[1]))
            intra = (shares * torch.cdist(features, self.centers.float()).pow(2)).sum(dim=1)
        else:
            intra = (features - self.centers[target]).pow(2).sum(dim=1)
        inter_spread = self.centers.var(dim=0).sum()
        return (intra / inter_spread).clamp(min=1e-12, max=1e12).mean()


# The official code's epsilon (Python's float epsilon): identical heads give a large finite loss, not inf.
PARTITION_EPS = sys.float_info.epsilon


class PartitionLoss(nn.Module):
    """log(1 + num_heads / variance across heads): small when the heads' outputs differ from each other."""

    def forward(self, head_outputs: torch.Tensor) -> torch.Tensor:
        num_heads = head_outputs.shape[1]
        if num_heads < 2:
            return head_outputs.new_zeros(())
        variance = head_outputs.var(dim=1).mean()
        return torch.log(1 + num_heads / (variance + PARTITION_EPS))


class DAN(nn.Module):
    """DAN facial-expression classifier for [N, 3, 224, 224] normalised faces.

    ``forward`` returns [N, C] logits in eval mode. In train mode it returns
    ``{"logits", "features" ([N, 512, 7, 7] trunk map), "head_outputs" ([N, heads, 512])}`` and
    ``extra_loss(output, target)`` gives the weighted affinity + partition terms (the official training uses
    weight 1 for both). The affinity-loss centers live in this module so an optimiser over
    ``model.parameters()`` trains them.

    Args:
        affinity_centers: rows of the affinity loss's centre table (default: one per class). The official RAF-DB
            script builds 8 centres for its 7 classes; the unused centre still widens the variance it divides by.
        backbone_weights: optional local path to a torchvision-layout ResNet-18 checkpoint such as the official
            ``resnet18_msceleb.pth``; loaded strictly at construction.
    """

    def __init__(
        self,
        num_classes: int = 7,
        num_heads: int = 4,
        *,
        affinity_weight: float = 1.0,
        partition_weight: float = 1.0,
        affinity_centers: int | None = None,
        backbone_weights: str | Path | None = None,
        allow_pickle: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.affinity_weight = affinity_weight
        self.partition_weight = partition_weight
        self.backbone = ResNet18Trunk()
        self.heads = nn.ModuleList([AttentionHead() for _ in range(num_heads)])
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)
        self.logit_norm = nn.BatchNorm1d(num_classes)
        if affinity_centers is not None and affinity_centers < num_classes:
            raise ValueError(f"affinity_centers ({affinity_centers}) must be at least num_classes ({num_classes})")
        self.affinity_loss = AffinityLoss(affinity_centers or num_classes, FEATURE_DIM)
        self.partition_loss = PartitionLoss()
        if backbone_weights is not None:
            self.load_backbone(backbone_weights, allow_pickle=allow_pickle)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        features = self.backbone(x)
        heads = torch.stack([head(features) for head in self.heads], dim=1)
        if self.num_heads > 1:
            # normalising across heads makes them compete: one head dominating a channel suppresses the others
            heads = F.log_softmax(heads, dim=1)
        logits = self.logit_norm(self.classifier(heads.sum(dim=1)))
        if not self.training:
            return logits
        return {"logits": logits, "features": features, "head_outputs": heads}

    def extra_loss(self, output: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        affinity = self.affinity_loss(output["features"], target)
        partition = self.partition_loss(output["head_outputs"])
        return self.affinity_weight * affinity + self.partition_weight * partition

    def load_backbone(self, path: str | Path, allow_pickle: bool = False) -> LoadReport:
        """Load a torchvision-layout ResNet-18 (e.g. ``resnet18_msceleb.pth``); its ``fc`` is discarded."""
        remap = resnet18_key_map().with_prefixes("", "backbone")
        return load_pretrained(self, path, remap, strict_prefixes=("backbone.",), allow_pickle=allow_pickle)

    def load_official_checkpoint(self, path: str | Path, allow_pickle: bool = False) -> LoadReport:
        """Load a whole official DAN checkpoint (``{"model_state_dict": ...}``); the affinity centers are not
        part of it and keep their current values."""
        own_prefixes = ("backbone.", "heads.", "classifier.", "logit_norm.")
        return load_pretrained(self, path, dan_key_map(self.num_heads), strict_prefixes=own_prefixes,
                               allow_pickle=allow_pickle)


def dan_module_pairs(num_heads: int = 4) -> list[tuple[str, str]]:
    """Official ``DAN`` module paths (torchvision children re-wrapped as ``features.N``) -> ours."""
    trunk = resnet18_module_pairs(stem=("features.0", "features.1"),
                                  stage_names=tuple(f"features.{i}" for i in range(4, 8)))
    pairs = list(ModuleKeyMap(trunk).with_prefixes("", "backbone").to_ours.items())
    spatial = (("conv1x1", "reduce"), ("conv_3x3", "square"), ("conv_1x3", "horizontal"), ("conv_3x1", "vertical"))
    for h in range(num_heads):
        official, ours = f"cat_head{h}", f"heads.{h}"
        for off_name, our_name in spatial:
            pairs += [(f"{official}.sa.{off_name}.0", f"{ours}.spatial.{our_name}.conv"),
                      (f"{official}.sa.{off_name}.1", f"{ours}.spatial.{our_name}.norm")]
        pairs += [(f"{official}.ca.attention.0", f"{ours}.channel.gate.fc1"),
                  (f"{official}.ca.attention.1", f"{ours}.channel.gate.norm"),
                  (f"{official}.ca.attention.3", f"{ours}.channel.gate.fc2")]
    pairs += [("fc", "classifier"), ("bn", "logit_norm")]
    return pairs


def dan_key_map(num_heads: int = 4) -> ModuleKeyMap:
    return ModuleKeyMap(dan_module_pairs(num_heads))
