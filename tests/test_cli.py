"""train.py: task selection, LightningCLI hand-over, run directories, saved configs, resume, DDP, W&B offline."""
import csv
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from common.cli import main, parse_task
from common.data.splits import load_folds
from emotion.data import EmotionDataModule
from tests.conftest import REPO, TINY_EMOTION, run_train


def fit(tmp_path: Path, *extra: str):
    return main(["--task", "emotion", "fit", *TINY_EMOTION, "--run.root", str(tmp_path), "--run.wandb", "false", *extra])


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
    cli = fit(tmp_path, "--trainer.fast_dev_run", "true")
    assert cli.trainer.global_step == 1 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert "val/acc" in cli.trainer.callback_metrics


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

    # test on both ranks: one predictions file, each test sample once
    tested = run_train("--task", "emotion", "test", "--config", str(runs[0] / "config.yaml"),
                       "--data.per_subject", "7", "--ckpt_path", str(runs[0] / "checkpoints" / "last.ckpt"))
    assert tested.returncode == 0, tested.stderr[-3000:]
    test_run = runs[0] / "test"
    assert versions(tmp_path) == runs, "testing a run's checkpoint writes inside that run"
    rows = list(csv.DictReader((test_run / "predictions.csv").open()))
    assert sorted(r["sample"] for r in rows) == sorted({r["sample"] for r in rows}) and len(rows) == 7
    assert not list(test_run.glob("predictions.rank*.csv"))


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


# ---------------------------------------------------------------- run layout, resume, errors


def test_default_root_dir_holds_the_whole_run(tmp_path):
    root = tmp_path / "lightning_root"
    before = set((REPO / "runs").rglob("*")) if (REPO / "runs").exists() else set()
    main(["--task", "emotion", "fit", *TINY_EMOTION, "--trainer.default_root_dir", str(root), "--run.wandb", "false",
          "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"])
    run = next(root.glob("emotion/*/version_0"))
    assert {"config.yaml", "metrics.csv", "checkpoints", "figures"} <= {p.name for p in run.iterdir()}
    logged = {int(row["step"]) for row in csv.DictReader((run / "metrics.csv").open()) if row.get("val/acc")}
    drawn = {int(p.stem.rsplit("step", 1)[1]) for p in (run / "figures").glob("val_confusion_matrix_step*.png")}
    assert drawn and drawn == logged, "a figure carries the step its metrics carry in metrics.csv"
    after = set((REPO / "runs").rglob("*")) if (REPO / "runs").exists() else set()
    assert after == before, "nothing may be written to the default runs/ folder"


def test_resume_appends_to_the_metrics_and_continues_the_wandb_run(tmp_path):
    short = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--run.root", str(tmp_path)]
    first = run_train("--task", "emotion", "fit", *TINY_EMOTION, "--trainer.max_epochs", "1", *short)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Previous log files" not in first.stderr + first.stdout
    run = versions(tmp_path)[0]
    epoch0 = [row for row in csv.DictReader((run / "metrics.csv").open()) if row.get("epoch") == "0"]
    run_id = (run / "wandb_run_id").read_text()
    resumed = run_train("--task", "emotion", "fit", *TINY_EMOTION, "--trainer.max_epochs", "2", "--ckpt_path", "last",
                        *short)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Previous log files" not in resumed.stderr + resumed.stdout
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert epoch0 and [r for r in rows if r.get("epoch") == "0"] == epoch0, "epoch-0 history must survive a resume"
    assert any(r.get("epoch") == "1" and r.get("val/acc") for r in rows)
    assert (run / "wandb_run_id").read_text() == run_id
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(p.name.endswith(run_id) for p in offline_runs)


def test_trim_metrics_drops_rows_after_the_restored_step(tmp_path):
    from common.tracking import trim_metrics

    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,1,2.0\n0,3,1.5\n1,5,1.2\n1,6,1.1\n")
    trim_metrics(tmp_path, 3)
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,step,train/loss", "0,1,2.0", "0,3,1.5"]


def short_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as done:
        main(["--task", "emotion", *args])
    assert done.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert 1 <= len(lines) <= 2 and "Traceback" not in err, err
    return lines[0]


