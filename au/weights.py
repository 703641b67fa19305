"""Local weight files for ME-GraphAU: a backbone in timm's key layout, and a stage-1 checkpoint for stage 2."""
from __future__ import annotations

from pathlib import Path

import timm

from common.weights import load_pretrained


def require(path: str, flag: str) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag}: weights file not found: {path} (to start without it, pass {flag} null)")


def load_backbone(net, backbone: str, path: str) -> None:
    """timm's own loading path (its key filters; an MAE-style ViT checkpoint in timm's layout works too)."""
    require(path, "--model.pretrained")
    loaded = timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay={"file": path}, num_classes=0,
                               global_pool="")
    net.backbone.load_state_dict(loaded.state_dict())


def load_stage_one(net, path: str) -> None:
    """Stage 2 starts from stage 1: everything the two share (backbone, global_linear, AU feature generators,
    read-outs); stage 1's node graph has no counterpart and is dropped. Lightning checkpoints and official
    ones (`{"state_dict": ...}` with `module.`) are both read."""
    require(path, "--model.init_from")
    shared = tuple(k for k in net.state_dict() if not k.startswith(("head.gnn.", "head.edge_extractor.",
                                                                    "head.edge_fc.", "head.intensity")))

    def rename(key: str) -> str | None:
        key = key.removeprefix("net.")
        return None if key.startswith("head.gnn.") or key.startswith(("au_weights", "normalize")) else key

    load_pretrained(net, path, rename, strict_prefixes=shared, strip_prefixes=("module.",),
                    allow_pickle=True)
