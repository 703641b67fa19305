"""Run directories and loggers: W&B by default (offline on its own when it cannot reach the service), CSV always.

A resumed run keeps its history: `metrics.csv` is appended to (rows logged after the restored step by the
interrupted run are dropped, since the resumed run logs those steps again), and W&B continues the same run,
whose id is kept in the run directory.
"""
from __future__ import annotations

import csv
import netrc
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

RUN_DIR_ENV = "FACEX_RUN_DIR"
WANDB_ID_FILE = "wandb_run_id"
METRICS_FILE = "metrics.csv"


@dataclass
class RunSettings:
    """Where a run writes and how it is tracked (`--run.*` on the command line).

    Args:
        root: directory under which runs are kept as `<root>/<task>/<name>/version_<n>` (default `runs`);
            `--trainer.default_root_dir` sets the same and wins.
        name: run name; by default `<dataset>-<arch>[-fold<k>]`.
        project: W&B project.
        group: W&B group; by default `<task>-<dataset>` (the LOSO runner puts all its folds in one group).
        wandb: log to Weights & Biases (offline automatically when no API key or no network).
        tags: extra W&B tags.
    """

    root: str | None = None
    name: str | None = None
    project: str = "facex"
    group: str | None = None
    wandb: bool = True
    tags: list[str] = field(default_factory=list)


def wandb_mode() -> str:
    """'online' only when a key is configured and the server answers: a prompt or a hang would stall a run."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if not _wandb_key_configured():
        return "offline"
    return "online" if _reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")) else "offline"


def _wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def run_versions(base: Path) -> dict[int, Path]:
    """The run directories `version_<n>` under `base`, by n."""
    return {int(m.group(1)): p for p in base.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))}


def new_run_dir(base: Path) -> Path:
    """The next `version_<n>` under `base` (never reuses one, so a rerun cannot overwrite results)."""
    return base / f"version_{max(run_versions(base), default=-1) + 1}"


def latest_run(base: Path, having: str) -> Path | None:
    """The newest `version_<n>` under `base` that holds `having` (a path inside the run), or None."""
    runs = run_versions(base)
    found = [n for n, run in runs.items() if (run / having).exists()]
    return runs[max(found)] if found else None


def chosen_checkpoint(run: Path) -> Path:
    """The checkpoint chosen on the validation subjects where there is one, else the last (fixed budget)."""
    best = sorted(p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    return best[-1] if best else run / "checkpoints" / "last.ckpt"


def evaluation_dir(run: Path, stage: str) -> Path:
    """Where `stage` (validate, test, predict) of a run's own checkpoint writes: `RUN/<stage>`, then `RUN/<stage>-2`,
    ... (never over an earlier result)."""
    path, count = run / stage, 1
    while path.exists():
        count += 1
        path = run / f"{stage}-{count}"
    return path


def run_of_checkpoint(ckpt_path: str | None) -> Path | None:
    """The run directory a checkpoint file lies in (`RUN/checkpoints/x.ckpt`, RUN holding config.yaml), or None."""
    if not ckpt_path or ckpt_path in ("last", "best"):
        return None
    path = Path(ckpt_path)
    run = path.parent.parent
    return run if path.parent.name == "checkpoints" and (run / "config.yaml").is_file() else None


def make_loggers(settings: RunSettings, run_dir: Path, name: str, group: str, tags: list[str], job_type: str) -> list:
    loggers = [run_csv_logger(run_dir)]
    if settings.wandb:
        loggers.append(_wandb_logger(settings, run_dir, name, group, tags, job_type))
    return loggers


def run_csv_logger(run_dir: Path):
    """Lightning's CSVLogger writing `metrics.csv` in the run directory, appending to an existing file (a resumed
    run) where Lightning's own would delete it."""
    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if self._fs.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as handle:
                    self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])

    class RunCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment  # as Lightning's own: other ranks get a stand-in and make no directory
        def experiment(self):
            if self._experiment is None:
                self._experiment = AppendingWriter(log_dir=self.log_dir)
            return self._experiment

    return RunCSVLogger(save_dir=str(run_dir), name="", version="")


def trim_metrics(run_dir: Path, last_step: int) -> None:
    """Drop rows an interrupted run logged after the checkpoint it is resumed from."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if not row.get("step") or int(float(row["step"])) <= last_step]
    if len(kept) != len(rows):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(kept)


def _wandb_logger(settings: RunSettings, run_dir: Path, name: str, group: str, tags: list[str], job_type: str):
    """One W&B run per run directory: a resumed fit continues it (`--ckpt_path last`); `validate`, `test` and
    `predict` are runs of their own in the same group."""
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode()
    id_file = Path(run_dir) / WANDB_ID_FILE
    resumed = id_file.is_file()
    run_id = id_file.read_text().strip() if resumed else new_wandb_id()
    if not resumed and is_global_zero():
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
    logger = WandbLogger(
        name=name,
        project=settings.project,
        group=group,
        job_type=job_type,
        tags=sorted(set(tags + list(settings.tags))),
        save_dir=str(run_dir),
        offline=mode == "offline",
        mode=mode,
        log_model=False,
        id=run_id,
        resume="allow",
    )
    # Lightning always passes `anonymous`, which current wandb answers with a deprecation line on every run
    logger._wandb_init.pop("anonymous", None)
    return logger


def new_wandb_id() -> str:
    return secrets.token_hex(4)  # W&B's own ids are 8 lower-case characters too


# What each launcher tells a process about its place, before any trainer exists: torchrun (RANK, GROUP_RANK),
# SLURM's srun (SLURM_PROCID), Lightning's own launcher (LOCAL_RANK, NODE_RANK).
RANK_VARIABLES = ("RANK", "GROUP_RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


def is_global_zero() -> bool:
    """Whether this process is rank 0 of the whole job, every node counted: only that one makes the run directory,
    the W&B run and the fold table."""
    return all(int(os.environ.get(name) or 0) == 0 for name in RANK_VARIABLES)
