"""Leave-one-subject-out at scale: run every fold, pool the predictions, score them as MEGC does.

    python -m common.loso run --task microexp --config C [--folds all|K,K,...] [--launcher local|ray|slurm]
                              [--parallel N] [--out DIR] [-- ARGS]
    python -m common.loso score PRED.csv [PRED.csv ...] [--json] [--out DIR]
    python -m common.loso score --run DIR

`run` first makes the subject -> fold table (`<out>/folds.csv`, from the annotations alone), then trains each fold
as a run of its own (`train.py --task T fit --config C --data.fold K`, all folds in one W&B group named after the
output folder) and tests the fold's checkpoint on its held-out subject(s): the checkpoint chosen on validation
subjects carved from the training subjects, or the last one for a fixed epoch budget; the held-out subject is
never looked at before that test. Where the folds run is the launcher's choice (`common.launch`): `local` runs N
at a time here with one GPU each; `ray` makes each fold a Ray task (a whole cluster with `--ray-address auto`);
`slurm` writes `loso.sbatch`, an array job with one index per fold, and `score --run DIR` pools it afterwards.
Every fold's progress and outcome are kept in `loso.json`, so a crashed fold is re-run alone (`--folds 7`) and the
aggregate is updated; when every fold of the table has its predictions, the pooled `predictions.csv`,
`scores.json`, `subjects.csv` and `subjects.png` are written to the output folder.

How a task's folds are pooled is its registry entry's `fold_scorer` (common.tasks): classification tasks pool
their predictions here (`pool_predictions`); the spotting task joins its submission files and scores them by the
MEGC spotting rules (`scores.json`: learned spotter and baseline, counts summed over every fold).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from common.launch import (LAUNCHERS, FoldJob, FoldRun, LocalLauncher, RayLauncher, SlurmSettings, announce,
                           error_line, last_lines, reject_train_options, run_fold_job, sbatch_script, train_command)
from common.predictions import ID_COLUMNS, PREDICTIONS_FILE, read_predictions, write_rows

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


class Manifest:
    """`loso.json`: what each fold did. Every change is a locked read-modify-write of one fold's entry, so the
    driver, Ray results and SLURM array tasks on other nodes can all record folds of one run without losing any."""

    def __init__(self, out: Path, task: str, config: str, extra: Sequence[str]):
        self.path = out / MANIFEST
        self.task, self.config, self.extra = task, config, list(extra)
        self.folds: dict[int, FoldRun] = self.read()

    @classmethod
    def load(cls, out: Path) -> "Manifest":
        path = out / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no LOSO run in {out} (start one with `python -m common.loso run`)")
        saved = json.loads(path.read_text())
        return cls(out, saved["task"], saved["config"], saved.get("extra", []))

    def read(self) -> dict[int, FoldRun]:
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        return {int(k): FoldRun(**v) for k, v in saved.get("folds", {}).items()}

    def record(self, run: FoldRun | None = None) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.folds = {**self.read(), **({run.fold: run} if run else {})}
            data = {"task": self.task, "config": self.config, "extra": self.extra,
                    "folds": {str(k): vars(v) for k, v in sorted(self.folds.items())}}
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(data, indent=2))
            os.replace(temporary, self.path)


def planned_folds(out: Path, task: str, config: str, extra: Sequence[str]) -> dict[str, int]:
    """The subject -> fold table every fold will use, made once before any fold trains (a fit of zero epochs reads
    the annotations and writes folds.csv), kept as `<out>/folds.csv` beside the resolved recipe
    (`<out>/config.yaml`). A dataset that cannot be read fails here, once, instead of in every fold."""
    import shutil
    import tempfile

    from common.data.splits import FOLDS_FILE, load_folds

    saved = out / FOLDS_FILE
    if not saved.is_file():
        out.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="plan-", dir=out))
        try:
            plan = subprocess.run(train_command(task, "fit", "--config", config, *extra, "--data.fold", "0",
                                                "--trainer.max_epochs", "0", "--trainer.num_sanity_val_steps", "0",
                                                "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                                                "--run.root", str(scratch), "--run.wandb", "false"),
                                  capture_output=True, text=True)
            made = list(scratch.glob(f"*/*/version_*/{FOLDS_FILE}"))
            if plan.returncode != 0 or not made:
                raise ValueError(f"the folds of {config} could not be made: "
                                 f"{error_line(plan.stderr) or f'train.py ended with exit code {plan.returncode}'}")
            shutil.copy(made[0].parent / "config.yaml", out / "config.yaml")
            shutil.copy(made[0], saved)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return load_folds(saved)


def fold_count(out: Path) -> int | None:
    from common.data.splits import FOLDS_FILE, load_folds

    saved = out / FOLDS_FILE
    return max(load_folds(saved).values()) + 1 if saved.is_file() else None


def fold_jobs(manifest: Manifest, out: Path, folds: Iterable[int], stages=("fit", "test"),
              group: str | None = None) -> list[FoldJob]:
    return [FoldJob(manifest.task, manifest.config, k, manifest.extra, str(out / "folds"), group or out.name,
                    tuple(stages)) for k in folds]


def folds_to_run(text: str, manifest: Manifest, total: int) -> list[int]:
    """The folds asked for, or every fold not yet done; a fold outside the table is an error."""
    wanted = parse_folds(text)
    if wanted is None:
        return [k for k in range(total) if manifest.folds.get(k, FoldRun(k)).status != "done"]
    outside = [k for k in wanted if not 0 <= k < total]
    if outside:
        raise ValueError(f"--folds {text}: folds {outside} do not exist (the fold table has folds 0-{total - 1})")
    return wanted


def make_launcher(args: argparse.Namespace):
    if args.launcher == "ray":
        return RayLauncher(args.ray_address, gpus=args.gpus_per_fold if _gpu_count() or args.ray_address else 0,
                           cpus=args.cpus_per_fold, retries=1 if args.retries is None else args.retries)
    return LocalLauncher(args.parallel, list(range(_gpu_count())), retries=args.retries or 0)


def run_command(args: argparse.Namespace) -> int:
    out = Path(args.out or Path("runs") / args.task / f"loso-{Path(args.config).stem}")
    manifest = Manifest(out, args.task, str(Path(args.config).resolve()), args.extra)
    manifest.record()
    total = max(planned_folds(out, manifest.task, manifest.config, manifest.extra).values()) + 1
    folds = folds_to_run(args.folds, manifest, total)
    if args.launcher == "slurm":
        return write_slurm(args, manifest, out, folds)
    print(f"LOSO: {len(folds)} of {total} fold(s) to run ({args.launcher}) -> {out}", flush=True)
    make_launcher(args).run(fold_jobs(manifest, out, folds), started=manifest.record,
                            finished=lambda run: (manifest.record(run), announce(run)))
    return aggregate(manifest, out)


def write_slurm(args: argparse.Namespace, manifest: Manifest, out: Path, folds: list[int]) -> int:
    if args.gpus_per_fold != int(args.gpus_per_fold):
        raise ValueError(f"--gpus-per-fold {args.gpus_per_fold}: a SLURM task asks for whole GPUs")
    settings = SlurmSettings(int(args.gpus_per_fold), args.cpus_per_fold, args.time, args.mem, args.partition,
                             args.account, args.parallel if args.parallel > 1 else None)
    record = [sys.executable, "-m", "common.loso", "fold", "--task", manifest.task, "--config", manifest.config,
              "--out", str(out.resolve())]
    script = out / "loso.sbatch"
    script.write_text(sbatch_script(folds, record, manifest.extra, out.resolve(), f"loso-{out.name}", settings))
    (out / "slurm").mkdir(exist_ok=True)
    score = f"python -m common.loso score --run {out}"
    print(f"wrote {script}: {len(folds)} array task(s), one per fold\n  submit: sbatch {script}\n"
          f"  then:   {score}  (pools every fold once all have run)", flush=True)
    if args.submit:
        submitted = subprocess.run(["sbatch", str(script)], capture_output=True, text=True)
        if submitted.returncode != 0:
            raise ValueError(f"sbatch {script}: {last_lines(submitted.stderr) or 'failed'}")
        print(submitted.stdout.strip(), flush=True)
    return 0


def fold_command(args: argparse.Namespace) -> int:
    """One fold, as a SLURM array task runs it: train, test, record in the manifest."""
    out = Path(args.out)
    manifest = Manifest(out, args.task, str(Path(args.config).resolve()), args.extra)
    manifest.record(FoldRun(args.fold, status="running"))
    run = run_fold_job(fold_jobs(manifest, out, [args.fold])[0], threads=None)
    manifest.record(run)
    announce(run)
    return 0 if run.status == "done" else 1


def aggregate(manifest: Manifest, out: Path) -> int:
    total = fold_count(out)
    failed = sorted(k for k, r in manifest.folds.items() if r.status == "failed")
    done = sorted(k for k, r in manifest.folds.items() if r.status == "done")
    if failed:
        print(f"failed folds: {failed}; re-run them alone with --folds {','.join(map(str, failed))}", file=sys.stderr)
    if total is None or len(done) < total:
        print(f"{len(done)} of {total if total is not None else '?'} folds done; the pooled scores are written when "
              f"every fold has its predictions", file=sys.stderr)
        return 1
    score_folds(manifest.task, [Path(manifest.folds[k].test_dir) for k in range(total)], out)
    return 0


def score_folds(task: str, test_dirs: Sequence[Path], out: Path) -> dict:
    """Pool the folds' test outputs into `out` as the task's registry entry says, print and return the scores
    (scores.json's content)."""
    from common.tasks import get_task

    scores, lines = get_task(task).score_folds(test_dirs, out)
    print("\n".join(lines))
    return scores


def pool_predictions(test_dirs: Sequence[Path], out: Path) -> tuple[dict, list[str]]:
    """Classification folds: their predictions.csv files pooled as MEGC2019 defines it (UF1, UAR over all folds)."""
    rows, classes = pool(d / PREDICTIONS_FILE for d in test_dirs)
    scores = report(rows, classes)
    write_report(out, rows, classes, scores)
    return scores, summary_lines(scores)


def parse_folds(text: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        return sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise SystemExit(f"--folds {text!r}: expected 'all' or fold numbers such as 3,7") from None


# ---------------------------------------------------------------- command line


def add_fanout_arguments(parser: argparse.ArgumentParser) -> None:
    """Where folds run; shared by `common.loso run` and `common.hpo`."""
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: subprocesses here; ray: Ray tasks (a cluster with --ray-address); "
                             "slurm: write an sbatch array script (submitted with --submit)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="folds at a time here (one GPU each where GPUs exist); with slurm, array tasks at once")
    parser.add_argument("--ray-address", help="join this Ray cluster ('auto': the one this node belongs to); "
                                              "without it a Ray instance starts here")
    parser.add_argument("--gpus-per-fold", type=float, default=1, help="GPUs a Ray task or SLURM array task asks for")
    parser.add_argument("--cpus-per-fold", type=int, default=None,
                        help="CPUs a Ray task (default 1) or SLURM array task (default 8) asks for")
    parser.add_argument("--retries", type=int, default=None, help="re-runs of a failed fold (default: 1 with ray, "
                                                                  "0 here)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    reject_train_options(argv, "python -m common.loso")
    parser = argparse.ArgumentParser(prog="python -m common.loso", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and test every fold, then pool and score")
    run.add_argument("--task", required=True)
    run.add_argument("--config", required=True, help="the recipe each fold trains with")
    run.add_argument("--folds", default="all", help="'all', or fold numbers such as 3,7 (re-run those alone)")
    run.add_argument("--out", help="output folder (default runs/<task>/loso-<config name>)")
    add_fanout_arguments(run)
    slurm = run.add_argument_group("slurm")
    slurm.add_argument("--time", default="08:00:00", help="time limit of one fold (HH:MM:SS)")
    slurm.add_argument("--mem", help="memory of one fold, e.g. 64G")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--submit", action="store_true", help="submit the script with sbatch")
    fold = commands.add_parser("fold", help="train, test and record one fold (what a SLURM array task runs)")
    fold.add_argument("--task", required=True)
    fold.add_argument("--config", required=True)
    fold.add_argument("--out", required=True, help="the LOSO run's output folder")
    fold.add_argument("--data.fold", dest="fold", type=int, required=True)
    score = commands.add_parser("score", help="pool prediction files and print the MEGC scores")
    score.add_argument("predictions", nargs="*", type=Path)
    score.add_argument("--run", type=Path, help="pool every fold recorded in this LOSO output folder instead")
    score.add_argument("--json", action="store_true", help="one JSON object: uf1, uar, by_dataset, ...")
    score.add_argument("--out", help="also write the pooled file, scores.json and the per-subject table and plot")
    args = parser.parse_args(argv)
    args.extra = extra
    try:
        if args.command == "score":
            if args.run:
                return aggregate(Manifest.load(args.run), args.run)
            if not args.predictions:
                parser.error("score: give prediction files, or --run DIR")
            return score_command(args)
        if args.command == "fold":
            return fold_command(args)
        if args.cpus_per_fold is None:
            args.cpus_per_fold = 8 if args.launcher == "slurm" else 1
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
