"""The emotion LightningModule on top of the shared classification step: weight files are read when a run starts
from scratch and never when a checkpoint is restored, so a checkpoint opens anywhere."""
from __future__ import annotations

import pytest
import torch

from common.cli import main
from common.export import export_checkpoint
from emotion.backbones import resnet18_key_map
from emotion.dan import DAN
from emotion.module import EmotionModule
from tests.conftest import TINY_EMOTION

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
         "--run.wandb", "false"]


def write_trunk(path) -> dict:
    """A torchvision-layout ResNet-18 file, as resnet18_msceleb.pth is laid out."""
    torch.manual_seed(5)
    trunk = DAN().backbone
    for p in trunk.parameters():
        torch.nn.init.normal_(p, std=0.05)
    key_map = resnet18_key_map()
    torch.save({"state_dict": {key_map.inverse(k): v for k, v in trunk.state_dict().items()}}, path)
    return trunk.state_dict()


def test_weights_load_when_a_run_starts_and_a_checkpoint_needs_none(tmp_path):
    trunk_file = tmp_path / "resnet18_msceleb.pth"
    trunk = write_trunk(trunk_file)
    dan = ["--model.arch", "dan", "--model.backbone_weights", str(trunk_file), "--run.root", str(tmp_path / "runs")]

    validated = main(["--task", "emotion", "validate", *TINY_EMOTION, *dan, *SHORT])
    loaded = validated.model.net.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trunk.items()), "the trunk file must be loaded at the start"

    main(["--task", "emotion", "fit", *TINY_EMOTION, *dan, *SHORT])
    checkpoint = next((tmp_path / "runs").glob("emotion/*-dan/version_*/checkpoints/last.ckpt"))
    trunk_file.unlink()  # e.g. the checkpoint was copied to another machine

    module = EmotionModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    restored = module.state_dict()
    assert all(torch.equal(restored[k], v) for k, v in stored.items() if k in restored)
    report = export_checkpoint(checkpoint, tmp_path / "dan.onnx")
    assert report.max_abs_diff["probs"] <= 1e-4

    resumed = main(["--task", "emotion", "fit", *TINY_EMOTION, *dan, *SHORT[:-2], "--trainer.max_epochs", "2",
                    "--run.wandb", "false", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 2


def test_one_weights_option_can_change_without_losing_the_architecture_arguments():
    module = EmotionModule(["a", "b"], image_size=64, arch="posterpp", backbone_weights="x.pth",
                           model_kwargs={"resize_mode": "nearest"})
    assert module.net.resize_mode == "nearest" and module.weight_files.backbone == "x.pth"
    with pytest.raises(ValueError, match=r"--model.model_kwargs.ir50_weights: .*--model.backbone_weights"):
        EmotionModule(["a", "b"], image_size=64, arch="posterpp", backbone_weights="x.pth",
                      model_kwargs={"ir50_weights": "old.pth"})
    with pytest.raises(ValueError, match=r"model_kwargs.backbone_weights: .*--model.backbone_weights"):
        EmotionModule(["a", "b"], image_size=64, arch="dan", model_kwargs={"backbone_weights": "r18.pth"})
    with pytest.raises(ValueError, match="--model.landmark_weights"):
        EmotionModule(["a", "b"], arch="dan", landmark_weights="m.pth")
