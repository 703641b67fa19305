"""AU metrics as the literature reports them, and `python -m au.evaluate PRED.csv ... [--json]`.

Occurrence: per AU, TP/FP/FN accumulated over the whole test fold at threshold 0.5, F1 per AU, and the mean over
the dataset's standard AUs (BP4D 12, DISFA 8) and over all the AUs it labels; the folds of a protocol are scored
one by one and averaged, as the papers do. The standard-AU mean (`mean_f1_standard`) is reported wherever the
dataset is known: at the top for a file of one dataset, per dataset always. Intensity: ICC(3,1) between prediction
and label, and MAE, per AU; an ICC with no variance to explain (constant ratings) is undefined and reported as
null, and a mean over none of them is null too.

Prediction files use OpenFace's names: per AU `AU01_c` (occurrence 0/1), `AU01_r` (intensity 0-5, reported as 0
where AU01_c is 0), `AU01_p` (probability), and where known `AU01_label` / `AU01_mask` (occurrence label and
whether it is annotated) and `AU01_r_label` / `AU01_r_mask` (intensity label).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from common.labels import au_name, au_standard
from au.contract import openface_columns  # noqa: F401 -- the contract's column rule, for notebooks


def f1_counts(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per AU (last axis) TP, FP, FN over the annotated entries of [n, K] 0/1 arrays."""
    pred, true, mask = (np.asarray(a).astype(bool) for a in (pred, true, mask))
    return ((pred & true & mask).sum(0), (pred & ~true & mask).sum(0), (~pred & true & mask).sum(0))


def f1_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)


def icc_3_1(pred: np.ndarray, true: np.ndarray) -> float:
    """ICC(3,1) (Shrout & Fleiss: two-way mixed, consistency, single rater) between two raters of n targets."""
    ratings = np.stack([np.asarray(pred, float), np.asarray(true, float)], axis=1)
    n, k = ratings.shape
    if n < 2:
        return float("nan")
    grand = ratings.mean()
    ss_rows = k * ((ratings.mean(1) - grand) ** 2).sum()
    ss_cols = n * ((ratings.mean(0) - grand) ** 2).sum()
    ss_error = ((ratings - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows, ms_error = ss_rows / (n - 1), ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error
    return float((ms_rows - ms_error) / denominator) if denominator > 0 else float("nan")


def columns_aus(columns: Sequence[str]) -> list[int]:
    return [int(c[2:-2]) for c in columns if c.startswith("AU") and c.endswith("_c")]


def score_file(path: Path | str) -> dict:
    """Scores of one test fold's predictions file, overall and per dataset."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path}: no predictions")
    aus = columns_aus(rows[0])
    missing = [f"{au_name(au)}_label" for au in aus if f"{au_name(au)}_label" not in rows[0]]
    if missing:
        raise ValueError(f"{path}: no labels to score against (column {missing[0]} missing)")
    datasets = sorted({r["dataset"] for r in rows})
    report = score_rows(rows, aus, datasets[0] if len(datasets) == 1 else None)
    report["by_dataset"] = {d: score_rows([r for r in rows if r["dataset"] == d], aus, d) for d in datasets}
    return report


def column(rows: Sequence[dict], name: str) -> np.ndarray:
    return np.array([float(r[name]) if r.get(name, "") != "" else 0.0 for r in rows])


def score_rows(rows: Sequence[dict], aus: Sequence[int], dataset: str | None = None) -> dict:
    names = [au_name(au) for au in aus]
    pred = np.stack([column(rows, f"{n}_c") for n in names], 1)
    true = np.stack([column(rows, f"{n}_label") for n in names], 1)
    mask = np.stack([column(rows, f"{n}_mask") for n in names], 1)
    f1 = f1_scores(*f1_counts(pred, true, mask))
    labelled = mask.sum(0) > 0
    per_au = {n: {"f1": float(f), "annotated": int(m)} for n, f, m in zip(names, f1, mask.sum(0))}
    report = {"samples": len(rows), "per_au": per_au,
              "mean_f1": float(f1[labelled].mean()) if labelled.any() else None}
    try:
        standard = [au_name(au) for au in au_standard(dataset)] if dataset else []
    except KeyError:
        standard = []
    chosen = [i for i, n in enumerate(names) if n in standard and labelled[i]]
    if chosen:
        report["mean_f1_standard"] = float(f1[chosen].mean())
    intensity = {}
    for n in names:
        if f"{n}_r_mask" in rows[0]:
            known = column(rows, f"{n}_r_mask") > 0
            if known.sum() > 1:
                raw, label = column(rows, f"{n}_r_raw")[known], column(rows, f"{n}_r_label")[known]
                icc = icc_3_1(raw, label)
                intensity[n] = {"icc": icc if np.isfinite(icc) else None, "mae": float(np.abs(raw - label).mean())}
    if intensity:
        report["intensity"] = intensity
        report["mean_icc"] = mean_defined([v["icc"] for v in intensity.values()])
        report["mean_mae"] = float(np.mean([v["mae"] for v in intensity.values()]))
    return report


def mean_defined(values) -> float | None:
    """The mean of the values that are numbers; None (undefined) when none is, e.g. an ICC of constant ratings."""
    defined = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(defined)) if defined else None


SUMMARY_KEYS = ("mean_f1", "mean_f1_standard", "mean_icc", "mean_mae")


def aggregate(folds: list[dict]) -> dict:
    """The folds' scores and their means (the protocol's reported numbers); a fold whose ICC is undefined does not
    enter the ICC mean, which is undefined (None) when no fold has one."""
    datasets = sorted({d for f in folds for d in f.get("by_dataset", {})})
    by_dataset = {d: fold_means([f["by_dataset"][d] for f in folds if d in f["by_dataset"]]) for d in datasets}
    return {**fold_means(folds), "by_dataset": by_dataset, "folds": folds}


def fold_means(reports: list[dict]) -> dict:
    return {k: mean_defined([r[k] for r in reports]) for k in SUMMARY_KEYS if all(k in r for r in reports)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m au.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="one predictions.csv per test fold")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = aggregate([score_file(p) for p in args.predictions])
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"au.evaluate: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"mean F1 over {len(report['folds'])} fold(s): {_number(report['mean_f1'])}"
          + (f", standard AUs {_number(report['mean_f1_standard'])}" if "mean_f1_standard" in report else ""))
    for name, part in report["by_dataset"].items():
        print(f"  {name}: " + ", ".join(f"{k} {_number(v)}" for k, v in part.items()))
    if "mean_mae" in report:
        print(f"intensity: ICC(3,1) {_number(report.get('mean_icc'))}, MAE {report['mean_mae']:.4f}")
    return 0


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
