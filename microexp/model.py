"""Micro-expression architectures by name: VideoMAE V2 with temporal adapters, and the two baselines of the
toolkit this project replaces (CNN+LSTM on frames, ROI-Transformer on optical-flow features).

VideoMAE V2 (Wang et al., 2023) is a plain ViT over 2x16x16 tubelets (16 x 224 x 224 clips -> 8 x 14 x 14 tokens)
with fixed sine-cosine positions, q/v biases (no k bias), mean pooling and a LayerNorm before the head. The
OpenGVLab checkpoints load by `load_videomae_checkpoint` (fine-tuned and distilled files such as
`vit_s_k710_dl_from_giant.pth`, and pre-training files whose encoder keys start with `encoder.`). Every block
also gets a temporal adapter (a 0.25x bottleneck with a depth-wise convolution over time, k = 3, whose
up-projection starts at zero so the pretrained encoder's function is unchanged at initialisation); with
`freeze_backbone` only adapters, norms and the head train.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.weights import LoadReport, load_pretrained


@dataclass(frozen=True)
class VideoMAEConfig:
    dim: int
    depth: int
    heads: int
    patch: int = 16
    tubelet: int = 2


VIDEOMAE_CONFIGS = {
    "videomae_s": VideoMAEConfig(384, 12, 6),
    "videomae_b": VideoMAEConfig(768, 12, 12),
    "videomae_tiny": VideoMAEConfig(64, 2, 2),  # for tests and quick CPU runs
}


def sinusoid_positions(count: int, dim: int) -> torch.Tensor:
    """The fixed sine-cosine table of the official code: angle pos / 10000^(2*(j//2)/dim), sin on even j."""
    position = torch.arange(count, dtype=torch.float64)[:, None]
    rates = torch.pow(10000.0, 2 * (torch.arange(dim) // 2).double() / dim)
    angles = position / rates
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.float()[None]


class Attention(nn.Module):
    """Multi-head self-attention with the official key layout: `qkv.weight` without bias, `q_bias`, `v_bias`."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class TemporalAdapter(nn.Module):
    """x + up(dwconv_t(down(x))): mixes each token with the same spatial position in neighbouring tubelets."""

    def __init__(self, dim: int, ratio: float = 0.25, kernel: int = 3):
        super().__init__()
        hidden = max(1, round(dim * ratio))
        self.down = nn.Linear(dim, hidden)
        self.conv = nn.Conv3d(hidden, hidden, (kernel, 1, 1), padding=(kernel // 2, 0, 0), groups=hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        b, n, _ = x.shape
        t, h, w = grid
        y = self.down(x).reshape(b, t, h, w, -1).permute(0, 4, 1, 2, 3)
        y = self.conv(y).permute(0, 2, 3, 4, 1).reshape(b, n, -1)
        return x + self.up(y)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, drop_path: float = 0.0, adapter_ratio: float | None = 0.25):
        super().__init__()
        self.adapter = TemporalAdapter(dim, adapter_ratio) if adapter_ratio else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        if self.adapter is not None:
            x = self.adapter(x, grid)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VideoMAE(nn.Module):
    """VideoMAE V2 classifier: clips [N, T, 3, H, W] (normalised) -> logits [N, C].

    Args:
        arch: videomae_s (ViT-S, 21.9 M encoder parameters), videomae_b (ViT-B, 86.2 M) or videomae_tiny.
        clip_length, image_size: the input the position table is made for.
        adapter_ratio: temporal adapter bottleneck width relative to the model width; 0 or None for none.
        freeze_backbone: train adapters, norms and head only.
        drop_path, head_dropout: regularisation of fine-tuning (the official recipes use 0.1 and 0.5 / 0.0).
        grad_checkpointing: recompute each block in the backward pass (ViT-B fits a 24 GB card at batch 8).
    """

    def __init__(self, num_classes: int, arch: str = "videomae_s", clip_length: int = 16, image_size: int = 224,
                 adapter_ratio: float | None = 0.25, freeze_backbone: bool = False, drop_path: float = 0.1,
                 head_dropout: float = 0.0, grad_checkpointing: bool = False):
        super().__init__()
        if arch not in VIDEOMAE_CONFIGS:
            raise ValueError(f"unknown VideoMAE arch {arch!r}; choose from {sorted(VIDEOMAE_CONFIGS)}")
        cfg = self.config = VIDEOMAE_CONFIGS[arch]
        if clip_length % cfg.tubelet or image_size % cfg.patch:
            raise ValueError(f"{arch} needs clip_length divisible by {cfg.tubelet} and image_size by {cfg.patch}, "
                             f"got {clip_length} and {image_size}")
        self.num_classes = num_classes
        self.grid = (clip_length // cfg.tubelet, image_size // cfg.patch, image_size // cfg.patch)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, cfg.dim, (cfg.tubelet, cfg.patch, cfg.patch),
                                          stride=(cfg.tubelet, cfg.patch, cfg.patch))
        self.register_buffer("pos_embed", sinusoid_positions(math.prod(self.grid), cfg.dim), persistent=False)
        rates = torch.linspace(0, drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, r, adapter_ratio) for r in rates])
        self.fc_norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(cfg.dim, num_classes)
        self.grad_checkpointing = grad_checkpointing
        self._init_weights()
        if freeze_backbone:
            self.freeze_backbone()

    def _init_weights(self) -> None:
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.endswith("adapter.up"):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def trainable_when_frozen(self, name: str) -> bool:
        return ".adapter." in name or "norm" in name or name.startswith("head.")

    def freeze_backbone(self) -> None:
        for name, param in self.named_parameters():
            param.requires_grad_(self.trainable_when_frozen(name))

    def lr_layer(self, name: str) -> tuple[int, int]:
        """(layer, deepest) for layer-wise lr decay: the patch embedding is layer 0, block i is i + 1, the final
        norm and head are depth + 1."""
        deepest = self.config.depth + 1
        if name.startswith("patch_embed."):
            return 0, deepest
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1, deepest
        return deepest, deepest

    def encoder_parameters(self) -> int:
        """Parameters of the VideoMAE encoder itself (what the paper counts): no adapters, no head."""
        return sum(p.numel() for n, p in self.named_parameters() if ".adapter." not in n and not n.startswith("head."))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(clips.transpose(1, 2)).flatten(2).transpose(1, 2)
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, self.grid, use_reentrant=False)
            else:
                x = block(x, self.grid)
        return self.head(self.head_dropout(self.fc_norm(x.mean(1))))


def videomae_key(key: str) -> str | None:
    """An official checkpoint key -> ours; None drops it (the pre-training decoder and mask token, the position
    table we compute)."""
    key = key.removeprefix("encoder.")
    if key.startswith(("decoder.", "encoder_to_decoder.", "mask_token", "pos_embed")):
        return None
    if key.startswith("norm."):  # pre-training checkpoints: the encoder's final norm is our fc_norm
        return "fc_norm." + key[len("norm."):]
    return key


def load_videomae_checkpoint(model: VideoMAE, path: str | Path, allow_pickle: bool = False) -> LoadReport:
    """Load an OpenGVLab VideoMAE V2 checkpoint: the encoder, and the classifier head where its shape fits the
    model's classes (a fine-tuned checkpoint then gives its own logits; a Kinetics-710 head is dropped with a
    notice). Adapters keep their initialisation. A missing or mismatched encoder tensor stops with a message
    naming the keys."""
    encoder = tuple(n for n in model.state_dict() if ".adapter." not in n and not n.startswith("head."))
    return load_pretrained(model, path, videomae_key, strict_prefixes=encoder, strip_prefixes=("module.", "model."),
                           allow_pickle=allow_pickle, fit_or_drop=("head.",))


class CNNLSTM(nn.Module):
    """The toolkit's baseline: per-frame ResNet-18 features (timm), a 2-layer LSTM (hidden 128), a linear head."""

    def __init__(self, num_classes: int, backbone: str = "resnet18", hidden: int = 128, layers: int = 2,
                 dropout: float = 0.3):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0)
        self.lstm = nn.LSTM(self.backbone.num_features, hidden, layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)  # torch applies it between layers only
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        features = self.backbone(clips.flatten(0, 1)).reshape(b, t, -1)
        output, _ = self.lstm(features)
        return self.head(output[:, -1])


class ROITransformer(nn.Module):
    """The toolkit's ROI-Transformer on 7-region optical flow: [N, T, 14] -> a linear projection to 64, a class
    token and learned positions, three pre-LN Transformer layers (4 heads), the class token through an MLP head.
    The features are standardised first (BatchNorm over the 14 channels): flow of a micro-expression is a
    fraction of a pixel, far below the scale of the learned positions it is added to."""

    def __init__(self, num_classes: int, features: int = 14, length: int = 16, dim: int = 64, depth: int = 3,
                 heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.standardise = nn.BatchNorm1d(features)
        self.project = nn.Linear(features, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, length + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, num_classes))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.project(self.standardise(features.transpose(1, 2)).transpose(1, 2))
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed[:, : x.shape[1] + 1]
        return self.head(self.norm(self.encoder(x))[:, 0])


ARCHS = (*VIDEOMAE_CONFIGS, "cnn_lstm", "roi_transformer")
FEATURE_ARCHS = ("roi_transformer",)  # networks that read optical-flow features, not clips


def build(arch: str, num_classes: int, clip_length: int = 16, image_size: int = 224, **kwargs) -> nn.Module:
    """The architecture with random weights; reads no file."""
    if arch in VIDEOMAE_CONFIGS:
        return VideoMAE(num_classes, arch, clip_length, image_size, **kwargs)
    if arch == "cnn_lstm":
        return CNNLSTM(num_classes, **kwargs)
    if arch == "roi_transformer":
        return ROITransformer(num_classes, length=clip_length, **kwargs)
    raise ValueError(f"--model.arch {arch!r} is not a micro-expression architecture: use one of {list(ARCHS)}")


def load_weights(model: nn.Module, arch: str, path: str | None, allow_pickle: bool = False) -> None:
    """A local pretrained file: a VideoMAE V2 checkpoint, or timm weights for the CNN+LSTM's ResNet-18."""
    if not path:
        return
    if arch in FEATURE_ARCHS:
        raise ValueError(f"--model.pretrained: {arch} has no pretrained weights; it trains from scratch")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--model.pretrained: weights file not found: {path} (to start from random "
                                f"weights instead, pass --model.pretrained null)")
    if arch in VIDEOMAE_CONFIGS:
        load_videomae_checkpoint(model, path, allow_pickle)
    else:
        loaded = timm.create_model(model.backbone.default_cfg["architecture"], pretrained=True, num_classes=0,
                                   pretrained_cfg_overlay={"file": path})
        model.backbone.load_state_dict(loaded.state_dict())
