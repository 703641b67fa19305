"""The learned spotter: a temporal convolution network over per-frame motion features.

features [N, T, D] -> standardise (training statistics, inside the graph) -> per-frame linear embedding ->
residual blocks of (dilated depthwise-separable 3-tap convolution, per-frame LayerNorm, GELU, 1x1 convolution)
with dilations 1, 2, 4, ... -> a 1x1 head with one sigmoid score per SCORE_NAMES channel -> [N, T, 6].

Everything is either per frame or a convolution over time with zero padding, so the output at frame t depends
on frames t - R .. t + R only (R = `receptive_radius`): a long video can be scored in one pass or in windows with
R frames of context and the results agree, and T is free in the exported graph.
"""
from __future__ import annotations

import torch
from torch import nn

from spotting.postprocess import SCORE_NAMES


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of [N, C, T], frame by frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class TemporalBlock(nn.Module):
    def __init__(self, width: int, dilation: int, dropout: float):
        super().__init__()
        self.temporal = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation, groups=width)
        self.norm = ChannelNorm(width)
        self.mix = nn.Sequential(nn.Conv1d(width, 2 * width, 1), nn.GELU(), nn.Dropout(dropout),
                                 nn.Conv1d(2 * width, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(self.norm(self.temporal(x)))


class TemporalSpotter(nn.Module):
    """Args: in_dim: feature size D. width: channels. depth: blocks (dilations 1, 2, 4, ... up to `max_dilation`,
    then again from 1).
    dropout: inside the blocks."""

    def __init__(self, in_dim: int, width: int = 64, depth: int = 8, max_dilation: int = 32, dropout: float = 0.1):
        super().__init__()
        self.dilations = [2 ** (i % max_dilation.bit_length()) for i in range(depth)]
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.embed = nn.Conv1d(in_dim, width, 1)
        self.blocks = nn.Sequential(*(TemporalBlock(width, d, dropout) for d in self.dilations))
        self.norm = ChannelNorm(width)
        self.head = nn.Conv1d(width, len(SCORE_NAMES), 1)

    @property
    def receptive_radius(self) -> int:
        return sum(self.dilations)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp(min=1e-6))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[N, T, D] -> [N, T, 6] before the sigmoid."""
        x = ((features - self.feature_mean) / self.feature_std).transpose(1, 2)
        x = self.blocks(self.embed(x))
        return self.head(self.norm(x)).transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))
