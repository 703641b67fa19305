"""The emotion pipeline learns: trained from scratch on synthetic faces, the default ResNet-18 recognises the
expressions of identities it never saw far above chance; DAN, started from that trunk as its recipe starts from
a face-pretrained ResNet-18, does too."""
import csv
from pathlib import Path

import pytest
import torch

from common.cli import main

CHANCE = 1 / 7
WELL_ABOVE_CHANCE = 2.5 * CHANCE

SMALL_RUN = [
    "--data.image_size", "64", "--data.subjects", "[30, 8, 1]", "--data.per_subject", "28", "--data.batch_size", "32",
    "--data.num_workers", "0", "--model.augment", "false", "--model.mixup_alpha", "0", "--model.cutmix_alpha", "0",
    "--model.label_smoothing", "0", "--model.warmup_epochs", "1", "--trainer.accelerator", "cpu",
    "--trainer.devices", "1", "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--run.wandb", "false",
]


def held_out_accuracy(run: Path) -> list[float]:
    rows = csv.DictReader((run / "metrics.csv").open())
    return [float(row["val/acc"]) for row in rows if row.get("val/acc")]


@pytest.fixture(scope="module")
def trunk_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    main(["--task", "emotion", "fit", "--model.arch", "resnet18", "--model.lr", "2e-3", "--trainer.max_epochs", "6",
          "--run.root", str(root), "--run.name", "trunk", *SMALL_RUN])
    return root / "emotion" / "trunk" / "version_0"


def test_resnet18_learns_synthetic_emotions_on_held_out_subjects(trunk_run):
    accuracy = held_out_accuracy(trunk_run)
    assert accuracy[-1] >= WELL_ABOVE_CHANCE, f"held-out accuracy by epoch: {accuracy}"


def test_dan_from_a_pretrained_trunk_learns_on_held_out_subjects(trunk_run, tmp_path):
    checkpoint = torch.load(trunk_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    trunk = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    torch.save({"state_dict": trunk}, tmp_path / "trunk.pth")  # the layout of DAN's resnet18_msceleb.pth
    main(["--task", "emotion", "fit", "--model.arch", "dan", "--model.lr", "1e-3",
          "--model.backbone_weights", str(tmp_path / "trunk.pth"), "--trainer.max_epochs", "2",
          "--run.root", str(tmp_path), "--run.name", "dan", *SMALL_RUN])
    accuracy = held_out_accuracy(tmp_path / "emotion" / "dan" / "version_0")
    assert accuracy[-1] >= WELL_ABOVE_CHANCE, f"held-out accuracy by epoch: {accuracy}"
