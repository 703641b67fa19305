"""VideoMAE V2 with temporal adapters: published sizes, the official key layout, frozen training, gradient
checkpointing, export; the CNN+LSTM baseline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.export import export_module, verify
from microexp.model import CNNLSTM, VideoMAE, load_videomae_checkpoint, sinusoid_positions
from microexp.module import MicroExpModule
from tests.conftest import metadata_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = dict(arch="videomae_tiny", clip_length=4, image_size=32)


@pytest.mark.parametrize("arch, published", [("videomae_s", 21.9e6), ("videomae_b", 86.2e6)])
def test_encoder_sizes_match_the_paper(arch, published):
    model = VideoMAE(3, arch)
    assert abs(model.encoder_parameters() - published) / published < 0.01
    assert model.grid == (8, 14, 14) and model.pos_embed.shape == (1, 1568, model.config.dim)


def test_sine_cosine_table_is_the_official_formula():
    table = sinusoid_positions(5, 6)[0]
    pos, j = 3, 4
    assert table[pos, j].item() == pytest.approx(torch.sin(torch.tensor(pos / 10000 ** (2 * (j // 2) / 6))).item())
    assert table[pos, j + 1].item() == pytest.approx(torch.cos(torch.tensor(pos / 10000 ** (2 * (j // 2) / 6))).item())


def test_adapters_start_as_the_identity():
    torch.manual_seed(0)
    plain = VideoMAE(3, adapter_ratio=0, drop_path=0, **TINY).eval()
    adapted = VideoMAE(3, adapter_ratio=0.25, drop_path=0, **TINY).eval()
    adapted.load_state_dict(plain.state_dict(), strict=False)
    clips = torch.randn(2, 4, 3, 32, 32)
    torch.testing.assert_close(adapted(clips), plain(clips))
    adapter = adapted.blocks[0].adapter
    assert adapter.down.out_features == 16 and adapter.conv.kernel_size == (3, 1, 1) and adapter.conv.groups == 16


def official_layout(model: VideoMAE, pretraining: bool) -> dict:
    """The model's encoder as an OpenGVLab checkpoint names it (fine-tuned, or pre-training with a decoder)."""
    encoder = {k: v.clone() for k, v in model.state_dict().items() if ".adapter." not in k and not k.startswith("head.")}
    if not pretraining:
        return {"module": {**encoder, "head.weight": torch.zeros(710, 64), "head.bias": torch.zeros(710)}}
    renamed = {("encoder.norm." + k[8:] if k.startswith("fc_norm.") else "encoder." + k): v for k, v in encoder.items()}
    return {"model": {**renamed, "decoder.blocks.0.norm1.weight": torch.ones(8), "mask_token": torch.zeros(1, 1, 8),
                      "encoder_to_decoder.weight": torch.zeros(8, 64)}}


@pytest.mark.parametrize("pretraining", [False, True], ids=["finetuned", "pretraining"])
def test_official_checkpoints_load_with_their_q_and_v_biases(tmp_path, pretraining):
    torch.manual_seed(1)
    source = VideoMAE(3, **TINY)
    for p in source.parameters():
        torch.nn.init.normal_(p)
    layout = official_layout(source, pretraining)
    keys = next(iter(layout.values()))
    assert any(k.endswith("attn.q_bias") for k in keys) and any("patch_embed.proj.weight" in k for k in keys)
    torch.save(layout, tmp_path / "vit_tiny.pth")
    target = VideoMAE(7, **TINY)
    report = load_videomae_checkpoint(target, tmp_path / "vit_tiny.pth")
    assert report.ok and any(k.startswith("head.") or k.startswith("decoder.") for k in report.dropped)
    for key, value in source.state_dict().items():
        if ".adapter." not in key and not key.startswith("head."):
            assert torch.equal(target.state_dict()[key], value), key
    assert target.head.out_features == 7


