"""Run directories and loggers: W&B by default (offline on its own when it cannot reach the service), CSV always."""
from __future__ import annotations

import netrc
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

RUN_DIR_ENV = "FACEX_RUN_DIR"


@dataclass
class RunSettings:
    """Where a run writes and how it is tracked (`--run.*` on the command line).

    Args:
        root: directory under which runs are kept as `<root>/<task>/<name>/version_<n>`.
        name: run name; by default `<dataset>-<arch>[-fold<k>]`.
        project: W&B project.
        wandb: log to Weights & Biases (offline automatically when no API key or no network).
        tags: extra W&B tags.
    """

    root: str = "runs"
    name: str | None = None
    project: str = "facex"
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


def new_run_dir(base: Path) -> Path:
    """The next `version_<n>` under `base` (never reuses one, so a rerun cannot overwrite results)."""
    taken = [int(m.group(1)) for p in base.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return base / f"version_{max(taken, default=-1) + 1}"


def latest_run_with_last_checkpoint(base: Path) -> Path | None:
    versions = sorted(base.glob("version_*/checkpoints/last.ckpt"), key=lambda p: int(p.parent.parent.name[8:]))
    return versions[-1].parent.parent if versions else None


def make_loggers(settings: RunSettings, run_dir: Path, name: str, group: str, tags: list[str], job_type: str) -> list:
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(save_dir=str(run_dir), name="", version="")]
    if settings.wandb:
        loggers.append(_wandb_logger(settings, run_dir, name, group, tags, job_type))
    return loggers


def _wandb_logger(settings: RunSettings, run_dir: Path, name: str, group: str, tags: list[str], job_type: str):
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode()
    return WandbLogger(
        name=name,
        project=settings.project,
        group=group,
        job_type=job_type,
        tags=sorted(set(tags + list(settings.tags))),
        save_dir=str(run_dir),
        offline=mode == "offline",
        mode=mode,
        log_model=False,
    )
