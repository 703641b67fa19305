"""ME-GraphAU as published: the official parameter counts and module names, the two graphs, any timm backbone,
and an export with its index matrices as constants."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from au.model import MEGraphAU, NodeGraph, edge_matrices

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# names of the official MEFARG state dict (model/MEFL.py, model/ANFL.py), which checkpoints use
OFFICIAL_KEYS = {
    1: ["backbone.layer4.2.bn3.running_var", "global_linear.fc.weight", "global_linear.bn.running_mean",
        "head.class_linears.11.fc.weight", "head.gnn.U.weight", "head.gnn.V.bias", "head.gnn.bnv.weight", "head.sc"],
    2: ["head.edge_extractor.FAM.linear_q.weight", "head.edge_extractor.ARM.linear_v.bias",
        "head.edge_extractor.edge_proj.weight", "head.edge_extractor.bn.running_var", "head.gnn.U1.weight",
        "head.gnn.E2.weight", "head.gnn.bne2.running_mean", "head.gnn.bnv1.weight", "head.edge_fc.weight", "head.sc"],
}


def official_count(model: MEGraphAU) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "intensity" not in n)


@pytest.mark.parametrize("stage, published", [(1, 28.25e6), (2, 31.67e6)])
def test_resnet50_with_12_aus_has_the_official_size_and_names(stage, published):
    model = MEGraphAU(12, "resnet50", stage=stage)
    assert abs(official_count(model) - published) / published < 0.002
    keys = set(model.state_dict())
    assert set(OFFICIAL_KEYS[stage]) <= keys
    assert not any(k.endswith(("start", "end")) for k in keys), "index matrices are derived, not stored"
    extra = sum(p.numel() for n, p in model.named_parameters() if "intensity" in n)
    assert extra == 12 * (512 + 1)


def test_outputs_and_ranges():
    torch.manual_seed(0)
    model = MEGraphAU(5, "resnet18", stage=2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out["au_prob"].shape == (2, 5) and out["au_intensity"].shape == (2, 5) and out["edge_logits"].shape == (2, 25, 4)
    assert out["au_prob"].min() >= 0 and out["au_prob"].max() <= 1 + 1e-6
    assert out["au_intensity"].min() >= 0 and out["au_intensity"].max() <= 5


def test_edge_matrices_follow_the_official_ordering():
    start, end = edge_matrices(3)
    for i in range(3):
        for j in range(3):
            assert end[i * 3 + j].argmax() == i and start[i * 3 + j].argmax() == j
    assert start.sum() == end.sum() == 9


@pytest.mark.parametrize("metric", ["dots", "cosine", "l1"])
def test_each_node_links_its_k_nearest_nodes(metric):
    torch.manual_seed(0)
    graph = NodeGraph(8, 6, neighbours=3, metric=metric)
    adjacency = graph.adjacency(torch.randn(2, 6, 8))
    assert torch.all(adjacency.sum(-1) == 3)
    x = torch.randn(1, 6, 8)
    if metric == "dots":
        expected = (x @ x.transpose(1, 2)).topk(3, dim=-1).indices
        assert torch.equal(graph.adjacency(x)[0].nonzero()[:, 1].view(6, 3).sort(-1).values, expected[0].sort(-1).values)


def test_a_transformer_backbone_halves_its_width():
    model = MEGraphAU(4, "vit_tiny_patch16_224", stage=1, img_size=64).eval()
    assert model.global_linear.fc.out_features == model.backbone.num_features // 2
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["au_prob"].shape == (1, 4)


def test_stage_two_exports_and_matches_onnx_runtime(tmp_path):
    import onnxruntime as ort

    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = MEGraphAU(4, "resnet18", stage=2)

        def forward(self, images):
            out = self.model(images)
            return out["au_prob"], out["au_intensity"]

    torch.manual_seed(0)
    wrapper, x = Outputs().eval(), torch.randn(2, 3, 64, 64)
    path = tmp_path / "au.onnx"
    with torch.no_grad():
        torch.onnx.export(wrapper, (x,), str(path), dynamo=False, opset_version=18, input_names=["image"],
                          output_names=["au_prob", "au_intensity"], dynamic_axes={"image": {0: "N"}})
        expected = [t.numpy() for t in wrapper(x)]
    got = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_an_official_release_loads_key_for_key(tmp_path):
    from au.weights import load_graph_checkpoint

    torch.manual_seed(1)
    source = MEGraphAU(5, "resnet18", stage=2)
    official = {f"module.{k}": v for k, v in source.state_dict().items() if "intensity" not in k}
    torch.save({"epoch": 20, "state_dict": official}, tmp_path / "MEFARG_resnet18_BP4D_fold1.pth")
    target = MEGraphAU(5, "resnet18", stage=2)
    load_graph_checkpoint(target, str(tmp_path / "MEFARG_resnet18_BP4D_fold1.pth"))
    for key, value in source.state_dict().items():
        if "intensity" not in key:
            assert torch.equal(target.state_dict()[key], value), key
    del official["module.head.gnn.E2.weight"]
    torch.save({"state_dict": official}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="head.gnn.E2.weight"):
        load_graph_checkpoint(MEGraphAU(5, "resnet18", stage=2), str(tmp_path / "broken.pth"))


def test_a_vit_backbone_loads_a_local_file_in_timm_layout(tmp_path):
    import timm

    from au.weights import load_backbone

    torch.manual_seed(2)
    encoder = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64)
    torch.save(encoder.state_dict(), tmp_path / "mae_vit_tiny.pth")
    model = MEGraphAU(4, "vit_tiny_patch16_224", stage=1, img_size=64)
    load_backbone(model, str(tmp_path / "mae_vit_tiny.pth"))
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)
