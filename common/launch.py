"""Where fold runs execute: here (N at a time, one GPU each), as Ray tasks on a cluster, or as a SLURM job array.

A fold job is two `train.py` processes (fit, then test of the checkpoint chosen on validation subjects carved from
the training subjects), or fit alone when only the validation score is wanted (`common.hpo --objective val`).
The same function runs a fold in every launcher, so a fold gives the same result wherever it runs; every
launcher writes into one output folder, which on a cluster must be on a file system all nodes share.
"""
from __future__ import annotations

import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from common.predictions import PREDICTIONS_FILE
from common.tracking import chosen_checkpoint

REPO = Path(__file__).resolve().parent.parent
LAUNCHERS = ("local", "ray", "slurm")
POLL_SECONDS = 1.0


@dataclass
class FoldJob:
    """One fold of a LOSO run; `runs_root` is where its run directories go (`<root>/<task>/<name>-fold<k>/`)."""

    task: str
    config: str
    fold: int
    extra: list[str] = field(default_factory=list)
    runs_root: str = "runs"
    group: str = "loso"
    stages: tuple[str, ...] = ("fit", "test")

    @property
    def stop_file(self) -> Path:
        """Written by whoever wants the fold stopped (a pruned trial); the fold's runner polls for it, so stopping
        works the same for a local thread, a Ray worker on another node or a SLURM task."""
        return Path(self.runs_root) / f"stop-fold{self.fold}"


@dataclass
class FoldRun:
    fold: int
    fit_dir: str | None = None
    test_dir: str | None = None
    status: str = "pending"  # pending | running | done | failed | stopped
    error: str = ""
    seconds: float = 0.0
    attempts: int = 0


def train_command(task: str, stage: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "--task", task, stage, *args]


def fold_versions(runs_root: Path, fold: int) -> set[Path]:
    return {p for p in runs_root.glob("*/*/version_*") if p.parent.name.endswith(f"-fold{fold}")}


