"""Leave-one-subject-out at scale: run every fold, pool the predictions, score them as MEGC does.

    python -m common.loso run --task microexp --config C [--folds all|K,K,...] [--parallel N] [--out DIR] [-- ARGS]
    python -m common.loso score PRED.csv [PRED.csv ...] [--json] [--out DIR]

`run` trains each fold as a run of its own (`train.py --task T fit --config C --data.fold K`, all folds in one W&B
group named after the output folder), then tests the fold's checkpoint on its held-out subject(s): the checkpoint chosen on validation subjects
carved from the training subjects, or the last one for a fixed epoch budget; the held-out subject is never looked
at before that test. Folds run one after another, or N at a time with one GPU each. Progress and outcome of every
fold are kept in `loso.json` in the output folder, so a crashed fold is re-run alone (`--folds 7`) and the
aggregate is updated; when every fold of the fold table has its predictions, `run` writes the pooled
`predictions.csv`, `scores.json`, `subjects.csv` and `subjects.png` there.

A spotting run (whose folds write `ground_truth.csv` beside their submission files) is pooled by
`spotting.evaluate.pool_folds` instead: `predictions.csv`, `baseline_predictions.csv`, `ground_truth.csv` and
`scores.json` (MEGC spotting F1 of the learned spotter and of the baseline, counts summed over every fold).

`score` pools prediction files (one row per clip: dataset, subject, sample, label, pred, p_<class>...) and prints
the MEGC2019 recognition scores: for each class TP, FP and FN summed over all folds, F1 and recall per class,
averaged over the classes that occur (UF1, UAR); overall and per dataset of a joint set; and a per-subject table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from common.predictions import ID_COLUMNS, PREDICTIONS_FILE, read_predictions, write_rows

REPO = Path(__file__).resolve().parent.parent
MANIFEST = "loso.json"


# ---------------------------------------------------------------- scoring


@dataclass
class Scores:
    classes: list[str]
    samples: int
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    support: np.ndarray

    @property
    def present(self) -> np.ndarray:
        return self.support > 0

    @property
    def f1(self) -> np.ndarray:
        denominator = 2 * self.tp + self.fp + self.fn
        return np.divide(2 * self.tp, denominator, out=np.zeros(len(self.tp)), where=denominator > 0)

    @property
    def recall(self) -> np.ndarray:
        return np.divide(self.tp, self.support, out=np.zeros(len(self.tp)), where=self.support > 0)

    @property
    def uf1(self) -> float:
        return float(self.f1[self.present].mean()) if self.present.any() else float("nan")

    @property
    def uar(self) -> float:
        return float(self.recall[self.present].mean()) if self.present.any() else float("nan")

    def as_dict(self) -> dict:
        per_class = {c: {"tp": int(t), "fp": int(f), "fn": int(n), "support": int(s), "f1": float(f1),
                         "recall": float(r)}
                     for c, t, f, n, s, f1, r in zip(self.classes, self.tp, self.fp, self.fn, self.support,
                                                     self.f1, self.recall)}
        return {"uf1": self.uf1, "uar": self.uar, "samples": self.samples, "per_class": per_class}


def class_columns(rows: Sequence[dict]) -> list[str]:
    return [c[2:] for c in rows[0] if c.startswith("p_")] if rows else []


def score_rows(rows: Sequence[dict], classes: Sequence[str]) -> Scores:
    """MEGC pooling: counts summed over every row (every fold) before F1 and recall are taken per class."""
    index = {c: i for i, c in enumerate(classes)}
    tp, fp, fn, support = (np.zeros(len(classes), dtype=np.int64) for _ in range(4))
    for row in rows:
        label, pred = index[row["label"]], index[row["pred"]]
        support[label] += 1
        if label == pred:
            tp[label] += 1
        else:
            fp[pred] += 1
            fn[label] += 1
    return Scores(list(classes), len(rows), tp, fp, fn, support)


def pool(paths: Iterable[Path | str]) -> tuple[list[dict], list[str]]:
    """Rows of every file (with a label), checked to share one class list; a clip in two files is an error."""
    rows, classes, seen = [], None, {}
    for path in paths:
        part = read_predictions(path)
        if not part:
            continue
        mine = class_columns(part)
        if classes is None:
            classes = mine
        elif mine != classes:
            raise ValueError(f"{path}: classes {mine} differ from {classes} of the files before it")
        missing = [c for c in (*ID_COLUMNS, "label", "pred") if c not in part[0]]
        if missing:
            raise ValueError(f"{path}: not a predictions file (no column {', '.join(missing)})")
        for line, row in enumerate(part, start=2):
            key = (row["dataset"], row["sample"])
            if key in seen:
                raise ValueError(f"{path}, line {line}: {key[0]} sample {key[1]} was already predicted in {seen[key]}")
            seen[key] = path
            if not row["label"]:
                raise ValueError(f"{path}, line {line}: no label; only predictions of labelled clips can be scored")
            rows.append(row)
    if classes is None:
        raise ValueError("no predictions to score")
    return rows, classes


def report(rows: Sequence[dict], classes: Sequence[str]) -> dict:
    overall = score_rows(rows, classes).as_dict()
    datasets = sorted({r["dataset"] for r in rows})
    overall["by_dataset"] = {d: score_rows([r for r in rows if r["dataset"] == d], classes).as_dict() for d in datasets}
    overall["by_subject"] = subject_table(rows, classes)
    return overall


def subject_table(rows: Sequence[dict], classes: Sequence[str]) -> list[dict]:
    subjects = sorted({(r["dataset"], r["subject"]) for r in rows})
    table = []
    for dataset, subject in subjects:
        mine = [r for r in rows if r["dataset"] == dataset and r["subject"] == subject]
        scores = score_rows(mine, classes)
        table.append({"dataset": dataset, "subject": subject, "samples": len(mine),
                      "accuracy": float(scores.tp.sum() / len(mine)), "uf1": scores.uf1, "uar": scores.uar})
    return table


def write_report(out: Path, rows: Sequence[dict], classes: Sequence[str], scores: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / PREDICTIONS_FILE, list(rows[0]), rows)
    (out / "scores.json").write_text(json.dumps({k: v for k, v in scores.items() if k != "by_subject"}, indent=2))
    with open(out / "subjects.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["dataset", "subject", "samples", "accuracy", "uf1", "uar"])
        writer.writeheader()
        writer.writerows(scores["by_subject"])
    subject_plot(scores["by_subject"], out / "subjects.png")


def subject_plot(table: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['dataset']}/{r['subject']}" for r in table]
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(names)), 3.2))
    ax.bar(range(len(names)), [r["accuracy"] for r in table], color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("accuracy of the held-out subject")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_lines(scores: dict) -> list[str]:
    lines = [f"UF1 {scores['uf1']:.4f}  UAR {scores['uar']:.4f}  ({scores['samples']} clips)"]
    for name, part in scores["by_dataset"].items():
        lines.append(f"  {name:<10} UF1 {part['uf1']:.4f}  UAR {part['uar']:.4f}  ({part['samples']} clips)")
    lines.append("per class: " + ", ".join(f"{c} F1 {v['f1']:.3f} recall {v['recall']:.3f} (n={v['support']})"
                                           for c, v in scores["per_class"].items()))
    lines.append("per subject (dataset/subject: clips, accuracy):")
    lines += [f"  {r['dataset']}/{r['subject']}: {r['samples']}, {r['accuracy']:.3f}" for r in scores["by_subject"]]
    return lines


def score_command(args: argparse.Namespace) -> int:
    rows, classes = pool(args.predictions)
    scores = report(rows, classes)
    if args.out:
        write_report(Path(args.out), rows, classes, scores)
    if args.json:
        print(json.dumps({k: v for k, v in scores.items()}, indent=2))
    else:
        print("\n".join(summary_lines(scores)))
    return 0


# ---------------------------------------------------------------- running the folds


@dataclass
class FoldRun:
    fold: int
    fit_dir: str | None = None
    test_dir: str | None = None
    status: str = "pending"  # pending | running | done | failed
    error: str = ""
    seconds: float = 0.0


class Manifest:
    """`loso.json`: what each fold did; rewritten after every change, so a crash loses nothing."""

    def __init__(self, out: Path, task: str, config: str, extra: Sequence[str]):
        self.path = out / MANIFEST
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.task, self.config, self.extra = task, config, list(extra)
        self.folds: dict[int, FoldRun] = {int(k): FoldRun(**v) for k, v in saved.get("folds", {}).items()}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"task": self.task, "config": self.config, "extra": self.extra,
                "folds": {str(k): vars(v) for k, v in sorted(self.folds.items())}}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=2))
        os.replace(temporary, self.path)


def train_command(task: str, stage: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "--task", task, stage, *args]


def newest_version(base: Path, before: set[Path]) -> Path | None:
    made = [p for p in base.glob("*/*/version_*") if p not in before]
    return max(made, key=lambda p: p.stat().st_mtime) if made else None


def chosen_checkpoint(fit_dir: Path) -> Path:
    """The checkpoint chosen on the validation subjects where there is one, else the last (fixed budget)."""
    best = sorted(p for p in (fit_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    return best[-1] if best else fit_dir / "checkpoints" / "last.ckpt"


def run_fold(run: FoldRun, manifest: Manifest, runs_root: Path, gpu: int | None, lock) -> FoldRun:
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {})}
    common = ["--run.root", str(runs_root), "--run.group", runs_root.parent.name]
    start = time.monotonic()
    with lock:
        before = set(runs_root.glob("*/*/version_*"))
        run.status = "running"
        manifest.save()
    fit = subprocess.run(train_command(manifest.task, "fit", "--config", manifest.config, "--data.fold",
                                       str(run.fold), *common, *manifest.extra), env=env, capture_output=True, text=True)
    with lock:
        fit_dir = newest_fold_dir(runs_root, before, run.fold)
    if fit.returncode != 0 or fit_dir is None:
        return finish(run, manifest, lock, "failed", start, error=last_lines(fit.stderr))
    run.fit_dir = str(fit_dir)
    with lock:
        before = set(runs_root.glob("*/*/version_*"))
    test = subprocess.run(train_command(manifest.task, "test", "--config", str(fit_dir / "config.yaml"),
                                        "--ckpt_path", str(chosen_checkpoint(fit_dir)), "--run.name",
                                        fit_dir.parent.name, "--run.group", runs_root.parent.name),
                          env=env, capture_output=True, text=True)
    with lock:
        test_dir = newest_fold_dir(runs_root, before, run.fold)
    if test.returncode != 0 or test_dir is None or not (test_dir / PREDICTIONS_FILE).is_file():
        return finish(run, manifest, lock, "failed", start, error=last_lines(test.stderr))
    run.test_dir = str(test_dir)
    return finish(run, manifest, lock, "done", start)


def newest_fold_dir(runs_root: Path, before: set[Path], fold: int) -> Path | None:
    made = [p for p in runs_root.glob("*/*/version_*") if p not in before and p.parent.name.endswith(f"-fold{fold}")]
    return max(made, key=lambda p: p.stat().st_mtime) if made else None


def finish(run: FoldRun, manifest: Manifest, lock, status: str, start: float, error: str = "") -> FoldRun:
    with lock:
        run.status, run.error, run.seconds = status, error, round(time.monotonic() - start, 1)
        manifest.save()
        print(f"fold {run.fold}: {status} in {run.seconds:.0f} s" + (f" ({error.splitlines()[-1]})" if error else ""),
              flush=True)
    return run


def last_lines(text: str, count: int = 5) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-count:])


def fold_count(fit_dir: Path) -> int:
    from common.data.splits import FOLDS_FILE, load_folds

    return max(load_folds(fit_dir / FOLDS_FILE).values()) + 1


def run_command(args: argparse.Namespace) -> int:
    import threading

    out = Path(args.out or Path("runs") / args.task / f"loso-{Path(args.config).stem}")
    manifest = Manifest(out, args.task, str(Path(args.config).resolve()), args.extra)
    runs_root, lock = out / "folds", threading.Lock()
    wanted = parse_folds(args.folds)
    if wanted is None and not any(r.status == "done" for r in manifest.folds.values()):
        first = manifest.folds.setdefault(0, FoldRun(0))  # fold 0 first: its folds.csv says how many there are
        run_fold(first, manifest, runs_root, 0 if args.gpus else None, lock)
    total = known_fold_count(manifest)
    folds = wanted if wanted is not None else [k for k in range(total or 1) if manifest.folds.get(k, FoldRun(k)).status != "done"]
    todo = [manifest.folds.setdefault(k, FoldRun(k)) for k in folds]
    manifest.save()
    print(f"LOSO: {len(todo)} fold(s) to run, {args.parallel} at a time -> {out}", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool_:
        futures = [pool_.submit(run_fold, run, manifest, runs_root, (i % args.parallel) if args.gpus else None, lock)
                   for i, run in enumerate(todo)]
        for future in futures:
            future.result()
    return aggregate(manifest, out)


def known_fold_count(manifest: Manifest) -> int | None:
    for run in manifest.folds.values():
        if run.fit_dir and (Path(run.fit_dir) / "folds.csv").is_file():
            return fold_count(Path(run.fit_dir))
    return None


def aggregate(manifest: Manifest, out: Path) -> int:
    total = known_fold_count(manifest)
    failed = sorted(k for k, r in manifest.folds.items() if r.status == "failed")
    done = sorted(k for k, r in manifest.folds.items() if r.status == "done")
    if failed:
        print(f"failed folds: {failed}; re-run them alone with --folds {','.join(map(str, failed))}", file=sys.stderr)
    if total is None or len(done) < total:
        print(f"{len(done)} of {total if total is not None else '?'} folds done; the pooled scores are written when "
              f"every fold has its predictions", file=sys.stderr)
        return 1
    test_dirs = [Path(manifest.folds[k].test_dir) for k in range(total)]
    if all((d / "ground_truth.csv").is_file() for d in test_dirs):  # interval spotting: MEGC spotting rules
        from spotting.evaluate import pool_folds

        print("\n".join(pool_folds(test_dirs, out)))
        return 0
    rows, classes = pool(d / PREDICTIONS_FILE for d in test_dirs)
    scores = report(rows, classes)
    write_report(out, rows, classes, scores)
    print("\n".join(summary_lines(scores)))
    return 0


def parse_folds(text: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        return sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise SystemExit(f"--folds {text!r}: expected 'all' or fold numbers such as 3,7") from None


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m common.loso", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and test every fold, then pool and score")
    run.add_argument("--task", required=True)
    run.add_argument("--config", required=True, help="the recipe each fold trains with")
    run.add_argument("--folds", default="all", help="'all', or fold numbers such as 3,7 (re-run those alone)")
    run.add_argument("--parallel", type=int, default=1, help="folds at a time (one GPU each where GPUs exist)")
    run.add_argument("--out", help="output folder (default runs/<task>/loso-<config name>)")
    score = commands.add_parser("score", help="pool prediction files and print the MEGC scores")
    score.add_argument("predictions", nargs="+", type=Path)
    score.add_argument("--json", action="store_true", help="one JSON object: uf1, uar, by_dataset, ...")
    score.add_argument("--out", help="also write the pooled file, scores.json and the per-subject table and plot")
    args = parser.parse_args(argv)
    try:
        if args.command == "score":
            return score_command(args)
        args.extra = extra
        args.gpus = _gpu_count() >= max(1, args.parallel)
        return run_command(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"loso: {error}", file=sys.stderr)
        return 2


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
