"""ME-GraphAU (Luo et al., "Learning Multi-dimensional Edge Feature-based AU Relation Graph for Facial Action
Unit Recognition", IJCAI 2022) as plain `nn.Module`s, with the official module names, so official checkpoints load
key for key.

    backbone (timm, by name) -> tokens [B, L, D] -> global_linear (D -> D/4 for CNNs, D/2 for transformers)
    -> one AU-specific feature generator per AU (AFG) -> node features [B, N, C] (mean over tokens)
    stage 1 (ANFL): a graph over each node's top-K most similar nodes, one GCN update
    stage 2 (MEFL): multi-dimensional edge features from cross-attention between AU pairs (GEM: FAM then ARM),
             a gated GCN over nodes and edges (two layers), and a 4-state co-occurrence classifier per edge
    occurrence: cosine similarity between each (non-negative) node feature and a learned vector of its AU, in
             [0, 1], used directly as the probability (the official loss takes it as such)
    intensity (this project's addition): a linear read-out of each node feature, 5 * sigmoid, 0-5 per AU

The official code counts 28.25 M parameters for the stage-1 model and 31.67 M for the stage-2 model with a
ResNet-50 and 12 AUs (the intensity read-out adds N * (C + 1)).
"""
from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import nn

METRICS = ("dots", "cosine", "l1")


