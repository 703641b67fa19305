"""README's quick start, timed: for each task, the quick recipe's fit, the test of its checkpoint, the export and
the runtime's verdict on the exported file, each as the command README gives (in a scratch folder).

    python -m bench.bench_quickstart [--tasks emotion microexp au spotting] [--keep DIR]

Prints one row per task: seconds of fit, test and export, their total, the test metric, and whether
`python -m runtime.check` accepts the model. Run it on an otherwise idle machine: the numbers are wall time.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("emotion", "microexp", "au", "spotting")
TEST_METRIC = {"emotion": "test/acc", "microexp": "test/f1", "au": "test/f1", "spotting": "test/f1"}


def commands(task: str, runs: Path, model: Path) -> dict[str, list[str]]:
    """README's quick-start line of a task, as separate commands (with the runs kept under `runs`)."""
    recipe = ["--config", f"configs/{task}/quick.yaml", "--run.name", "quick", "--run.root", str(runs)]
    python = sys.executable
    return {"fit": [python, "train.py", "--task", task, "fit", *recipe],
            "test": [python, "train.py", "--task", task, "test", *recipe, "--ckpt_path", "last"],
            "export": [python, "-m", "common.export", str(runs / task / "quick"), str(model)],
            "check": [python, "-m", "runtime.check", str(model)]}


def test_metric(runs: Path, task: str) -> str:
    import csv

    files = sorted((runs / task / "quick").glob("version_*/test*/metrics.csv"))
    if not files:
        return "-"
    rows = [r for r in csv.DictReader(files[-1].open()) if r.get(TEST_METRIC[task])]
    return f"{float(rows[-1][TEST_METRIC[task]]):.3f}" if rows else "-"


def run_task(task: str, folder: Path) -> dict:
    runs, model = folder / "runs", folder / "models" / f"{task}.onnx"
    times, verdict = {}, "refused"
    for stage, command in commands(task, runs, model).items():
        start = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "WANDB_MODE": "offline"})
        times[stage] = time.perf_counter() - start
        if result.returncode != 0:
            print(f"{task} {stage} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
            break
        if stage == "check":
            verdict = "accepted"
    return {"times": times, "verdict": verdict, "metric": test_metric(runs, task)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--keep", type=Path, help="keep the runs and models here instead of a scratch folder")
    args = parser.parse_args(argv)
    print(f"{'task':10s} {'fit s':>7s} {'test s':>7s} {'export s':>9s} {'total':>7s}  test metric  runtime.check")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        for task in args.tasks:
            row = run_task(task, folder)
            t = row["times"]
            total = t.get("fit", 0) + t.get("test", 0) + t.get("export", 0)
            print(f"{task:10s} {t.get('fit', 0):7.0f} {t.get('test', 0):7.0f} {t.get('export', 0):9.0f} {total:7.0f}  "
                  f"{TEST_METRIC[task]} {row['metric']:>5s}  {row['verdict']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
