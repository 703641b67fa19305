"""POSTER++ and DAN: sizes, output contract, frozen landmark branch, losses, official-weight remapping, ONNX."""
from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from common.weights import full_param_count, load_pretrained, thop_style_param_count
from emotion.backbones import ir50_key_map, mobilefacenet_key_map, resnet18_key_map
from emotion.dan import DAN, AffinityLoss, PartitionLoss, dan_key_map
from emotion.posterpp import PosterPP, posterpp_key_map

# Published sizes: POSTER V2 paper/README "43.7M parameters" (thop); DAN paper "19.72M".
POSTERPP_PUBLISHED = 43.7e6
DAN_PUBLISHED = 19.7e6
# thop counts parameters from forward hooks of leaf modules. Modules the official POSTER++ builds but never
# calls (IR-50 embedding head, ViT leftovers: 14,466,637 parameters) are therefore not in the 43.7 M; counting
# every leaf module with them gives 58,190,948. Our default model does not build them.
POSTERPP_UNUSED_OFFICIAL = 14_466_637


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def posterpp() -> PosterPP:
    torch.manual_seed(0)
    return PosterPP().eval()


@pytest.fixture(scope="module")
def dan() -> DAN:
    torch.manual_seed(0)
    return DAN().eval()


def _faces(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _randomise(model: nn.Module, seed: int = 1) -> None:
    """Give every float tensor (weights, BN statistics, gammas) distinct values so that a wrong key mapping
    cannot go unnoticed in an equality check."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                values = torch.rand(tensor.shape, generator=gen)
                tensor.copy_(values + 0.5 if key.endswith("running_var") else values - 0.5)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"tensors differ after round trip: {different[:5]}"


# ---------------------------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------------------------


def test_posterpp_param_count_matches_published(posterpp):
    leaf = thop_style_param_count(posterpp)
    executed = thop_style_param_count(posterpp, _faces(1))
    full = full_param_count(posterpp)
    assert abs(leaf - POSTERPP_PUBLISHED) / POSTERPP_PUBLISHED < 0.02, leaf
    assert abs(executed - POSTERPP_PUBLISHED) / POSTERPP_PUBLISHED < 0.02, executed
    # full count adds the parameters held by containers: pos-embed + cls token (148*768 + 768), three
    # relative-position tables (3025*2 + 729*4 + 169*8) and the layer-scale gammas (2 * (64 + 128 + 256))
    assert full - leaf == 148 * 768 + 768 + (3025 * 2 + 729 * 4 + 169 * 8) + 2 * (64 + 128 + 256)
    # the frozen landmark detector is part of the count but not of the trainable set
    trainable = sum(p.numel() for p in posterpp.parameters() if p.requires_grad)
    assert full - trainable == full_param_count(posterpp.landmark_branch)


def test_posterpp_unused_official_modules_are_not_in_published_count():
    torch.manual_seed(0)
    mirrored = PosterPP(keep_unused_official_modules=True)
    default_leaf = thop_style_param_count(PosterPP())
    assert thop_style_param_count(mirrored) == default_leaf + POSTERPP_UNUSED_OFFICIAL
    executed = thop_style_param_count(mirrored, _faces(1))
    assert abs(executed - POSTERPP_PUBLISHED) / POSTERPP_PUBLISHED < 0.02, executed


def test_dan_param_count_matches_published(dan):
    # 19,723,733 = official DAN (ResNet-18 trunk 11.18 M + 4 heads of 2.14 M + fc/bn); the affinity-loss
    # centers (num_classes x 512) live in our module so the optimiser sees them, and are counted separately.
    centers = dan.affinity_loss.centers.numel()
    network = full_param_count(dan) - centers
    assert centers == 7 * 512
    assert network == 19_723_733
    assert abs(network - DAN_PUBLISHED) / DAN_PUBLISHED < 0.03
    assert abs(thop_style_param_count(dan) - DAN_PUBLISHED) / DAN_PUBLISHED < 0.03


# ---------------------------------------------------------------------------------------------------------------
# Output contract
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [7, 8])
def test_posterpp_returns_logits_in_train_and_eval(num_classes):
    torch.manual_seed(0)
    model = PosterPP(num_classes)
    x = _faces(2)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, num_classes)
        out = model.train()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("num_classes", [7, 8])
def test_dan_eval_logits_and_train_dict(num_classes):
    torch.manual_seed(0)
    model = DAN(num_classes)
    x = _faces(3)
    with torch.no_grad():
        logits = model.eval()(x)
        out = model.train()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, num_classes)
    assert set(out) == {"logits", "features", "head_outputs"}
    assert out["logits"].shape == (3, num_classes)
    assert out["features"].shape == (3, 512, 7, 7)
    assert out["head_outputs"].shape == (3, 4, 512)


def test_posterpp_accepts_112_input_unchanged(posterpp):
    # the internal resize must be exact at 112, so a pre-resized batch gives the same logits
    x = _faces(1)
    small = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(posterpp(small), posterpp(x))


# ---------------------------------------------------------------------------------------------------------------
# Frozen landmark branch
# ---------------------------------------------------------------------------------------------------------------


def test_landmark_branch_stays_frozen_and_in_eval_mode():
    torch.manual_seed(0)
    model = PosterPP().train()
    branch = model.landmark_branch
    assert model.training and model.image_branch.training
    assert not any(m.training for m in branch.modules())
    assert not any(p.requires_grad for p in branch.parameters())
    stats_before = {k: v.clone() for k, v in branch.state_dict().items()}

    F.cross_entropy(model(_faces(1)), torch.tensor([3])).backward()

    assert all(p.grad is None for p in branch.parameters())
    assert model.image_branch.stem.conv.weight.grad is not None
    for key, value in branch.state_dict().items():
        assert torch.equal(value, stats_before[key]), f"landmark statistic {key} changed in train mode"
    model.eval().train()
    assert not branch.training


# ---------------------------------------------------------------------------------------------------------------
# DAN losses
# ---------------------------------------------------------------------------------------------------------------


def test_dan_extra_loss_is_finite_and_trains_heads_and_centers():
    torch.manual_seed(0)
    model = DAN(7, affinity_weight=1.0, partition_weight=1.0).train()
    target = torch.tensor([0, 1, 2, 6])
    out = model(_faces(4))
    extra = model.extra_loss(out, target)
    assert extra.ndim == 0 and torch.isfinite(extra) and extra > 0
    (F.cross_entropy(out["logits"], target) + extra).backward()
    for name in ("affinity_loss.centers", "heads.0.spatial.reduce.conv.weight", "heads.3.channel.gate.fc1.weight",
                 "backbone.stage4.1.conv2.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_dan_extra_loss_weights_scale_the_terms():
    torch.manual_seed(0)
    model = DAN(7, affinity_weight=0.0, partition_weight=0.0).train()
    target = torch.tensor([0, 1, 2])
    out = model(_faces(3))
    assert model.extra_loss(out, target).item() == 0.0
    model.affinity_weight, model.partition_weight = 2.0, 3.0
    expected = 2.0 * model.affinity_loss(out["features"], target) + 3.0 * model.partition_loss(out["head_outputs"])
    torch.testing.assert_close(model.extra_loss(out, target), expected)


def test_affinity_loss_matches_definition():
    torch.manual_seed(0)
    loss = AffinityLoss(num_classes=3, feat_dim=4)
    feature_maps = torch.randn(5, 4, 2, 2)
    target = torch.tensor([0, 2, 1, 2, 0])
    pooled = feature_maps.mean(dim=(2, 3))
    distances = torch.cdist(pooled, loss.centers).pow(2)[torch.arange(5), target]
    expected = distances.sum() / loss.centers.var(dim=0).sum() / 5
    torch.testing.assert_close(loss(feature_maps, target), expected)


def test_partition_loss_rewards_diverse_heads():
    loss = PartitionLoss()
    same = torch.ones(2, 4, 8)
    diverse = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0)) * 10
    assert loss(diverse) < loss(same + 1e-3 * torch.randn(2, 4, 8))
    torch.testing.assert_close(loss(diverse), torch.log(1 + 4 / diverse.var(dim=1).mean()))
    assert loss(torch.randn(2, 1, 8)).item() == 0.0


def test_affinity_loss_of_one_hot_soft_targets_equals_hard_targets():
    torch.manual_seed(0)
    loss, features, target = AffinityLoss(4, 16), torch.randn(5, 16), torch.tensor([0, 3, 1, 1, 2])
    hard = loss(features, target)
    torch.testing.assert_close(loss(features, F.one_hot(target, 4).float()), hard, rtol=1e-4, atol=1e-5)
    mixed = 0.5 * F.one_hot(target, 4).float() + 0.5 * F.one_hot(target.flip(0), 4).float()
    expected = 0.5 * hard + 0.5 * loss(features, target.flip(0))
    torch.testing.assert_close(loss(features, mixed), expected, rtol=1e-4, atol=1e-5)


def test_partition_loss_of_identical_heads_is_large_but_finite():
    """The official code adds Python's float epsilon to the variance; without it identical heads give inf."""
    value = PartitionLoss()(torch.ones(2, 4, 8)).item()
    assert np.isfinite(value) and value > 30


def test_affinity_centres_may_outnumber_the_classes_as_in_the_official_rafdb_script():
    model = DAN(7, affinity_centers=8)
    assert model.affinity_loss.centers.shape == (8, 512) and model.classifier.out_features == 7
    assert DAN(7).affinity_loss.centers.shape == (7, 512)
    with pytest.raises(ValueError, match="affinity_centers"):
        DAN(7, affinity_centers=6)


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoint remapping
# ---------------------------------------------------------------------------------------------------------------


def test_key_maps_know_official_names():
    # names read off the official model definitions
    poster = posterpp_key_map()
    assert poster("ffn2.gamma1") == "cross_attention.1.gamma_attn"
    assert poster("attn3.qkv.weight") == "cross_attention.2.attn.kv.weight"
    assert poster("window1.norm.bias") == "cross_attention.0.norm.bias"
    landmark_prelu = "face_landback.conv_4.model.5.conv_dw.prelu.weight"
    assert poster(landmark_prelu) == "landmark_branch.stage2.5.depthwise.act.weight"
    assert poster("ir_back.body2.0.shortcut_layer.1.running_mean") == "image_branch.stage2.0.shortcut.norm.running_mean"
    assert poster("VIT.head.linear.bias") == "fusion.head.bias"
    assert poster("attn1.relative_position_index") is None
    assert poster("VIT.IRLinear1.weight") is None  # unused official module, not built by default
    assert ir50_key_map(flat_body=True)("body.7.res_layer.3.weight") == "stage3.0.conv2.weight"
    assert ir50_key_map(flat_body=True)("body.22.res_layer.3.weight") is None  # stage 4, not built
    assert resnet18_key_map()("layer3.0.downsample.1.weight") == "stage3.0.shortcut.norm.weight"
    assert resnet18_key_map()("fc.weight") is None
    assert dan_key_map()("cat_head2.sa.conv_1x3.0.bias") == "heads.2.spatial.horizontal.conv.bias"
    assert dan_key_map()("features.4.1.bn2.running_var") == "backbone.stage1.1.norm2.running_var"


@pytest.mark.parametrize("keep_unused", [False, True])
def test_posterpp_full_official_checkpoint_round_trip(tmp_path, keep_unused):
    torch.manual_seed(0)
    source = PosterPP(keep_unused_official_modules=keep_unused)
    _randomise(source)
    key_map = posterpp_key_map(include_unused=keep_unused)
    official = {key_map.inverse(k): v for k, v in source.state_dict().items()}
    for name in ("ir_back.body3.13.res_layer.4.running_var", "face_landback.output_layer.linear.weight",
                 "VIT.pos_embed", "VIT.cls_token", "VIT.se_block.linear2.bias", "VIT.blocks.1.attn.qkv.weight",
                 "attn3.relative_position_bias_table", "ffn1.gamma2", "embed_q.1.weight", "embed_k.0.bias",
                 "embed_v.proj.weight", "last_face_conv.weight", "conv2.weight"):
        assert name in official, name
    assert all(key_map(k) == ours for k, ours in zip(official, source.state_dict()))
    # what the official training script saves: DataParallel-prefixed, inside "state_dict"; the derived
    # relative-position index buffers and (for the slim model) the unused modules are also present
    extra = {"attn1.relative_position_index": torch.zeros(784, 784, dtype=torch.long),
             "VIT.CON1.weight": torch.zeros(768, 256, 1, 1)}
    if not keep_unused:
        official.update(extra)
    path = tmp_path / "raf-db-model_best.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in official.items()}}, path)

    target = PosterPP(keep_unused_official_modules=keep_unused)
    report = target.load_official_checkpoint(path)
    assert report.ok and not report.missing
    _assert_same_state(source, target)


def test_posterpp_branch_weights_round_trip_both_ir50_layouts(tmp_path):
    torch.manual_seed(0)
    source = PosterPP()
    _randomise(source)
    ir_map, lm_map = ir50_key_map(), mobilefacenet_key_map()
    ir50 = {ir_map.inverse(k): v for k, v in source.image_branch.state_dict().items()}
    # ir50.pth also holds the recognition head, which the trunk drops
    ir50["output_layer.3.weight"] = torch.zeros(512, 25088)
    flat_map = ir50_key_map(flat_body=True)
    ir50_flat = {flat_map.inverse(k): v for k, v in source.image_branch.state_dict().items()}
    ir50_flat["body.21.res_layer.1.weight"] = torch.zeros(512, 256, 3, 3)  # stage 4 of the full IR-50
    landmarks = {lm_map.inverse(k): v for k, v in source.landmark_branch.state_dict().items()}
    assert "body3.13.res_layer.1.weight" in ir50 and "body.20.res_layer.1.weight" in ir50_flat
    assert "conv_6_sep.prelu.weight" in landmarks and "output_layer.conv_6_dw.bn.running_var" in landmarks

    torch.save(ir50, tmp_path / "ir50.pth")
    torch.save(ir50_flat, tmp_path / "ir50_flat.pth")
    torch.save({"epoch": 10, "state_dict": landmarks}, tmp_path / "mobilefacenet_model_best.pth.tar")

    for ir_file in ("ir50.pth", "ir50_flat.pth"):
        torch.manual_seed(1)
        target = PosterPP(ir50_weights=tmp_path / ir_file,
                          landmark_weights=tmp_path / "mobilefacenet_model_best.pth.tar")
        _assert_same_state(source.image_branch, target.image_branch)
        _assert_same_state(source.landmark_branch, target.landmark_branch)
        assert not any(p.requires_grad for p in target.landmark_branch.parameters())


def test_dan_official_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    source = DAN()
    _randomise(source)
    trunk_map = resnet18_key_map()
    msceleb = {trunk_map.inverse(k): v for k, v in source.backbone.state_dict().items()}
    msceleb["fc.weight"], msceleb["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    assert {"conv1.weight", "bn1.running_mean", "layer4.0.downsample.0.weight", "layer1.1.bn2.bias"} <= set(msceleb)
    torch.save({"state_dict": msceleb}, tmp_path / "resnet18_msceleb.pth")

    full_map = dan_key_map()
    network = {k: v for k, v in source.state_dict().items() if not k.startswith("affinity_loss.")}
    official = {full_map.inverse(k): v for k, v in network.items()}
    assert {"features.0.weight", "features.7.1.bn2.running_mean", "cat_head3.ca.attention.3.weight",
            "cat_head0.sa.conv_3x1.1.num_batches_tracked", "fc.weight", "bn.running_var"} <= set(official)
    torch.save({"iter": 21, "model_state_dict": official}, tmp_path / "rafdb_epoch21.pth")

    torch.manual_seed(1)
    from_backbone = DAN(backbone_weights=tmp_path / "resnet18_msceleb.pth")
    _assert_same_state(source.backbone, from_backbone.backbone)
    assert not torch.equal(from_backbone.classifier.weight, source.classifier.weight)

    report = from_backbone.load_official_checkpoint(tmp_path / "rafdb_epoch21.pth")
    assert report.ok
    centers_before = from_backbone.affinity_loss.centers.detach().clone()
    for key, value in network.items():
        assert torch.equal(from_backbone.state_dict()[key], value), key
    assert torch.equal(from_backbone.affinity_loss.centers, centers_before)


# ---------------------------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------------------------


def test_missing_weights_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_ir50.pth"):
        PosterPP(ir50_weights=tmp_path / "no_such_ir50.pth")
    with pytest.raises(FileNotFoundError, match="msceleb_missing.pth"):
        DAN(backbone_weights=tmp_path / "msceleb_missing.pth")


def test_renamed_key_error_lists_missing_and_unexpected(tmp_path):
    torch.manual_seed(0)
    model = PosterPP()
    key_map = mobilefacenet_key_map()
    landmarks = {key_map.inverse(k): v for k, v in model.landmark_branch.state_dict().items()}
    landmarks["conv_4.model.5.conv_dw.prelu.alpha"] = landmarks.pop("conv_4.model.5.conv_dw.prelu.weight")
    path = tmp_path / "bad_mobilefacenet.pth.tar"
    torch.save({"state_dict": landmarks}, path)
    with pytest.raises(ValueError) as err:
        model.load_pretrained_branches(mobilefacenet_path=path)
    message = str(err.value)
    assert "bad_mobilefacenet.pth.tar" in message
    assert "landmark_branch.stage2.5.depthwise.act.weight" in message  # missing
    assert "conv_4.model.5.conv_dw.prelu.alpha" in message  # unexpected, named as in the file


def test_shape_mismatch_error_names_key_and_shapes(tmp_path, dan):
    eight_class = DAN(8)
    key_map = dan_key_map()
    official = {key_map.inverse(k): v for k, v in eight_class.state_dict().items() if not k.startswith("affinity")}
    path = tmp_path / "dan_affectnet8.pth"
    torch.save({"model_state_dict": official}, path)
    with pytest.raises(ValueError, match=r"dan_affectnet8\.pth") as err:
        DAN(7).load_official_checkpoint(path)
    assert "classifier.weight checkpoint (8, 512) vs model (7, 512)" in str(err.value)


def test_load_pretrained_generic_unwrapping_and_dict_remap(tmp_path):
    save_file = pytest.importorskip("safetensors.torch").save_file

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(3, 2)
            self.head = nn.Linear(2, 1)

    source, target = Tiny(), Tiny()
    renamed = {k.replace("encoder.", "enc."): v for k, v in source.state_dict().items()}
    remap = {"enc.weight": "encoder.weight", "enc.bias": "encoder.bias"}
    torch.save({"model": {f"module.{k}": v for k, v in renamed.items()}}, tmp_path / "tiny.ckpt")
    report = load_pretrained(target, tmp_path / "tiny.ckpt", remap)
    assert report.ok and sorted(report.loaded) == sorted(source.state_dict())
    _assert_same_state(source, target)

    save_file({"enc.weight": source.encoder.weight.detach().contiguous()}, str(tmp_path / "part.safetensors"))
    with pytest.raises(ValueError, match="encoder.bias"):
        load_pretrained(Tiny(), tmp_path / "part.safetensors", remap, strict_prefixes=("encoder.",))
    partial = load_pretrained(Tiny(), tmp_path / "part.safetensors", remap, strict=False)
    assert partial.loaded == ["encoder.weight"] and "encoder.bias" in partial.missing

    torch.save({"state_dict": {"unrelated.weight": torch.zeros(1)}}, tmp_path / "unrelated.pth")
    with pytest.raises(ValueError, match="unrelated.pth"):
        load_pretrained(Tiny(), tmp_path / "unrelated.pth", strict=False)


# ---------------------------------------------------------------------------------------------------------------
# ONNX export parity (slowest: kept last)
# ---------------------------------------------------------------------------------------------------------------


def _calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Set BatchNorm running statistics to those of one batch, as training would, so activations have realistic
    scale (fresh statistics let DAN's logits grow to ~1e4, where fp32 round-off alone exceeds 1e-4)."""
    model.train()
    # frozen parts (POSTER++'s landmark branch) stay in eval mode and keep their statistics
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch the running stats equal the batch stats
    with torch.no_grad():
        model(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


# POSTER++'s fresh statistics already give logits of order 0.1-1, so only DAN needs calibrating
@pytest.mark.parametrize("factory, calibrate", [(PosterPP, False), (DAN, True)], ids=["posterpp", "dan"])
def test_onnx_export_matches_torch(factory, calibrate):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = factory()
    if calibrate:
        _calibrate_batchnorm(model, _faces(4, seed=3))
    x = _faces(2, seed=4)
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), x, buffer, dynamo=False, opset_version=18, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    # a second batch size checks that the exported batch axis really is dynamic
    for batch in (x, _faces(1, seed=5)):
        with torch.no_grad():
            expected = model(batch).numpy()
        got = session.run(["logits"], {"image": batch.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(expected).max() > 1e-2  # guard against a degenerate, near-constant output
        assert np.abs(got - expected).max() <= 1e-4


def test_timm_backbone_loads_local_pretrained_weights_and_replaces_the_head(tmp_path):
    from emotion.model import create_model

    source = timm.create_model("resnet18")
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18", 7, str(tmp_path / "r18.pth"))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 7


def test_unknown_arch_and_missing_weights_are_clear_errors(tmp_path):
    from emotion.model import create_model

    with pytest.raises(ValueError, match="notamodel.*posterpp"):
        create_model("notamodel", 7)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_model("resnet18", 7, str(tmp_path / "nope.pth"))
