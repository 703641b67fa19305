"""Local weight files for ME-GraphAU: a backbone in timm's key layout, and whole-model checkpoints (this project's
stage-1 or stage-2 runs, or the official ME-GraphAU releases, `{"state_dict": ...}` with `module.` prefixes)."""
from __future__ import annotations

from pathlib import Path

import timm

from common.weights import extract_state_dict, load_pretrained, read_checkpoint

STAGE_ONE_GRAPH, STAGE_TWO_PARTS = "head.gnn.U.weight", ("head.gnn.", "head.edge_extractor.", "head.edge_fc.")


def require(path: str, flag: str) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag}: weights file not found: {path} (to start without it, pass {flag} null)")


def load_backbone(net, path: str) -> None:
    """timm's own loading path (its key filters, position-table resampling; an MAE-style ViT checkpoint in timm's
    layout works too), into the backbone as built."""
    require(path, "--model.pretrained")
    loaded = timm.create_model(net.backbone_name, pretrained=True, pretrained_cfg_overlay={"file": path}, num_classes=0,
                               global_pool="", **net.backbone_kwargs)
    net.backbone.load_state_dict(loaded.state_dict())


def checkpoint_stage(keys) -> int:
    return 1 if any(k.endswith(STAGE_ONE_GRAPH) for k in keys) else 2


def load_graph_checkpoint(net, path: str, allow_pickle: bool = False) -> None:
    """A whole ME-GraphAU checkpoint. Of the same stage, every tensor loads (the intensity read-out, which the
    official releases lack, keeps its initialisation); from stage 1 into stage 2, what the stages share loads
    (backbone, global_linear, AU feature generators, read-out) and stage 1's node graph is dropped."""
    require(path, "--model.init_from")
    keys = [k.removeprefix("module.").removeprefix("net.")
            for k in extract_state_dict(read_checkpoint(path, allow_pickle), path)]
    same_stage = checkpoint_stage(keys) == net.stage
    skipped = ("head.intensity",) if same_stage else ("head.intensity", *STAGE_TWO_PARTS)
    required = tuple(k for k in net.state_dict() if not k.startswith(skipped))

    def rename(key: str) -> str | None:
        key = key.removeprefix("net.")
        if key.startswith(("au_weights", "normalize")) or (not same_stage and key.startswith("head.gnn.")):
            return None
        return key

    load_pretrained(net, path, rename, strict_prefixes=required, strip_prefixes=("module.",), allow_pickle=allow_pickle)