def test_a_fine_tuned_checkpoint_reproduces_its_own_logits(tmp_path, capsys):
    import argparse

    torch.manual_seed(2)
    source = VideoMAE(3, **TINY, adapter_ratio=0).eval()
    for p in source.parameters():
        torch.nn.init.normal_(p, std=0.05)
    # the official training script saves its argparse namespace beside the weights
    torch.save({"model": source.state_dict(), "args": argparse.Namespace(nb_classes=3, lr=1e-3, input_size=32),
                "epoch": 9}, tmp_path / "finetuned.pth")
    target = VideoMAE(3, **TINY, adapter_ratio=0).eval()
    report = load_videomae_checkpoint(target, tmp_path / "finetuned.pth")
    assert "head.weight" in report.loaded
    clips = torch.randn(2, 4, 3, 32, 32)
    torch.testing.assert_close(target(clips), source(clips))
    # another task's head (Kinetics-710 classes) is dropped with a notice, the encoder still loads
    other = VideoMAE(5, **TINY, adapter_ratio=0)
    report = load_videomae_checkpoint(other, tmp_path / "finetuned.pth")
    assert {"head.weight", "head.bias"} <= set(report.dropped) and "blocks.0.attn.qkv.weight" in report.loaded


def test_arbitrary_pickles_are_refused_with_the_reason(tmp_path):
    import fractions

    torch.save({"model": VideoMAE(3, **TINY).state_dict(), "meter": fractions.Fraction(1, 3)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match=r"odd.pth: holds a pickled fractions.Fraction .*--model.allow_pickle true"):
        load_videomae_checkpoint(VideoMAE(3, **TINY), tmp_path / "odd.pth")
    assert load_videomae_checkpoint(VideoMAE(3, **TINY), tmp_path / "odd.pth", allow_pickle=True).ok


def test_a_mismatched_checkpoint_names_the_keys(tmp_path):
    layout = official_layout(VideoMAE(3, **TINY), pretraining=False)
    del layout["module"]["blocks.1.attn.v_bias"]
    torch.save(layout, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="blocks.1.attn.v_bias"):
        load_videomae_checkpoint(VideoMAE(3, **TINY), tmp_path / "broken.pth")
    torch.save(official_layout(VideoMAE(3, **TINY), pretraining=False), tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match=r"shape mismatch: .*qkv.weight checkpoint \(192, 64\)"):
        load_videomae_checkpoint(wider_model(), tmp_path / "narrow.pth")


def wider_model() -> VideoMAE:
    from microexp.model import VIDEOMAE_CONFIGS, VideoMAEConfig

    VIDEOMAE_CONFIGS["videomae_wide_test"] = VideoMAEConfig(96, 2, 2)
    try:
        return VideoMAE(3, "videomae_wide_test", 4, 32)
    finally:
        del VIDEOMAE_CONFIGS["videomae_wide_test"]


def test_frozen_training_updates_only_adapters_norms_and_head():
    torch.manual_seed(0)
    module = MicroExpModule(["a", "b", "c"], freeze_backbone=True, augment=False, optimizer="adamw", lr=1e-2,
                            scheduler="none", **TINY)
    before = {k: v.detach().clone() for k, v in module.net.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    batch = {"input": torch.randint(0, 255, (4, 4, 3, 32, 32), dtype=torch.uint8), "target": torch.tensor([0, 1, 2, 0])}
    for _ in range(2):
        loss = module.compute_loss(module.on_after_batch_transfer(batch, 0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {k for k, v in module.net.named_parameters() if not torch.equal(v, before[k])}
    assert changed and all(".adapter." in k or "norm" in k or k.startswith("head.") for k in changed)
    assert any(".adapter." in k for k in changed) and "head.weight" in changed
    assert not module.net.blocks[0].attn.qkv.weight.requires_grad


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = VideoMAE(3, drop_path=0, **TINY)
    saved = VideoMAE(3, drop_path=0, grad_checkpointing=True, **TINY)
    saved.load_state_dict(plain.state_dict())
    clips = torch.randn(2, 4, 3, 32, 32)
    for model in (plain, saved):
        model.train()
        model(clips).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), saved.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_export_parity_through_the_module(tmp_path):
    torch.manual_seed(0)
    module = MicroExpModule(["negative", "positive", "surprise"], **TINY).eval()
    path, graphs = export_module(module, tmp_path / "microexp.onnx", samples=2)
    # the graph takes the contract's 224 px frames and shrinks them to the 32 px the model trained at
    assert graphs.inputs[0].shape == (2, 4, 3, 224, 224) and graphs.model_size == (32, 32)
    report = verify(path, graphs.final, graphs.inputs, runs=1, logits_wrapper=graphs.logits)
    assert report.max_abs_diff["probs"] <= 1e-4 and report.max_rel_diff["probs"] <= 1e-4
    metadata = metadata_of(path)  # 4-frame clips: a tiny test model, outside the 16-frame contract
    assert metadata["clip_length"] == "4" and metadata["input_layout"].startswith("NTCHW")
    assert metadata["input_size"] == "[224, 224]" and metadata["model_input_size"] == "[32, 32]"


def test_fused_attention_export_matches_pytorch(tmp_path):
    import onnx

    torch.manual_seed(0)
    module = MicroExpModule(["negative", "positive", "surprise"], **TINY).eval()
    path, graphs = export_module(module, tmp_path / "fused.onnx", samples=2, attention="fused")
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MultiHeadAttention"]
    assert len(nodes) == module.net.config.depth and all(n.domain == "com.microsoft" for n in nodes)
    report = verify(path, graphs.final, graphs.inputs, runs=1, logits_wrapper=graphs.logits)
    assert report.max_abs_diff["probs"] <= 1e-4 and report.max_rel_diff["probs"] <= 1e-4
    plain, _ = export_module(module, tmp_path / "plain.onnx", samples=1)
    assert not [n for n in onnx.load(str(plain)).graph.node if n.domain == "com.microsoft"]


def test_cnn_lstm_baseline():
    model = CNNLSTM(5)
    logits = model(torch.randn(2, 3, 3, 64, 64))
    assert logits.shape == (2, 5)
    assert model.lstm.hidden_size == 128 and model.lstm.num_layers == 2
    lstm = sum(p.numel() for p in model.lstm.parameters())
    assert lstm == 4 * 128 * (512 + 128 + 2) + 4 * 128 * (128 + 128 + 2)


# ---------------------------------------------------------------- the optical-flow baseline


def test_regions_sit_on_the_aligned_face():
    from microexp.flow import REGIONS, region_boxes

    boxes = region_boxes(224, 0.15)
    assert len(boxes) == len(REGIONS) and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= 224
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    brows, cheeks, mouth = centre_y[:3], centre_y[3:5], centre_y[5:]
    assert brows.max() < cheeks.min() < mouth.min(), "brows above cheeks above mouth corners"
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    assert centre_x[0] < centre_x[2] < centre_x[1] and centre_x[5] < centre_x[6]


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_flow_features_measure_motion_per_region(method):
    import cv2
    from skimage import data as images

    from microexp.flow import roi_flow_features

    face = cv2.resize(images.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)
    moved = np.roll(face, 2, axis=1)  # the whole face 2 px to the right
    features = roi_flow_features(np.stack([face, face, moved]), method)
    assert features.shape == (3, 14) and np.abs(features[:2]).max() < 1e-3
    dx, dy = features[2, 0::2] * 96 / 100, features[2, 1::2] * 96 / 100  # percent of the side -> pixels
    assert np.median(dx) == pytest.approx(2, abs=0.6) and np.abs(np.median(dy)) < 0.5


def test_flow_features_are_computed_once(tmp_path):
    from microexp.flow import FlowFeatureCache

    cache = FlowFeatureCache(tmp_path, {"method": "dis"})
    first = cache.get("casme2:sub01/EP02", lambda: np.ones((4, 14), np.float32))
    again = cache.get("casme2:sub01/EP02", lambda: pytest.fail("computed twice"))
    assert np.array_equal(first, again)
    other = FlowFeatureCache(tmp_path, {"method": "farneback"})
    assert other.path("casme2:sub01/EP02") != cache.path("casme2:sub01/EP02")


def test_roi_transformer_and_its_input_check(tmp_path):
    from common.cli import main
    from microexp.model import ROITransformer

    assert ROITransformer(4)(torch.randn(2, 16, 14)).shape == (2, 4)
    args = ["--task", "microexp", "fit", "--model.arch", "roi_transformer", "--data.image_size", "48",
            "--data.clip_length", "4", "--data.subjects", "[2, 1, 1]", "--data.per_subject", "3",
            "--data.batch_size", "3", "--data.num_workers", "0", "--trainer.accelerator", "cpu",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--run.root", str(tmp_path),
            "--run.wandb", "false", "--data.feature_cache", str(tmp_path / "flow")]
    cli = main([*args, "--data.inputs", "roi_flow"])
    # training and validation clips get their features; the held-out subject's are not computed by `fit`
    assert cli.trainer.global_step == 2 and len(list((tmp_path / "flow").glob("*.npy"))) == 6 + 3
    with pytest.raises(SystemExit):
        main(args)  # clips given to a network of flow features: a one-line error naming --data.inputs


def test_one_head_per_dataset_scores_each_sample_within_its_dataset():
    import torch.nn.functional as F

    groups = {"casme2": [0, 5], "smic": [5, 8]}
    module = MicroExpModule([f"c{i}" for i in range(8)], class_groups=groups, augment=False, **TINY)
    logits = torch.randn(4, 8)
    target, datasets = torch.tensor([1, 6, 4, 7]), ["casme2", "smic", "casme2", "smic"]
    expected = (2 * F.cross_entropy(logits[[0, 2], 0:5], target[[0, 2]]) +
                2 * F.cross_entropy(logits[[1, 3], 5:8], target[[1, 3]] - 5)) / 4
    torch.testing.assert_close(module.classification_loss(logits, target, datasets), expected)
    probs = module.within_groups(logits, datasets).softmax(-1)
    assert torch.all(probs[0, 5:] == 0) and torch.all(probs[1, :5] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    with pytest.raises(ValueError, match="mixup_alpha 0"):
        MicroExpModule([f"c{i}" for i in range(8)], class_groups=groups, mixup_alpha=0.2, **TINY)


def test_search_space_options_reach_the_networks():
    lstm = MicroExpModule(["a", "b", "c"], arch="cnn_lstm", image_size=32, clip_length=4, hidden_size=48,
                          num_layers=3, dropout=0.45).net.lstm
    assert (lstm.hidden_size, lstm.num_layers, lstm.dropout) == (48, 3, 0.45)
    assert MicroExpModule(["a", "b"], arch="cnn_lstm", image_size=32).net.lstm.dropout == 0.3  # the toolkit's
    roi = MicroExpModule(["a", "b"], arch="roi_transformer", clip_length=4, dropout=0.25).net
    assert roi.head[2].p == 0.25
    adapters = MicroExpModule(["a", "b"], adapter_ratio=0.5, drop_path=0.2, **TINY).net
    assert adapters.blocks[0].adapter.down.out_features == 32
    assert adapters.blocks[-1].drop_path.drop_prob == pytest.approx(0.2)


def test_layer_wise_lr_decay_scales_each_block():
    from common.optim import build_optimizer

    module = MicroExpModule(["a", "b"], **TINY, layer_decay=0.5)
    optimizer = build_optimizer(module, "adamw", 1e-3, 0.05, layer_decay=0.5, layer_of=module.lr_layer_of)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    names = dict(module.named_parameters())
    assert len(lr_of) == len(names)  # every parameter in exactly one group
    depth = len(module.net.blocks)
    assert lr_of[id(names["net.head.weight"])] == (pytest.approx(1e-3), 0.05)
    assert lr_of[id(names["net.patch_embed.proj.weight"])][0] == pytest.approx(1e-3 * 0.5 ** (depth + 1))
    for i in range(depth):
        lr, decay = lr_of[id(names[f"net.blocks.{i}.attn.qkv.weight"])]
        assert lr == pytest.approx(1e-3 * 0.5 ** (depth - i)) and decay == 0.05
        assert lr_of[id(names[f"net.blocks.{i}.norm1.weight"])] == (pytest.approx(lr), 0.0)
    with pytest.raises(ValueError, match="layer_decay"):
        baseline = MicroExpModule(["a", "b"], arch="cnn_lstm", image_size=32)
        build_optimizer(baseline, "adamw", 1e-3, 0.05, layer_decay=0.8, layer_of=baseline.lr_layer_of)
