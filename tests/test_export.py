"""common.export: checkpoint -> verified ONNX with the task's contract and metadata."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from common.cli import main as train_main
from common.export import (ExportError, checkpoint_of, degenerate_outputs, export_checkpoint, load_task_module, main, verify,
                           without_local_paths)
from tests.conftest import TINY_EMOTION, exported_metadata


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train_main(["--task", "emotion", "fit", *TINY_EMOTION, "--data.num_classes", "8", "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                "--run.root", str(root), "--run.wandb", "false"])
    return next(root.glob("emotion/*/version_0/checkpoints/last.ckpt"))


def test_a_run_folder_exports_its_newest_version_with_checkpoints_and_its_chosen_checkpoint(tmp_path):
    def run(version, *files):
        for name in files:
            (tmp_path / f"version_{version}" / "checkpoints" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / f"version_{version}" / "checkpoints" / name).write_bytes(b"")
        (tmp_path / f"version_{version}").mkdir(exist_ok=True)

    run(2, "last.ckpt"), run(9, "last.ckpt"), run(10, "last.ckpt", "epoch=3-step=40.ckpt"), run(11)
    assert checkpoint_of(tmp_path) == tmp_path / "version_10" / "checkpoints" / "epoch=3-step=40.ckpt"
    assert checkpoint_of(tmp_path / "version_9") == tmp_path / "version_9" / "checkpoints" / "last.ckpt"
    with pytest.raises(ExportError, match="no checkpoint"):
        checkpoint_of(tmp_path / "version_11")


def test_export_matches_pytorch_and_records_metadata(checkpoint, tmp_path, capsys):
    out = tmp_path / "emotion.onnx"
    assert main([str(checkpoint), str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    metadata = exported_metadata(out, "emotion")
    assert json.loads(metadata["classes"])[-1] == "contempt" and len(json.loads(metadata["classes"])) == 8
    assert "EmotionModule" in metadata["training_config"]


def test_exported_graph_takes_the_contract_size_normalises_and_ends_in_softmax_with_dynamic_batch(checkpoint, tmp_path):
    import cv2

    out = tmp_path / "emotion.onnx"
    report = export_checkpoint(checkpoint, out)
    assert any("trained on 64 px" in note for note in report.notes)
    module = load_task_module(checkpoint)
    images = np.random.default_rng(0).random((3, 224, 224, 3), dtype=np.float32)
    probs = ort.InferenceSession(str(out)).run(["probs"], {"image": images.transpose(0, 3, 1, 2).copy()})[0]
    assert probs.shape == (3, 8)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # the graph's shrink is OpenCV's area resize, as the data pipeline crops faces for training
    small = np.stack([cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA) for image in images])
    with torch.no_grad():
        expected = module(torch.from_numpy(small).permute(0, 3, 1, 2)).softmax(-1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope.ckpt"), str(tmp_path / "x.onnx")]) == 1
    assert "nope.ckpt" in capsys.readouterr().err


def test_checkpoint_of_an_unknown_task_is_refused(tmp_path):
    path = tmp_path / "alien.ckpt"
    torch.save({"task": "telepathy", "state_dict": {}}, path)
    with pytest.raises(ExportError, match="telepathy.*registered tasks: .*emotion"):
        load_task_module(path)


def test_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="garbage.ckpt"):
        load_task_module(path)


# ---------------------------------------------------------------- what the check proves


class Scaled(torch.nn.Module):
    """A linear classifier whose logits are scaled up until the softmax saturates."""

    def __init__(self, scale: float, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 8 * 8, classes)
        self.scale = scale

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.scale


def exported(tmp_path, net, name="m.onnx"):
    path = tmp_path / name
    wrapper = torch.nn.Sequential(net, torch.nn.Softmax(-1)).eval()
    inputs = (torch.rand(6, 3, 8, 8),)
    torch.onnx.export(wrapper, inputs, str(path), dynamo=False, opset_version=18, input_names=["image"],
                      output_names=["probs"], dynamic_axes={"image": {0: "N"}, "probs": {0: "N"}})
    return path, wrapper, inputs


def test_a_saturated_model_is_compared_before_its_softmax(tmp_path):
    net = Scaled(1e9)
    path, wrapper, inputs = exported(tmp_path, net)
    report = verify(path, wrapper, inputs, runs=1, logits_wrapper=net)
    assert report.max_rel_diff["probs"] < 1e-6
    assert any("saturated" in note for note in report.warnings)
    wrong = Scaled(1e9)
    with torch.no_grad():
        wrong.fc.weight.mul_(1.01)  # 1 % off: the probabilities stay exactly 0 and 1, the logits do not
    wrong_wrapper = torch.nn.Sequential(wrong, torch.nn.Softmax(-1)).eval()
    assert torch.equal(wrong_wrapper(*inputs), wrapper(*inputs)), "the softmax alone cannot tell them apart"
    with pytest.raises(ExportError, match="before activation"):
        verify(path, wrong_wrapper, inputs, runs=1, logits_wrapper=wrong)


def test_nan_outputs_are_refused(tmp_path):
    net = Scaled(1.0)
    with torch.no_grad():
        net.fc.bias[0] = float("nan")
    path, wrapper, inputs = exported(tmp_path, net)
    with pytest.raises(ExportError, match="NaN or infinite"):
        verify(path, wrapper, inputs, runs=1, logits_wrapper=net)


def test_one_class_for_every_sample_is_reported():
    assert degenerate_outputs({"probs": np.tile([[0.1, 0.9]], (4, 1))}) == \
        ["probs: every checked sample gives class 1"]
    assert degenerate_outputs({"probs": np.array([[0.1, 0.9], [0.8, 0.2]])}) == []


def test_metadata_says_how_to_crop_and_keeps_no_local_paths(checkpoint, tmp_path):
    out = tmp_path / "emotion.onnx"
    export_checkpoint(checkpoint, out)
    metadata = exported_metadata(out, "emotion")
    assert "softmax" in metadata["output_activation"] and "probabilities" in metadata["output_activation"]
    template = json.loads(metadata["align_template"])
    assert len(template) == 5 and all(0 < v < 224 for point in template for v in point)
    assert json.loads(metadata["input_size"]) == [224, 224] and json.loads(metadata["model_input_size"]) == [64, 64]
    trained = json.loads(load_task_module(checkpoint).export_metadata()["align_template"])
    np.testing.assert_allclose(template, np.array(trained) * 224 / 64, atol=1e-3)
    assert template[0][0] < template[1][0], "left eye left of the right eye"
    assert "left eye" in metadata["landmark_scheme"] and "area" in metadata["resize_interpolation"]
    assert metadata["face_detector"].startswith("none")
    assert float(metadata["align_margin"]) >= 0
    assert str(checkpoint.parents[3]) not in metadata["training_config"]
    assert "<local>/" in metadata["training_config"], "the run root was an absolute path: it must be cut"


def test_absolute_paths_are_cut_to_file_names():
    config = "data:\n  root: /home/me/data/raf\nmodel:\n  backbone_weights: weights/ir50.pth\n  other: C:\\\\x\\\\y.pth\n"
    scrubbed = yaml.safe_load(without_local_paths(config))
    assert scrubbed["data"]["root"] == "<local>/raf"
    assert scrubbed["model"] == {"backbone_weights": "weights/ir50.pth", "other": "<local>/y.pth"}