def test_a_failed_start_leaves_no_run_directory_and_one_line(tmp_path, capsys):
    line = short_error(capsys, "fit", *TINY_EMOTION, "--data.dataset", "rafdb", "--data.root", str(tmp_path / "nope"),
                       "--run.root", str(tmp_path), "--run.wandb", "false")
    assert str(tmp_path / "nope") in line and "rafdb" in line
    assert not (tmp_path / "emotion").exists()


def test_missing_recipe_weights_name_the_file_and_how_to_do_without(tmp_path, capsys, one_torch_thread):
    recipe = REPO / "configs" / "emotion" / "rafdb_posterpp.yaml"
    line = short_error(capsys, "fit", "--config", str(recipe), *TINY_EMOTION, "--data.dataset", "synthetic",
                       "--trainer.precision", "32-true", "--run.root", str(tmp_path), "--run.wandb", "true")
    assert "weights/ir50.pth" in line and "--model.backbone_weights null" in line
    assert not (tmp_path / "emotion").exists()


def test_argument_errors_are_one_line(tmp_path, capsys):
    assert "--model.arch 'nonet'" in short_error(capsys, "fit", *TINY_EMOTION, "--model.arch", "nonet",
                                                 "--run.root", str(tmp_path))
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  init_args:\n    lrr: 0.1\n")
    line = short_error(capsys, "fit", "--config", str(config), "--run.root", str(tmp_path))
    assert "lrr" in line and str(config) in line


@pytest.mark.parametrize("damage", ["bad label row", "truncated image"])
def test_bad_data_is_one_line_naming_the_file(tmp_path, capsys, damage):
    from common.synth.formats.emotion import write_rafdb

    written = write_rafdb(tmp_path / "raf", per_split=(8, 4), size=32)
    listing = written.root / "EmoLabel" / "list_patition_label.txt"
    if damage == "bad label row":
        lines = listing.read_text().splitlines()
        lines[2] = lines[2].split()[0] + " 9"
        listing.write_text("\n".join(lines) + "\n")
        expected = [str(listing), "line 3"]
    else:
        image = sorted((written.root / "Image" / "aligned").glob("train_*.jpg"))[0]
        image.write_bytes(image.read_bytes()[:200])
        expected = [image.name]
    line = short_error(capsys, "fit", *TINY_EMOTION, "--data.dataset", "rafdb", "--data.root", str(written.root),
                       "--data.val_fraction", "0.25", "--trainer.max_epochs", "1", "--run.root", str(tmp_path / "r"),
                       "--run.wandb", "false")
    assert all(text in line for text in expected), line


def test_progress_is_printed_as_lines_when_output_is_not_a_terminal(tmp_path):
    from common.progress import LineProgress

    result = run_train("--task", "emotion", "fit", *TINY_EMOTION, "--trainer.enable_progress_bar", "true",
                       "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
                       "--trainer.limit_val_batches", "1", "--run.root", str(tmp_path), "--run.wandb", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ") and " done in " in line]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"] and all("val/acc=" in line for line in epochs)
    assert LineProgress().every_seconds > 0


def test_test_writes_pooled_predictions_with_sample_identities(tmp_path):
    fit(tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1")
    run = versions(tmp_path)[0]
    main(["--task", "emotion", "test", "--config", str(run / "config.yaml"), "--ckpt_path",
          str(run / "checkpoints" / "last.ckpt"), "--run.wandb", "false"])
    test_run = run / "test"
    rows = list(csv.DictReader((test_run / "predictions.csv").open()))
    data = EmotionDataModule(subjects=(2, 1, 1), per_subject=8, image_size=64, num_workers=0)
    data.setup("test")
    assert len(rows) == len(data.test_set)
    columns = list(rows[0])
    assert columns[:5] == ["dataset", "subject", "sample", "label", "pred"]
    assert columns[5:] == [f"p_{c}" for c in data.class_names]
    expected = [data.test_set[i] for i in range(len(data.test_set))]
    assert [(r["dataset"], r["subject"], r["sample"]) for r in rows] == \
           [(e["dataset"], e["subject"], e["sample"]) for e in expected]
    assert [r["label"] for r in rows] == [data.class_names[e["target"]] for e in expected]
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in data.class_names]
        assert abs(sum(probs) - 1) < 1e-4 and row["pred"] == data.class_names[probs.index(max(probs))]
    assert list((test_run / "figures").glob("test_confusion_matrix_*.png"))
    # again, by the run's latest checkpoint: a second folder in the same run, the first one untouched
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        main(["--task", "emotion", "test", "--config", str(run / "config.yaml"), "--ckpt_path", "last",
              "--run.wandb", "false"])
    assert (run / "test-2" / "predictions.csv").is_file() and versions(tmp_path) == [run]
    assert not [w for w in seen if "dirpath" in str(w.message)], "the checkpoint's own folder is kept"


