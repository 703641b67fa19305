"""common.hpo: search spaces, a resumable pruned study over LOSO folds, and validation-only selection."""
from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

import optuna  # noqa: E402

from common.hpo import as_arguments, epoch_values, load_space, main as hpo_main  # noqa: E402
from tests.conftest import REPO  # noqa: E402

CONFIG = REPO / "configs" / "microexp" / "synthetic.yaml"
LIGHT = ["--model.arch", "roi_transformer", "--data.inputs", "roi_flow", "--data.image_size", "64",
         "--data.clip_length", "8", "--data.batch_size", "6", "--data.num_workers", "0", "--model.label_smoothing", "0",
         "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--run.wandb", "false"]


def write_space(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- space files


def test_the_shipped_spaces_load():
    toolkit = load_space(REPO / "configs" / "hpo" / "cnn_lstm.yaml")
    assert {"model.lr", "model.dropout", "model.hidden_size"} <= set(toolkit.params)
    adapters = load_space(REPO / "configs" / "hpo" / "videomae_adapters.yaml")
    assert {"model.lr", "model.adapter_ratio", "model.layer_decay", "model.drop_path"} <= set(adapters.params)
    for space in (toolkit, adapters):
        assert all(p.contains(v) for point in space.start for n, v in point.items() for p in [space.params[n]])


@pytest.mark.parametrize("text, message", [
    ("parameters:\n  model.lr: {type: floaty, low: 0, high: 1}\n", "model.lr: needs `type:`"),
    ("parameters:\n  model.lr: {type: float, low: 1, high: 0.1}\n", "model.lr: low"),
    ("parameters:\n  model.lr: {type: float, low: 0, high: 1, log: true}\n", "log-scale range must be positive"),
    ("parameters:\n  model.hidden_size: {type: categorical, choices: []}\n", "non-empty `choices:`"),
    ("parameters:\n  model.lr: {type: float, low: 0.1, high: 1, scale: 2}\n", "unknown keys ['scale']"),
    ("parameters:\n  lr: {type: float, low: 0.1, high: 1}\n", "name a train.py option"),
    ("parameters:\n  model.lr: {type: float, low: 0.1, high: 1}\nstart:\n  - {model.lr: 5}\n", "start point 1"),
    ("parameters:\n  model.lr: {type: float, low: 0.1, high: 1}\nstart:\n  - {model.wd: 0.2}\n", "model.wd"),
    ("params: {}\n", "`parameters:`"),
])
def test_a_bad_space_names_the_file_and_parameter(tmp_path, text, message):
    path = write_space(tmp_path / "space.yaml", text)
    with pytest.raises(ValueError) as error:
        load_space(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_space_options_are_checked_against_the_recipe_before_any_fold(tmp_path, capsys):
    space = write_space(tmp_path / "typo.yaml", "parameters:\n  model.hiden_size: {type: categorical, choices: [64, 128]}\n")
    out = tmp_path / "study"
    assert hpo_main(["--task", "microexp", "--config", str(CONFIG), "--space", str(space), "--trials", "1",
                     "--out", str(out), "--folds", "0", "--wandb", "false", "--", *LIGHT,
                     "--data.subjects", "[3, 1, 1]", "--data.per_subject", "3"]) == 2
    err = capsys.readouterr().err
    assert str(space) in err and "model.hiden_size" in err and "did you mean model.hidden_size?" in err
    assert not list(out.glob("trial-*")), "no trial may start"


def test_train_options_before_the_separator_are_sent_after_it(capsys):
    from common.loso import main as loso_main

    for command in (hpo_main, loso_main):
        args = ["--task", "microexp", "--config", str(CONFIG), "--space", "s.yaml", "--trials", "1",
                "--trainer.max_epochs", "3"]
        with pytest.raises(SystemExit, match=r"--trainer.max_epochs is an option of train.py: put it after `--`"):
            command(args if command is hpo_main else ["run", *args[:4], *args[-2:]])


def test_a_failed_fold_reports_its_own_error_line():
    from common.launch import error_line

    stderr = ("train.py: error: Option 'model.hiden_size' is not accepted (in my.yaml)\n"
              "(--help lists every option)\n")
    assert error_line(stderr) == "Option 'model.hiden_size' is not accepted (in my.yaml)"
    traceback = "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: out of memory\n"
    assert error_line(traceback) == "RuntimeError: out of memory"
    assert error_line("error: /d/a.jpg: JPEG is truncated\n(set FACEX_DEBUG=1 to see the traceback)\n") == \
        "/d/a.jpg: JPEG is truncated"


def test_trial_values_become_arguments_train_py_reads_back():
    arguments = as_arguments({"model.lr": 0.0005, "model.hidden_size": 256, "model.freeze_backbone": True,
                              "model.arch": "cnn_lstm", "data.subjects": [3, 1, 1]})
    assert arguments == ["--model.lr", "0.0005", "--model.hidden_size", "256", "--model.freeze_backbone", "true",
                         "--model.arch", "cnn_lstm", "--data.subjects", "[3, 1, 1]"]


def test_epoch_values_skip_a_half_written_line(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/f1\n0,3,1.2,\n0,3,,0.4\n1,7,,0.6\n2,11,,0.")  # "0.83" on its way
    assert epoch_values(path, "val/f1") == {0: 0.4, 1: 0.6}
    path.write_text("epoch,step,train/loss,val/f1\n0,3,1.2,\n0,3,,0.4\n1,7,,0.6\n2,11,,0.83\n")
    assert epoch_values(path, "val/f1") == {0: 0.4, 1: 0.6, 2: 0.83}


# ---------------------------------------------------------------- a whole study


def study_command(out: Path, space: Path, trials: int, flow: Path) -> list[str]:
    return ["--task", "microexp", "--config", str(CONFIG), "--space", str(space), "--trials", str(trials),
            "--folds", "0,1", "--out", str(out), "--parallel", "2", "--pruner-startup-trials", "1",
            "--pruner-warmup-epochs", "2", "--",
            *LIGHT, "--data.subjects", "[2, 1, 1]", "--data.per_subject", "6", "--data.val_fraction", "0.34",
            "--trainer.max_epochs", "12", "--data.feature_cache", str(flow)]


def epochs_trained(trial_dir: Path) -> list[int]:
    return sorted(len(epoch_values(run / "metrics.csv", "val/f1")) for run in trial_dir.glob("folds/*/*/version_*"))


def leave_a_trial_running_as_if_killed(out: Path, study_name: str, lr: float) -> int:
    """A trial that a killed search process left RUNNING: its process is gone."""
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{out / 'study.db'}")
    study.enqueue_trial({"model.lr": lr})
    trial = study.ask({"model.lr": optuna.distributions.FloatDistribution(1e-7, 1e-2, log=True)})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", gone.pid)
    return trial.number


def test_a_study_prunes_resumes_without_losing_a_trial_and_writes_a_best_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out, flow = tmp_path / "study", tmp_path / "flow"
    # a good start point, then a learning rate at which nothing is learned: the second must be pruned
    space = write_space(tmp_path / "lr.yaml", "parameters:\n  model.lr: {type: float, low: 1.0e-7, high: 1.0e-2, "
                                              "log: true}\nstart:\n  - {model.lr: 3.0e-3}\n  - {model.lr: 1.0e-7}\n")
    assert hpo_main(study_command(out, space, 2, flow)) == 0
    first = list(csv.DictReader(open(out / "trials.csv")))
    assert [(r["number"], r["state"]) for r in first] == [("0", "COMPLETE"), ("1", "PRUNED")]
    assert epochs_trained(out / "trial-0000") == [12, 12]
    assert max(epochs_trained(out / "trial-0001")) < 12, "the pruned trial must have been stopped early"
    assert float(first[0]["value"]) > 0.5
    study_name = json.loads((out / "study.json").read_text())["study"]

    stale = leave_a_trial_running_as_if_killed(out, study_name, 1e-3)
    runs_before = {p: p.stat().st_mtime for p in out.glob("trial-000[01]/folds/*/*/version_*/metrics.csv")}
    assert hpo_main(study_command(out, space, 4, flow)) == 0
    assert f"trial {stale} was interrupted" in capsys.readouterr().out
    trials = list(csv.DictReader(open(out / "trials.csv")))
    states = {int(r["number"]): r["state"] for r in trials}
    assert states[stale] == "FAIL" and [n for n, s in states.items() if s in ("COMPLETE", "PRUNED")] == [0, 1, 3, 4]
    retried = next(r for r in trials if r["number"] == "3")
    assert float(retried["model.lr"]) == 1e-3, "the interrupted trial must run again with its values"
    assert {p: p.stat().st_mtime for p in out.glob("trial-000[01]/folds/*/*/version_*/metrics.csv")} == runs_before
    assert len({r["model.lr"] for r in trials if r["number"] != str(stale)}) == 4

    summary = json.loads((out / "study.json").read_text())
    assert summary["objective"] == "val" and "no test subject is read" in summary["objective_means"]
    best = max((r for r in trials if r["state"] == "COMPLETE"), key=lambda r: float(r["value"]))
    assert summary["best"]["trial"] == int(best["number"])
    assert (out / "history.png").stat().st_size > 0 and (out / "importances.png").stat().st_size > 0
    assert list((out / "wandb").glob("offline-run-*")), "the study itself must be logged to W&B"
    for config in out.glob("trial-*/folds/*/*/version_*/config.yaml"):
        assert yaml.safe_load(config.read_text())["run"]["group"] == study_name

    recipe = yaml.safe_load((out / "best.yaml").read_text())
    assert recipe["model"]["init_args"]["lr"] == pytest.approx(float(best["model.lr"]))
    rerun = subprocess.run([sys.executable, str(REPO / "train.py"), "--task", "microexp", "fit", "--config",
                            str(out / "best.yaml"), "--trainer.fast_dev_run", "true", "--data.feature_cache", str(flow),
                            "--run.root", str(tmp_path / "rerun")], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]


def test_validation_objective_never_reads_the_held_out_subject(tmp_path):
    """Fold 0's held-out subject has unreadable frames: a search that touched them would fail."""
    from common.data.readers import ReadError
    from common.data.splits import make_folds
    from common.synth.formats.microexp import write_casme2
    from microexp.data import MicroExpDataModule

    written = write_casme2(tmp_path / "CASME2", subjects=3, per_subject=4, size=48)
    subjects = sorted({f"casme2/{r.subject}" for r in written.records})
    held_out = next(s for s, fold in make_folds(subjects, "loso").items() if fold == 0).split("/")[1]
    for frame in written.root.glob(f"*/{held_out}/*/*.jpg"):
        frame.write_bytes(b"not a jpeg")
    data = dict(dataset="casme2", root=str(written.root), fold=0, image_size=32, clip_length=4, num_workers=0,
                val_fraction=0.5)
    check = MicroExpDataModule(**data)
    check.setup("fit")
    with pytest.raises(ReadError, match=held_out):  # reading the held-out subject does fail, naming it
        check.test_set[0]

    space = write_space(tmp_path / "lr.yaml", "parameters:\n  model.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n")
    out = tmp_path / "study"
    arguments = ["--model.arch", "roi_transformer", "--data.inputs", "roi_flow", "--model.label_smoothing", "0",
                 "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--run.wandb", "false",
                 "--trainer.max_epochs", "1", "--data.batch_size", "4",
                 "--data.feature_cache", str(tmp_path / "flow"),
                 *(f"--data.{k}={v}" for k, v in data.items() if k != "fold")]
    recipe = REPO / "configs" / "microexp" / "casme2_cnn_lstm.yaml"
    assert hpo_main(["--task", "microexp", "--config", str(recipe), "--space", str(space), "--trials", "1",
                     "--folds", "0", "--out", str(out), "--pruner", "none", "--wandb", "false", "--", *arguments]) == 0
    trial = list(csv.DictReader(open(out / "trials.csv")))[0]
    assert trial["state"] == "COMPLETE"
    fit_dir = next(out.glob("trial-0000/folds/*/*/version_0"))
    assert held_out in {r["subject"].split("/")[-1] for r in csv.DictReader(open(fit_dir / "folds.csv"))
                        if r["fold"] == "0"}
    assert not list(out.glob("trial-0000/folds/*/*/version_*/predictions.csv")), "no fold may be tested"
