"""`train.py`'s command line: pick a task, then hand everything else to LightningCLI."""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from common.tasks import TASKS, get_task


def parse_task(argv: Sequence[str]) -> tuple[str, list[str]]:
    """Split `--task NAME` off the command line, leaving the original argv untouched for DDP re-launches."""
    pre = argparse.ArgumentParser(prog="train.py", add_help=False, allow_abbrev=False)
    pre.add_argument("--task", choices=sorted(TASKS), help="which task to run")
    known, rest = pre.parse_known_args(list(argv))
    if known.task is None:
        pre.error(f"--task is required; registered tasks: {', '.join(sorted(TASKS))}")
    return known.task, rest


def main(argv: Sequence[str] | None = None) -> None:
    task, rest = parse_task(sys.argv[1:] if argv is None else argv)
    spec = get_task(task)
    from common.lightning_cli import TaskCLI

    # `args=` is how the task flag stays out of LightningCLI while sys.argv stays intact for DDP ranks.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # Batches are moved and augmented by the task module on purpose (see its on_after_batch_transfer).
    warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer`")

    defaults = {"default_config_files": spec.config_files()}
    TaskCLI(
        spec.module_class(),
        spec.datamodule_class(),
        spec=spec,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={cmd: defaults for cmd in ("fit", "validate", "test", "predict")},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=rest,
    )