def test_wrapped_messages_come_out_as_the_sentence_that_names_the_fault():
    from common.errors import concise

    worker = ValueError("Caught ReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        "  File \"x.py\", line 1, in f\ncommon.data.readers.ReadError: /d/a.jpg: JPEG is truncated\n")
    assert concise(worker) == "/d/a.jpg: JPEG is truncated"
    union = ValueError("Does not validate against any of the Union subtypes\nErrors:\n  - --model.arch 'x' is bad\n"
                       "  - Expected a <class 'NoneType'>\nGiven value: Namespace(...)")
    assert concise(union) == "--model.arch 'x' is bad"
    assert concise(KeyError("unknown dataset 'y'")) == "unknown dataset 'y'"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_under_slurm_share_one_run_directory_wandb_run_and_fold_table(tmp_path):
    """Two processes with the variables srun gives one task on each of two nodes (Lightning detects SLURM)."""
    import os
    import subprocess
    import sys

    port, root = free_port(), tmp_path / "runs"
    command = [sys.executable, str(REPO / "train.py"), "--task", "microexp", "fit", "--config",
               str(REPO / "configs" / "microexp" / "synthetic.yaml"), "--model.arch", "videomae_tiny",
               "--data.image_size", "32", "--data.clip_length", "4", "--data.subjects", "[2, 1, 1]",
               "--data.per_subject", "2", "--data.batch_size", "2", "--data.num_workers", "0", "--data.fold", "0",
               "--trainer.accelerator", "cpu", "--trainer.num_nodes", "2", "--trainer.devices", "1",
               "--trainer.strategy", "ddp", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
               "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--run.root", str(root)]
    slurm = {"SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NAME": "facex", "SLURM_LOCALID": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
             "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen(command, cwd=REPO, env={**os.environ, **slurm, "SLURM_PROCID": str(r),
                                                      "SLURM_NODEID": str(r)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errors = [rank.communicate(timeout=300)[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert "world_size=2" in errors[0].replace(" ", "") or "GLOBAL_RANK: 0, MEMBER: 1/2" in errors[0], errors[0][-2000:]
    runs = sorted(root.glob("microexp/*/version_*"))
    assert len(runs) == 1, f"one run directory for the whole job, got {runs}"
    assert len(list(tmp_path.rglob("wandb_run_id"))) == 1 and len(list(tmp_path.rglob("offline-run-*"))) == 1
    assert len(list(tmp_path.rglob("folds.csv"))) == 1 and (runs[0] / "folds.csv").is_file()
    checkpoint = torch.load(runs[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # 2 training subjects x 2 clips, shared by 2 ranks at batch 2: one step (a rank alone would take two)
    assert checkpoint["global_step"] == 1


@pytest.mark.parametrize("variables, zero", [
    ({}, True),
    ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),       # torchrun, first process of node 0
    ({"RANK": "2", "LOCAL_RANK": "0", "GROUP_RANK": "1"}, False),      # torchrun, first process of node 1
    ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, True),               # srun, task 0
    ({"SLURM_PROCID": "3", "SLURM_LOCALID": "1"}, False),              # srun, a task of another node
    ({"LOCAL_RANK": "1"}, False),                                       # Lightning's launcher, second device
    ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),                     # Lightning across nodes, node 1
])
def test_only_rank_zero_of_the_whole_job_counts_as_rank_zero(monkeypatch, variables, zero):
    from common.tracking import RANK_VARIABLES, is_global_zero

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert is_global_zero() is zero
