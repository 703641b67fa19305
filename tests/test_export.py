"""common.export: checkpoint -> verified ONNX with the task's contract and metadata."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from common.cli import main as train_main
from common.export import ExportError, export_checkpoint, load_task_module, main
from tests.conftest import TINY_EMOTION, exported_metadata


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train_main(["--task", "emotion", "fit", *TINY_EMOTION, "--data.num_classes", "8", "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                "--run.root", str(root), "--run.wandb", "false"])
    return next(root.glob("emotion/*/version_0/checkpoints/last.ckpt"))


def test_export_matches_pytorch_and_records_metadata(checkpoint, tmp_path, capsys):
    out = tmp_path / "emotion.onnx"
    assert main([str(checkpoint), str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    metadata = exported_metadata(out, "emotion")
    assert json.loads(metadata["classes"])[-1] == "contempt" and len(json.loads(metadata["classes"])) == 8
    assert "EmotionModule" in metadata["training_config"]


def test_exported_graph_normalises_and_ends_in_softmax_with_dynamic_batch(checkpoint, tmp_path):
    out = tmp_path / "emotion.onnx"
    export_checkpoint(checkpoint, out)
    module = load_task_module(checkpoint)
    images = torch.rand(3, 3, 64, 64)
    probs = ort.InferenceSession(str(out)).run(["probs"], {"image": images.numpy()})[0]
    assert probs.shape == (3, 8)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    with torch.no_grad():
        expected = module(images).softmax(-1).numpy()
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
