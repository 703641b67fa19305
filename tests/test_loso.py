"""common.loso: MEGC pooling of prediction files, and a whole LOSO run over synthetic subjects."""
from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from common.loso import main as loso_main
from common.predictions import write_rows

CLASSES = ["negative", "positive", "surprise"]


def write_fold(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """rows: (dataset, subject, label, pred); probabilities follow the prediction."""
    columns = ["dataset", "subject", "sample", "label", "pred", *(f"p_{c}" for c in CLASSES)]
    data = [{"dataset": d, "subject": s, "sample": f"{s}/{i}", "label": label, "pred": pred,
             **{f"p_{c}": f"{0.8 if c == pred else 0.1:.6f}" for c in CLASSES}}
            for i, (d, s, label, pred) in enumerate(rows)]
    write_rows(path, columns, data)
    return path


def reference_scores(pairs: list[tuple[str, str]]) -> tuple[float, float]:
    """UF1 and UAR from a confusion matrix over every clip of every fold, computed independently."""
    matrix = np.zeros((3, 3))
    for label, pred in pairs:
        matrix[CLASSES.index(label), CLASSES.index(pred)] += 1
    present = matrix.sum(1) > 0
    tp = np.diag(matrix)
    f1 = [2 * tp[c] / (matrix[c].sum() + matrix[:, c].sum()) if matrix[c].sum() + matrix[:, c].sum() else 0.0
          for c in range(3)]
    recall = [tp[c] / matrix[c].sum() if matrix[c].sum() else 0.0 for c in range(3)]
    return float(np.mean(np.array(f1)[present])), float(np.mean(np.array(recall)[present]))


@pytest.fixture()
def folds(tmp_path):
    # surprise is never predicted; subject s3's fold holds one class only
    return [
        write_fold(tmp_path / "f0.csv", [("smic", "s1", "negative", "negative"), ("smic", "s1", "positive", "negative"),
                                         ("smic", "s1", "surprise", "positive")]),
        write_fold(tmp_path / "f1.csv", [("casme2", "sub01", "negative", "negative"),
                                         ("casme2", "sub01", "surprise", "negative"),
                                         ("casme2", "sub01", "positive", "positive")]),
        write_fold(tmp_path / "f2.csv", [("casme2", "s3", "positive", "positive"), ("casme2", "s3", "positive", "negative")]),
    ]


def pairs_of(paths) -> list[tuple[str, str, str]]:
    return [(r["dataset"], r["label"], r["pred"]) for p in paths for r in csv.DictReader(open(p))]


def test_scores_pool_every_fold_before_averaging(folds, capsys):
    assert loso_main(["score", *map(str, folds), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    everything = pairs_of(folds)
    uf1, uar = reference_scores([(label, pred) for _, label, pred in everything])
    assert scores["uf1"] == pytest.approx(uf1) and scores["uar"] == pytest.approx(uar)
    assert scores["per_class"]["surprise"]["f1"] == 0 and scores["per_class"]["surprise"]["support"] == 2
    for dataset in ("smic", "casme2"):
        uf1, uar = reference_scores([(label, pred) for d, label, pred in everything if d == dataset])
        assert scores["by_dataset"][dataset]["uf1"] == pytest.approx(uf1)
        assert scores["by_dataset"][dataset]["uar"] == pytest.approx(uar)
    # averaging per-fold UF1 instead would give another number: the pooling is what is tested
    per_fold = np.mean([reference_scores([(l, p) for _, l, p in pairs_of([f])])[0] for f in folds])
    assert abs(per_fold - scores["uf1"]) > 1e-3
    subjects = {(r["dataset"], r["subject"]): r for r in scores["by_subject"]}
    assert subjects[("casme2", "s3")]["accuracy"] == 0.5 and subjects[("casme2", "s3")]["samples"] == 2


def test_score_writes_the_pooled_file_table_and_plot(folds, tmp_path, capsys):
    out = tmp_path / "pooled"
    assert loso_main(["score", *map(str, folds), "--out", str(out)]) == 0
    assert "UF1" in capsys.readouterr().out
    assert len(list(csv.DictReader(open(out / "predictions.csv")))) == 8
    assert {"uf1", "uar", "by_dataset"} <= set(json.loads((out / "scores.json").read_text()))
    assert (out / "subjects.png").stat().st_size > 0 and len((out / "subjects.csv").read_text().splitlines()) == 4


def test_a_clip_predicted_twice_is_refused(folds, capsys):
    assert loso_main(["score", str(folds[0]), str(folds[0])]) == 2
    assert "already predicted" in capsys.readouterr().err


LIGHT_MICRO = ["--model.arch", "roi_transformer", "--data.inputs", "roi_flow", "--data.image_size", "64",
               "--data.clip_length", "8", "--data.subjects", "[3, 1, 1]", "--data.per_subject", "6",
               "--data.batch_size", "6", "--data.num_workers", "0", "--data.val_fraction", "0.2", "--model.lr", "2e-3",
               "--model.label_smoothing", "0", "--trainer.max_epochs", "12", "--trainer.accelerator", "cpu",
               "--trainer.enable_progress_bar", "false", "--run.wandb", "false"]
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "microexp" / "synthetic.yaml"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """Five subjects, five folds, two at a time, with the light ROI-Transformer on optical-flow features."""
    tmp = tmp_path_factory.mktemp("loso")
    out, args = tmp / "loso", [*LIGHT_MICRO, "--data.feature_cache", str(tmp / "flow")]
    command = ["run", "--task", "microexp", "--config", str(CONFIG), "--parallel", "2", "--out", str(out)]
    assert loso_main([*command, "--", *args]) == 0
    return out, command, args


def reuse_fold_table(planned: Path, out: Path) -> None:
    """The same recipe gives the same table: copying it spares a second planning run."""
    out.mkdir(parents=True)
    shutil.copy(planned / "folds.csv", out / "folds.csv")


def fold_predictions(out: Path, fold: int) -> list[dict]:
    run = json.loads((out / "loso.json").read_text())["folds"][str(fold)]
    return sorted(csv.DictReader(open(Path(run["test_dir"]) / "predictions.csv")), key=lambda r: r["sample"])


def test_loso_over_synthetic_subjects_scores_well_above_chance_and_reruns_a_fold(local_run):
    out, command, args = local_run
    manifest = json.loads((out / "loso.json").read_text())
    assert sorted(manifest["folds"], key=int) == [str(k) for k in range(5)]
    assert all(f["status"] == "done" for f in manifest["folds"].values())
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 5 * 6 and len({r["sample"] for r in rows}) == 30
    planned = {r["subject"]: int(r["fold"]) for r in csv.DictReader(open(out / "folds.csv"))}
    for fold, run in manifest["folds"].items():
        held_out = {r["subject"] for r in csv.DictReader(open(Path(run["test_dir"]) / "predictions.csv"))}
        table = {r["subject"]: int(r["fold"]) for r in csv.DictReader(open(Path(run["fit_dir"]) / "folds.csv"))}
        assert table == planned, "every fold must use the table planned before the folds ran"
        assert held_out == {s for s, f in table.items() if f == int(fold)}
        assert yaml.safe_load((Path(run["fit_dir"]) / "config.yaml").read_text())["run"]["group"] == "loso"
    scores = json.loads((out / "scores.json").read_text())
    assert scores["samples"] == 30 and scores["uf1"] >= 0.6 and scores["uar"] >= 0.6, scores  # chance: 1/3

    # a crashed fold is re-run alone, with the same result, and the aggregate rewritten
    before = fold_predictions(out, 2)
    manifest["folds"]["2"]["status"] = "failed"
    (out / "loso.json").write_text(json.dumps(manifest))
    (out / "scores.json").unlink()
    assert loso_main([*command, "--folds", "2", "--", *args]) == 0
    rerun = json.loads((out / "loso.json").read_text())["folds"]["2"]
    assert rerun["status"] == "done" and rerun["fit_dir"] != manifest["folds"]["2"]["fit_dir"]
    assert json.loads((out / "scores.json").read_text())["samples"] == 30
    assert [(r["sample"], r["pred"]) for r in fold_predictions(out, 2)] == [(r["sample"], r["pred"]) for r in before]


def test_ray_runs_folds_as_tasks_with_the_same_results_as_local(local_run, tmp_path, capsys):
    pytest.importorskip("ray")
    out, _, args = local_run
    ray_out = tmp_path / "ray"
    reuse_fold_table(out, ray_out)
    command = ["run", "--task", "microexp", "--config", str(CONFIG), "--launcher", "ray", "--folds", "0,1,2",
               "--out", str(ray_out)]
    assert loso_main([*command, "--", *args]) == 1  # 3 of 5 folds: no pooled file yet, and it says so
    assert "3 of 5 folds done" in capsys.readouterr().err
    manifest = json.loads((ray_out / "loso.json").read_text())
    assert {k: f["status"] for k, f in manifest["folds"].items()} == {"0": "done", "1": "done", "2": "done"}
    for fold in range(3):
        mine, theirs = fold_predictions(ray_out, fold), fold_predictions(out, fold)
        assert [(r["sample"], r["pred"]) for r in mine] == [(r["sample"], r["pred"]) for r in theirs]
        assert np.allclose([[float(r[f"p_{c}"]) for c in CLASSES] for r in mine],
                           [[float(r[f"p_{c}"]) for c in CLASSES] for r in theirs], atol=1e-4)
    pooled = lambda root: [Path(json.loads((root / "loso.json").read_text())["folds"][str(k)]["test_dir"]) /
                           "predictions.csv" for k in range(3)]
    assert loso_main(["score", *map(str, pooled(ray_out)), "--json"]) == 0
    ray_scores = json.loads(capsys.readouterr().out)
    assert loso_main(["score", *map(str, pooled(out)), "--json"]) == 0
    local_scores = json.loads(capsys.readouterr().out)
    assert (ray_scores["uf1"], ray_scores["uar"]) == (local_scores["uf1"], local_scores["uar"])


def sbatch_directives(script: str) -> dict[str, str]:
    directives = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH"):
            key, _, value = line.split(None, 1)[1].partition("=")
            assert key.startswith("--") and value, line
            directives[key[2:]] = value
    return directives


def array_indices(spec: str) -> list[int]:
    spec = spec.split("%")[0]
    indices = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        indices += list(range(int(first), int(last or first) + 1))
    return indices


def test_slurm_array_script_has_one_valid_task_per_fold(tmp_path, capsys):
    from common.data.splits import save_folds

    out = tmp_path / "megc"
    out.mkdir()
    save_folds(out / "folds.csv", {f"s{k:02d}": k for k in range(68)})  # a composite MEGC2019 table: 68 folds
    command = ["run", "--task", "microexp", "--config", str(CONFIG), "--launcher", "slurm", "--out", str(out),
               "--gpus-per-fold", "2", "--time", "02:30:00", "--partition", "gpu", "--parallel", "8"]
    assert loso_main([*command, "--", "--trainer.max_epochs", "3"]) == 0
    assert "score --run" in capsys.readouterr().out
    script = (out / "loso.sbatch").read_text()
    directives = sbatch_directives(script)
    assert array_indices(directives["array"]) == list(range(68)) and directives["array"].endswith("%8")
    assert directives["gres"] == "gpu:2" and directives["time"] == "02:30:00" and directives["partition"] == "gpu"
    assert set(directives) <= {"job-name", "array", "ntasks", "gres", "cpus-per-task", "time", "output", "mem",
                               "partition", "account"}
    assert "%a" in directives["output"] and int(directives["cpus-per-task"]) > 0
    body = [line for line in script.splitlines() if line and not line.startswith("#")]
    assert any("--data.fold $SLURM_ARRAY_TASK_ID" in line and "--trainer.max_epochs 3" in line for line in body)
    assert subprocess.run(["bash", "-n", str(out / "loso.sbatch")]).returncode == 0

    # a re-run writes only the folds not yet done
    manifest = json.loads((out / "loso.json").read_text())
    manifest["folds"] = {str(k): {"fold": k, "status": "done"} for k in range(60)}
    (out / "loso.json").write_text(json.dumps(manifest))
    assert loso_main([*command, "--", "--trainer.max_epochs", "3"]) == 0
    assert array_indices(sbatch_directives((out / "loso.sbatch").read_text())["array"]) == list(range(60, 68))


def test_an_array_task_runs_its_fold_and_records_it_beside_the_others(tmp_path, monkeypatch, capsys):
    """What each index of the SLURM script runs (`common.loso fold ... --data.fold K`), with the fold's training
    replaced: the fold it is given is run with the run's recipe and lands in the shared manifest."""
    from common import launch, loso

    seen = []

    def fake_fold(job, gpu=None, threads=None):
        seen.append((job.fold, job.config, job.extra, job.stages))
        return launch.FoldRun(job.fold, fit_dir="f", test_dir="t", status="done", seconds=1.0)

    monkeypatch.setattr(loso, "run_fold_job", fake_fold)
    out = tmp_path / "slurm"
    command = ["run", "--task", "microexp", "--config", str(CONFIG), "--launcher", "slurm", "--out", str(out)]
    (out).mkdir()
    (out / "folds.csv").write_text("subject,fold\na,0\nb,1\nc,2\nd,3\n")
    assert loso_main([*command, "--", "--trainer.max_epochs", "3"]) == 0
    task = next(line for line in (out / "loso.sbatch").read_text().splitlines() if "$SLURM_ARRAY_TASK_ID" in line)
    argv = [a.replace("$SLURM_ARRAY_TASK_ID", "3") for a in shlex.split(task)]
    assert argv[1:3] == ["-m", "common.loso"]
    for fold in (3, 1):
        argv[argv.index("--data.fold") + 1] = str(fold)
        assert loso_main(argv[3:]) == 0
    assert seen == [(k, str(CONFIG.resolve()), ["--trainer.max_epochs", "3"], ("fit", "test")) for k in (3, 1)]
    folds = json.loads((out / "loso.json").read_text())["folds"]
    assert {k: f["status"] for k, f in folds.items()} == {"1": "done", "3": "done"}
    assert loso_main(["score", "--run", str(out)]) == 1 and "2 of 4 folds done" in capsys.readouterr().err


def test_local_launcher_never_gives_one_gpu_to_two_running_folds(monkeypatch):
    import threading
    import time

    from common import launch

    running, lock, overlaps = {}, threading.Lock(), []

    def fake_fold(job, gpu=None, threads=None):
        with lock:
            if gpu in running.values():
                overlaps.append((job.fold, gpu))
            running[job.fold] = gpu
        time.sleep(0.05 * (1 + job.fold % 3))  # unequal lengths: folds finish out of order
        with lock:
            del running[job.fold]
        return launch.FoldRun(job.fold, status="done")

    monkeypatch.setattr(launch, "run_fold_job", fake_fold)
    finished = []
    jobs = [launch.FoldJob("microexp", "c.yaml", k) for k in range(9)]
    launch.LocalLauncher(parallel=2, gpus=[0, 1]).run(jobs, started=lambda r: None, finished=finished.append)
    assert not overlaps and sorted(r.fold for r in finished) == list(range(9))
