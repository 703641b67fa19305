"""common.loso: MEGC pooling of prediction files, and a whole LOSO run over synthetic subjects."""
from __future__ import annotations

import csv
import json
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


def test_loso_over_synthetic_subjects_scores_well_above_chance_and_reruns_a_fold(tmp_path):
    """Five subjects, five folds, two at a time, with the light ROI-Transformer on optical-flow features."""
    out = tmp_path / "loso"
    args = ["--model.arch", "roi_transformer", "--data.inputs", "roi_flow", "--data.feature_cache", str(tmp_path / "flow"),
            "--data.image_size", "64", "--data.clip_length", "8", "--data.subjects", "[3, 1, 1]",
            "--data.per_subject", "6", "--data.batch_size", "6", "--data.num_workers", "0", "--data.val_fraction", "0.2",
            "--model.lr", "2e-3", "--model.label_smoothing", "0", "--trainer.max_epochs", "12",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--run.wandb", "false"]
    config = Path(__file__).resolve().parents[1] / "configs" / "microexp" / "synthetic.yaml"
    command = ["run", "--task", "microexp", "--config", str(config), "--parallel", "2", "--out", str(out)]
    assert loso_main([*command, "--", *args]) == 0
    manifest = json.loads((out / "loso.json").read_text())
    assert sorted(manifest["folds"], key=int) == [str(k) for k in range(5)]
    assert all(f["status"] == "done" for f in manifest["folds"].values())
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 5 * 6 and len({r["sample"] for r in rows}) == 30
    for fold, run in manifest["folds"].items():
        held_out = {r["subject"] for r in csv.DictReader(open(Path(run["test_dir"]) / "predictions.csv"))}
        table = {r["subject"]: int(r["fold"]) for r in csv.DictReader(open(Path(run["fit_dir"]) / "folds.csv"))}
        assert held_out == {s for s, f in table.items() if f == int(fold)}
        assert yaml.safe_load((Path(run["fit_dir"]) / "config.yaml").read_text())["run"]["group"] == "loso"
    scores = json.loads((out / "scores.json").read_text())
    assert scores["samples"] == 30 and scores["uf1"] >= 0.6 and scores["uar"] >= 0.6, scores  # chance: 1/3

    # a crashed fold is re-run alone and the aggregate rewritten
    manifest["folds"]["2"]["status"] = "failed"
    (out / "loso.json").write_text(json.dumps(manifest))
    (out / "scores.json").unlink()
    assert loso_main([*command, "--folds", "2", "--", *args]) == 0
    rerun = json.loads((out / "loso.json").read_text())["folds"]["2"]
    assert rerun["status"] == "done" and rerun["fit_dir"] != manifest["folds"]["2"]["fit_dir"]
    assert json.loads((out / "scores.json").read_text())["samples"] == 30
