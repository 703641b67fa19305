"""train.py: task selection, LightningCLI hand-over, run directories, saved configs, resume, DDP, W&B offline."""
import csv
from pathlib import Path

import pytest
import torch
import yaml

from common.cli import main, parse_task
from common.data.splits import load_folds
from emotion.data import EmotionDataModule
from tests.conftest import TINY_EMOTION, run_train


def fit(tmp_path: Path, *extra: str) -> None:
    main(["--task", "emotion", "fit", *TINY_EMOTION, "--run.root", str(tmp_path), "--run.wandb", "false", *extra])


def versions(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "emotion").glob("*/version_*"))


def test_parse_task_keeps_the_rest_for_lightning():
    task, rest = parse_task(["fit", "--task", "emotion", "--trainer.max_epochs", "3"])
    assert task == "emotion"
    assert rest == ["fit", "--trainer.max_epochs", "3"]


def test_unknown_task_exits_nonzero_listing_registered_tasks():
    result = run_train("--task", "nope", "fit")
    assert result.returncode != 0
    assert "emotion" in result.stderr and "nope" in result.stderr


def test_print_config_shows_the_task_recipe():
    result = run_train("--task", "emotion", "fit", "--print_config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["class_path"] == "emotion.module.EmotionModule"
    assert config["data"]["class_path"] == "emotion.data.EmotionDataModule"
    assert config["checkpoint"]["monitor"] == "val/acc"


def test_fast_dev_run_trains_on_synthetic_data(tmp_path):
    fit(tmp_path, "--trainer.fast_dev_run", "true")


def test_saved_config_reruns_the_same_experiment(tmp_path):
    fit(tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")
    first = versions(tmp_path)[0]
    main(["--task", "emotion", "fit", "--config", str(first / "config.yaml")])
    second = [v for v in versions(tmp_path) if v != first]
    assert len(second) == 1, "the re-run must write a new version next to the first"
    assert yaml.safe_load((first / "config.yaml").read_text()) == yaml.safe_load((second[0] / "config.yaml").read_text())
    assert _metric(first, "val/loss") == pytest.approx(_metric(second[0], "val/loss"), rel=1e-4)


def test_resume_from_last_continues_epoch_and_step(tmp_path):
    fit(tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")
    run = versions(tmp_path)[0]
    first = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # One batch per epoch now: a fresh start would end at step 2, a true resume at 2 + 1.
    fit(tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--ckpt_path", "last")
    assert versions(tmp_path) == [run], "resuming must continue in the same run directory"
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 2
    assert resumed["global_step"] == 3
    assert resumed["loops"]["fit_loop"]["epoch_progress"]["total"]["completed"] == 2


def test_resume_without_a_previous_run_says_so(tmp_path):
    with pytest.raises(SystemExit, match="last.ckpt"):
        fit(tmp_path, "--ckpt_path", "last")


def test_ddp_two_cpu_processes_bf16(tmp_path):
    result = run_train("--task", "emotion", "fit", *TINY_EMOTION, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                       "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                       "--trainer.limit_val_batches", "1", "--run.root", str(tmp_path), "--run.wandb", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = versions(tmp_path)
    assert len(runs) == 1, f"both ranks must share one run directory, got {runs}"
    checkpoint = torch.load(runs[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2


def test_wandb_runs_offline_without_credentials_or_network(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_MODE": None, "WANDB_API_KEY": None, "NETRC": None}
    result = run_train("--task", "emotion", "fit", *TINY_EMOTION, "--trainer.max_epochs", "1",
                       "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
                       "--run.root", str(tmp_path), env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run = versions(tmp_path)[0]
    assert list((run / "wandb").glob("offline-run-*")), "W&B must have written an offline run"
    assert (run / "metrics.csv").is_file()
    assert list((run / "figures").glob("val_confusion_matrix_*.png"))


def _metric(run: Path, key: str) -> float:
    rows = [row for row in csv.DictReader((run / "metrics.csv").open()) if row.get(key)]
    return float(rows[-1][key])


def test_fold_runs_are_named_by_fold_and_save_their_subject_table(tmp_path):
    fit(tmp_path, "--data.subjects", "[4, 1, 1]", "--data.fold", "1", "--data.num_folds", "3",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1")
    run = versions(tmp_path)[0]
    assert run.parent.name.endswith("-fold1")
    folds = load_folds(run / "folds.csv")
    assert sorted(folds, key=int) == [str(i) for i in range(6)] and set(folds.values()) == {0, 1, 2}


def test_a_fold_tests_on_its_own_subjects_and_validates_on_training_subjects():
    data = EmotionDataModule(subjects=(4, 1, 1), per_subject=7, image_size=32, fold=2, num_folds=3, num_workers=0)
    data.setup("fit")
    train, val, test = (set(part.subjects) for part in (data.train_set, data.val_set, data.test_set))
    assert train and val and test
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(range(6))
    other = EmotionDataModule(subjects=(4, 1, 1), per_subject=7, image_size=32, fold=0, num_folds=3, num_workers=0)
    other.setup("fit")
    assert set(other.test_set.subjects).isdisjoint(test)
