"""Fold fan-out and search on this machine: what running a fold through a launcher costs beyond the fold itself,
and the wall time of a small study.

    python -m bench.bench_hpo [--folds 3] [--skip-ray] [--skip-study]

1. The synthetic LOSO of tests/test_loso.py (ROI-Transformer on optical-flow features, 5 subjects), its first folds
   run through `common.loso run --launcher local` (one at a time) and `--launcher ray` (a local Ray instance, each
   task asking for all CPUs, so folds run one at a time there too). Overhead per fold = (the command's wall time
   - the time spent inside the folds' own train.py processes, as loso.json records it) / folds: the driver's
   start-up, Ray's start-up and scheduling, result gathering. The fold table is planned once beforehand and
   shared (its cost is printed on its own); the flow-feature cache is warmed by one fold first.
3. A 4-trial x 2-fold study (`common.hpo`, the settings of tests/test_hpo.py: 12 epochs, median pruner, two folds
   at a time), wall time from the command's start to its end.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "microexp" / "synthetic.yaml"
LIGHT = ["--model.arch", "roi_transformer", "--data.inputs", "roi_flow", "--data.image_size", "64",
         "--data.clip_length", "8", "--data.batch_size", "6", "--data.num_workers", "0", "--model.label_smoothing", "0",
         "--model.lr", "2e-3", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--run.wandb", "false"]
LOSO = [*LIGHT, "--data.subjects", "[3, 1, 1]", "--data.per_subject", "6", "--data.val_fraction", "0.2",
        "--trainer.max_epochs", "12"]


def warm_cache(root: Path, extra: list[str]) -> None:
    """One fold reads every subject: the flow cache is warm after it, for every launcher alike."""
    from common.launch import FoldJob, run_fold_job

    run = run_fold_job(FoldJob("microexp", str(CONFIG), 0, extra, str(root / "warm"), "bench"))
    assert run.status == "done", run.error


def launcher_overhead(launcher: list[str], folds: list[int], out: Path, planned: Path,
                      extra: list[str]) -> tuple[float, float]:
    """(seconds inside one fold, seconds per fold beyond it)."""
    import json

    out.mkdir(parents=True)
    shutil.copy(planned / "folds.csv", out / "folds.csv")
    command = [sys.executable, "-m", "common.loso", "run", "--task", "microexp", "--config", str(CONFIG), "--folds",
               ",".join(map(str, folds)), "--out", str(out), *launcher, "--", *extra]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=False, capture_output=True)
    wall = time.perf_counter() - start
    runs = json.loads((out / "loso.json").read_text())["folds"]
    assert all(runs[str(k)]["status"] == "done" for k in folds), runs
    inside = sum(runs[str(k)]["seconds"] for k in folds)
    return inside / len(folds), (wall - inside) / len(folds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-study", action="store_true")
    args = parser.parse_args()
    folds = list(range(args.folds))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        extra = [*LOSO, "--data.feature_cache", str(root / "flow")]
        from common.loso import planned_folds

        start = time.perf_counter()
        planned_folds(root / "plan", "microexp", str(CONFIG), extra)
        print(f"planning the fold table (one zero-epoch fit): {time.perf_counter() - start:.1f} s")
        warm_cache(root, extra)
        inside, beyond = launcher_overhead(["--launcher", "local"], folds, root / "local", root / "plan", extra)
        print(f"--launcher local: {inside:.1f} s inside each fold (fit + test processes), {beyond:.1f} s per fold "
              f"beyond it")
        if not args.skip_ray:
            import os

            import ray

            start = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            print(f"Ray start-up (local instance): {time.perf_counter() - start:.1f} s")
            ray.shutdown()
            cpus = str(os.cpu_count())
            inside, beyond = launcher_overhead(["--launcher", "ray", "--cpus-per-fold", cpus], folds, root / "ray",
                                               root / "plan", extra)
            print(f"--launcher ray: {inside:.1f} s inside each fold, {beyond:.1f} s per fold beyond it (Ray's "
                  f"start-up spread over {len(folds)} folds)")
        if not args.skip_study:
            space = root / "lr.yaml"
            space.write_text("parameters:\n  model.lr: {type: float, low: 1.0e-7, high: 1.0e-2, log: true}\n"
                             "start:\n  - {model.lr: 3.0e-3}\n  - {model.lr: 1.0e-7}\n")
            command = [sys.executable, "-m", "common.hpo", "--task", "microexp", "--config", str(CONFIG), "--space",
                       str(space), "--trials", "4", "--folds", "0,1", "--out", str(root / "study"), "--parallel", "2",
                       "--pruner-startup-trials", "1", "--pruner-warmup-epochs", "2", "--wandb", "false", "--",
                       *LIGHT, "--data.subjects", "[2, 1, 1]", "--data.per_subject", "6", "--data.val_fraction",
                       "0.34", "--trainer.max_epochs", "12", "--data.feature_cache", str(root / "flow-study")]
            start = time.perf_counter()
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            states = [line.split(": ")[1].split()[0] for line in done.stdout.splitlines()
                      if line.startswith("trial ") and line.split(": ")[1].split()[0] in ("complete", "pruned")]
            print(f"4-trial x 2-fold study: {seconds:.0f} s wall ({', '.join(states)}; planning and recipe included)")


if __name__ == "__main__":
    main()