class LinearBlock(nn.Module):
    """Linear -> BatchNorm over the features -> ReLU, applied to every token of [B, L, C]."""

    def __init__(self, in_features: int, out_features: int | None = None, drop: float = 0.0):
        super().__init__()
        out_features = out_features or in_features
        self.fc = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop)
        nn.init.normal_(self.fc.weight, 0, math.sqrt(2.0 / out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(self.drop(x)).transpose(1, 2)
        return self.relu(self.bn(x)).transpose(1, 2)


class NodeGraph(nn.Module):
    """Stage 1 (FGG): each node connects to its K most similar nodes; x + BN(V(x) aggregated + U(x)), ReLU."""

    def __init__(self, channels: int, nodes: int, neighbours: int = 4, metric: str = "dots"):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"graph metric must be one of {METRICS}, got {metric!r}")
        self.neighbours, self.metric = min(neighbours, nodes), metric
        self.U = nn.Linear(channels, channels)
        self.V = nn.Linear(channels, channels)
        self.bnv = nn.BatchNorm1d(nodes)
        for layer in (self.U, self.V):
            nn.init.normal_(layer.weight, 0, math.sqrt(2.0 / channels))

    def adjacency(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, N] 0/1: row i marks the K nodes most similar to node i (itself included), as the official code."""
        x = x.detach()
        if self.metric == "l1":
            distance = (x[:, :, None] - x[:, None]).abs().sum(-1)
            threshold = distance.topk(self.neighbours, dim=-1, largest=False)[0][..., -1:]
            return (distance <= threshold).float()
        if self.metric == "cosine":
            x = F.normalize(x, dim=-1)
        similarity = x @ x.transpose(1, 2)
        threshold = similarity.topk(self.neighbours, dim=-1)[0][..., -1:]
        return (similarity >= threshold).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adjacency = self.adjacency(x)
        scale = adjacency.sum(-1).pow(-0.5)  # D^-1/2 A D^-1/2
        normalised = scale[..., None] * adjacency * scale[:, None, :]
        return F.relu(x + self.bnv(normalised @ self.V(x) + self.U(x)))


def edge_matrices(nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) [N*N, N]: edge i*N + j runs from node j (start) to node i (end), the official ordering."""
    end = torch.zeros(nodes * nodes, nodes)
    for i in range(nodes):
        end[i * nodes:(i + 1) * nodes, i] = 1
    start = torch.eye(nodes).repeat(nodes, 1)
    return start, end


class GatedGraph(nn.Module):
    """Stage 2: two residual gated-GCN layers over node and multi-dimensional edge features (Bresson & Laurent);
    edge gates are softmaxed over each node's incoming edges."""

    def __init__(self, channels: int, nodes: int):
        super().__init__()
        self.nodes = nodes
        for layer in (1, 2):
            for name in "UVABE":
                linear = nn.Linear(channels, channels, bias=False)
                nn.init.normal_(linear.weight, 0, math.sqrt(2.0 / channels))
                self.add_module(f"{name}{layer}", linear)
            self.add_module(f"bnv{layer}", nn.BatchNorm1d(nodes))
            self.add_module(f"bne{layer}", nn.BatchNorm1d(nodes * nodes))
        start, end = edge_matrices(nodes)
        # index matrices as buffers: they move with the model and export as constants
        self.register_buffer("start", start, persistent=False)
        self.register_buffer("end", end, persistent=False)

    def layer(self, x: torch.Tensor, edge: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        U, V, A, B, E = (getattr(self, f"{name}{k}") for name in "UVABE")
        bnv, bne = getattr(self, f"bnv{k}"), getattr(self, f"bne{k}")
        edge = edge + F.relu(bne(self.end @ A(x) + self.start @ B(x) + E(edge)))
        gate = torch.sigmoid(edge)
        gate = gate.unflatten(1, (self.nodes, self.nodes)).softmax(dim=2).flatten(1, 2)
        messages = self.end.t() @ (gate * (self.start @ V(x))) / self.nodes
        return F.relu(x + bnv(U(x) + messages)), edge

    def forward(self, x: torch.Tensor, edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, edge = self.layer(x, edge, 1)
        return self.layer(x, edge, 2)


class CrossAttn(nn.Module):
    """Queries from one feature set, keys and values from another (GEM's FAM and ARM)."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear_q = nn.Linear(channels, channels // 2)
        self.linear_k = nn.Linear(channels, channels // 2)
        self.linear_v = nn.Linear(channels, channels)
        self.scale = (channels // 2) ** -0.5
        for layer, fan in ((self.linear_q, channels // 2), (self.linear_k, channels // 2), (self.linear_v, channels)):
            nn.init.normal_(layer.weight, 0, math.sqrt(2.0 / fan))

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        attention = (self.linear_q(queries) @ self.linear_k(context).transpose(-2, -1)) * self.scale
        return attention.softmax(-1) @ self.linear_v(context)


class GEM(nn.Module):
    """Graph edge modelling: each AU's feature map attends to the global map (FAM), then every ordered AU pair
    attends (ARM); the result, projected and normalised, is the pair's multi-dimensional edge feature map."""

    def __init__(self, channels: int, nodes: int):
        super().__init__()
        self.nodes = nodes
        self.FAM = CrossAttn(channels)
        self.ARM = CrossAttn(channels)
        self.edge_proj = nn.Linear(channels, channels)
        self.bn = nn.BatchNorm2d(nodes * nodes)
        nn.init.normal_(self.edge_proj.weight, 0, math.sqrt(2.0 / channels))

    def forward(self, au_maps: torch.Tensor, global_map: torch.Tensor) -> torch.Tensor:
        b, n, length, c = au_maps.shape
        features = self.FAM(au_maps, global_map[:, None].expand(b, n, length, c))
        end = features.repeat_interleave(n, dim=1)  # edge i*N + j: node i ...
        start = features.repeat(1, n, 1, 1)  # ... and node j
        return self.bn(self.edge_proj(self.ARM(start, end)))


class Head(nn.Module):
    """AU-specific feature generators, the graph of the chosen stage, and the occurrence / intensity read-outs."""

    def __init__(self, channels: int, nodes: int, stage: int = 2, neighbours: int = 4, metric: str = "dots"):
        super().__init__()
        self.stage = stage
        self.class_linears = nn.ModuleList([LinearBlock(channels, channels) for _ in range(nodes)])
        if stage == 1:
            self.gnn = NodeGraph(channels, nodes, neighbours, metric)
        else:
            self.edge_extractor = GEM(channels, nodes)
            self.gnn = GatedGraph(channels, nodes)
            self.edge_fc = nn.Linear(channels, 4)
            nn.init.xavier_uniform_(self.edge_fc.weight)
        self.sc = nn.Parameter(torch.empty(nodes, channels))
        nn.init.xavier_uniform_(self.sc)
        self.intensity_weight = nn.Parameter(torch.zeros(nodes, channels))
        self.intensity_bias = nn.Parameter(torch.zeros(nodes))

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        au_maps = torch.stack([layer(tokens) for layer in self.class_linears], dim=1)  # [B, N, L, C]
        nodes = au_maps.mean(dim=-2)
        out = {}
        if self.stage == 1:
            nodes = self.gnn(nodes)
        else:
            edges = self.edge_extractor(au_maps, tokens).mean(dim=-2)
            nodes, edges = self.gnn(nodes, edges)
            out["edge_logits"] = self.edge_fc(edges)  # [B, N*N, 4]
        reference = F.normalize(F.relu(self.sc), dim=-1)
        out["au_prob"] = (F.normalize(nodes, dim=-1) * reference).sum(-1)
        out["au_intensity"] = 5 * torch.sigmoid((nodes * self.intensity_weight).sum(-1) + self.intensity_bias)
        return out


TRANSFORMER_FAMILIES = ("swin", "vit", "deit", "beit", "eva", "cait")


def is_transformer(backbone: str) -> bool:
    return backbone.split(".")[0].startswith(TRANSFORMER_FAMILIES)


class MEGraphAU(nn.Module):
    """ME-GraphAU for [B, 3, H, W] normalised faces -> {"au_prob", "au_intensity" [B, N], "edge_logits"
    [B, N*N, 4] (stage 2)}.

    Args:
        num_aus: nodes of the graph (one per AU).
        backbone: a timm model name (resnet50 as in the paper, swin_base_patch4_window7_224, convnext_base, a ViT).
        stage: 1 (ANFL: top-K node graph) or 2 (MEFL: multi-dimensional edge features; the full model).
        neighbours: K of stage 1 (4 for BP4D, 3 for DISFA). metric: node similarity of stage 1.
    """

    def __init__(self, num_aus: int = 12, backbone: str = "resnet50", stage: int = 2, neighbours: int = 4,
                 metric: str = "dots", **backbone_kwargs):
        super().__init__()
        if stage not in (1, 2):
            raise ValueError(f"ME-GraphAU stage must be 1 or 2, got {stage}")
        self.num_aus, self.stage = num_aus, stage
        self.backbone_name, self.backbone_kwargs = backbone, dict(backbone_kwargs)
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="", **backbone_kwargs)
        channels = self.backbone.num_features
        # the official reduction: a quarter of a CNN's width, half of a transformer's
        reduced = channels // 2 if is_transformer(backbone) else channels // 4
        self.global_linear = LinearBlock(channels, reduced)
        self.head = Head(reduced, num_aus, stage, neighbours, metric)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features as [B, L, C] tokens, whatever layout timm gives (NCHW, NHWC, or tokens)."""
        features = self.backbone.forward_features(x)
        if features.ndim == 4:
            channels_last = getattr(self.backbone, "output_fmt", "NCHW") == "NHWC"  # timm's Swin
            return features.flatten(1, 2) if channels_last else features.flatten(2).transpose(1, 2)
        return features[:, getattr(self.backbone, "num_prefix_tokens", 0):]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.global_linear(self.tokens(x)))