def newest(paths: set[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def last_lines(text: str, count: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


_ERROR_LINE = re.compile(r"^(?:[\w.]+: )?error: (.+)")
_HINT = re.compile(r"^\(.*\)$")  # train.py's "(--help lists every option)", "(set FACEX_DEBUG=1 ...)"


def error_line(text: str) -> str:
    """The line of a train.py process's stderr that says what went wrong: its `error:` line where it printed one
    (the hints after it say nothing about this fold), else the last line that is not such a hint (an exception)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        found = _ERROR_LINE.match(line)
        if found:
            return found.group(1)
    meaningful = [line for line in lines if not _HINT.match(line)]
    return meaningful[-1] if meaningful else ""


def reject_train_options(argv: Sequence[str], program: str) -> None:
    """train.py's own options given before `--` would be taken for this command's: say where they go."""
    for token in argv:
        if re.match(r"--(model|data|trainer|run|checkpoint)\.", token) and not token.startswith("--data.fold"):
            option = token.split("=", 1)[0]
            raise SystemExit(f"{program}: {option} is an option of train.py: put it after `--` "
                             f"(e.g. `{program} ... -- {option} VALUE`), where it reaches every fold")


def run_stage(command: list[str], env: dict, stop_file: Path) -> tuple[int | None, str]:
    """(exit code, stderr) of one train.py process; None when the stop file appeared and the process was ended."""
    with open(os.devnull, "w") as devnull, subprocess.Popen(command, env=env, stdout=devnull, stderr=subprocess.PIPE,
                                                            text=True) as process:
        errors: list[str] = []
        reader = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
        reader.start()
        while process.poll() is None:
            if stop_file.exists():
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                reader.join(5)
                return None, "".join(errors)
            time.sleep(0.5)
        reader.join(5)
        return process.returncode, "".join(errors)


def run_fold_job(job: FoldJob, gpu: int | None = None, threads: int | None = None) -> FoldRun:
    """Train (and test) one fold in subprocesses; the outcome, never an exception, so a launcher can retry it."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if threads and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)  # folds sharing a machine do not fight over its cores
    runs_root, run = Path(job.runs_root), FoldRun(job.fold, status="running")
    start = time.monotonic()
    common = ["--run.root", str(runs_root), "--run.group", job.group]

    def outcome(status: str, error: str = "") -> FoldRun:
        run.status, run.error, run.seconds = status, error, round(time.monotonic() - start, 1)
        return run

    before = fold_versions(runs_root, job.fold)
    code, errors = run_stage(train_command(job.task, "fit", "--config", job.config, "--data.fold", str(job.fold),
                                           *common, *job.extra), env, job.stop_file)
    fit_dir = newest(fold_versions(runs_root, job.fold) - before)
    run.fit_dir = str(fit_dir) if fit_dir else None
    if code is None:
        return outcome("stopped")
    if code != 0 or fit_dir is None:
        return outcome("failed", last_lines(errors) or f"train.py fit ended with exit code {code}")
    if "test" not in job.stages:
        return outcome("done")
    before = set(fit_dir.glob("test*"))
    code, errors = run_stage(train_command(job.task, "test", "--config", str(fit_dir / "config.yaml"), "--ckpt_path",
                                           str(chosen_checkpoint(fit_dir)), "--run.name", fit_dir.parent.name,
                                           *common), env, job.stop_file)
    test_dir = newest(set(fit_dir.glob("test*")) - before)  # the test of a run's checkpoint writes inside the run
    run.test_dir = str(test_dir) if test_dir else None
    if code is None:
        return outcome("stopped")
    if code != 0 or test_dir is None or not (test_dir / PREDICTIONS_FILE).is_file():
        return outcome("failed", last_lines(errors) or f"train.py test ended with exit code {code}")
    return outcome("done")


Notify = Callable[[FoldRun], None]


def announce(run: FoldRun) -> None:
    detail = f": {error_line(run.error)}" if run.error else ""
    print(f"fold {run.fold}: {run.status} in {run.seconds:.0f} s" + detail, flush=True)


class LocalLauncher:
    """Folds as subprocesses of this machine, `parallel` at a time, each on a GPU of its own while one is free."""

    def __init__(self, parallel: int = 1, gpus: Sequence[int] = (), retries: int = 0):
        self.parallel, self.retries = max(1, parallel), retries
        gpus = list(gpus)
        self.free: queue.Queue = queue.Queue()  # shared by concurrent calls (trials of a search): one pool of slots
        for i in range(self.parallel):
            self.free.put(gpus[i % len(gpus)] if gpus else None)
        self.threads = max(1, (os.cpu_count() or 1) // self.parallel)

    def run(self, jobs: Sequence[FoldJob], started: Notify, finished: Notify,
            poll: Callable[[], None] | None = None) -> list[FoldRun]:
        def one(job: FoldJob) -> FoldRun:
            gpu = self.free.get()
            try:
                for attempt in range(1, self.retries + 2):
                    started(FoldRun(job.fold, status="running", attempts=attempt))
                    run = run_fold_job(job, gpu, self.threads)
                    run.attempts = attempt
                    if run.status != "failed" or attempt > self.retries:
                        return run
                    announce(run)
                return run
            finally:
                self.free.put(gpu)

        results = []
        with ThreadPoolExecutor(max_workers=self.parallel) as executor:
            pending = {executor.submit(one, job) for job in jobs}
            while pending:
                done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    results.append(future.result())
                    finished(results[-1])
                if poll is not None:
                    poll()
        return results


RAY_MISSING = "--launcher ray needs Ray: pip install -e \".[ray]\" (or pip install 'ray>=2.40')"


class RayLauncher:
    """Each fold a Ray task asking for `gpus` GPUs and `cpus` CPUs; results gathered as they finish; a failed fold
    is retried `retries` times, then reported. `address` joins a running cluster ('auto' finds the local head);
    without one a Ray instance starts here with `num_cpus` CPUs (all by default)."""

    def __init__(self, address: str | None = None, gpus: float = 1.0, cpus: float = 1.0, retries: int = 1,
                 num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise SystemExit(RAY_MISSING) from None
        self.ray, self.gpus, self.cpus, self.retries = ray, gpus, cpus, retries
        if not ray.is_initialized():
            options = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False,
                                                              "object_store_memory": 100 * 2**20}
            ray.init(log_to_driver=False, configure_logging=False, **options)
        self.remote = ray.remote(num_gpus=gpus, num_cpus=cpus, max_retries=0)(run_fold_job)

    def run(self, jobs: Sequence[FoldJob], started: Notify, finished: Notify,
            poll: Callable[[], None] | None = None) -> list[FoldRun]:
        threads = max(1, int(self.cpus))
        attempts: dict = {}

        def submit(job: FoldJob, attempt: int):
            started(FoldRun(job.fold, status="running", attempts=attempt))
            ref = self.remote.remote(job, None, threads)  # Ray sets CUDA_VISIBLE_DEVICES for the task itself
            attempts[ref] = (job, attempt)
            return ref

        pending = [submit(job, 1) for job in jobs]
        results = []
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                job, attempt = attempts.pop(ref)
                try:
                    run = self.ray.get(ref)
                except Exception as error:  # the worker or its node died
                    run = FoldRun(job.fold, status="failed", error=f"Ray task lost: {str(error).splitlines()[0]}")
                run.attempts = attempt
                if run.status == "failed" and attempt <= self.retries:
                    announce(run)
                    pending.append(submit(job, attempt + 1))
                    continue
                results.append(run)
                finished(run)
            if poll is not None:
                poll()
        return results


@dataclass
class SlurmSettings:
    gpus: int = 1
    cpus: int = 8
    time: str = "08:00:00"
    memory: str | None = None
    partition: str | None = None
    account: str | None = None
    parallel: int | None = None  # at most this many array tasks at once (%N)


def sbatch_script(folds: Sequence[int], record: list[str], extra: Sequence[str], out: Path, name: str,
                  settings: SlurmSettings) -> str:
    """An `sbatch` array script, one array index per fold: index k runs `record --data.fold k` (train and test
    fold k, then record it in the run's manifest)."""
    array = compress_ranges(folds) + (f"%{settings.parallel}" if settings.parallel else "")
    directives = {"job-name": name, "array": array, "ntasks": 1,
                  "gres": f"gpu:{settings.gpus}" if settings.gpus else None,
                  "cpus-per-task": settings.cpus, "time": settings.time, "output": out / "slurm" / "fold-%a.out",
                  "mem": settings.memory, "partition": settings.partition, "account": settings.account}
    lines = ["#!/bin/bash", *(f"#SBATCH --{key}={value}" for key, value in directives.items() if value is not None)]
    command = f"{shlex.join(record)} --data.fold $SLURM_ARRAY_TASK_ID"
    if extra:
        command += f" -- {shlex.join(extra)}"
    lines += ["", "set -euo pipefail", f"cd {shlex.quote(str(REPO))}", command, ""]
    return "\n".join(lines)


def compress_ranges(numbers: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (SLURM's array syntax)."""
    numbers, parts = sorted(set(numbers)), []
    start = previous = None
    for n in numbers + [None]:
        if start is not None and n == previous + 1:
            previous = n
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = n
    return ",".join(parts)
