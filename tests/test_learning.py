"""The whole emotion pipeline learns: a small timm CNN trained from scratch on synthetic faces recognises
expressions of identities it never saw far above chance."""
import csv

from common.cli import main

CHANCE = 1 / 7


def test_small_model_learns_synthetic_emotions_on_held_out_subjects(tmp_path):
    main(["--task", "emotion", "fit", "--model.arch", "test_resnet", "--data.image_size", "64",
          "--data.subjects", "[30, 8, 1]", "--data.per_subject", "28", "--data.batch_size", "32",
          "--data.num_workers", "0", "--model.augment", "false", "--model.mixup_alpha", "0", "--model.cutmix_alpha", "0",
          "--model.label_smoothing", "0", "--model.lr", "3e-3", "--model.warmup_epochs", "1",
          "--trainer.max_epochs", "10", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
          "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--run.root", str(tmp_path), "--run.wandb", "false"])
    metrics = next(tmp_path.glob("emotion/*/version_0/metrics.csv"))
    accuracy = [float(row["val/acc"]) for row in csv.DictReader(metrics.open()) if row.get("val/acc")]
    assert accuracy[-1] >= 2.5 * CHANCE, f"validation accuracy by epoch: {accuracy}"
