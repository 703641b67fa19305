"""`train.py`'s command line: pick a task, then hand everything else to LightningCLI.

A mistake of the user's (a missing file, a bad argument, a bad annotation row, an unreadable image) ends in one
or two lines naming the file, row or flag at fault; `FACEX_DEBUG=1` shows the full traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Sequence

from common.errors import concise
from common.tasks import TASKS, get_task

DEBUG_ENV = "FACEX_DEBUG"


def parse_task(argv: Sequence[str]) -> tuple[str, list[str]]:
    """Split `--task NAME` off the command line, leaving the original argv untouched for DDP re-launches."""
    pre = argparse.ArgumentParser(prog="train.py", add_help=False, allow_abbrev=False)
    pre.add_argument("--task", choices=sorted(TASKS), help="which task to run")
    known, rest = pre.parse_known_args(list(argv))
    if known.task is None and any(a in ("-h", "--help") for a in rest):
        print(overview())
        raise SystemExit(0)
    if known.task is None:
        pre.error(f"--task is required; registered tasks: {', '.join(sorted(TASKS))}")
    return known.task, rest


def overview() -> str:
    lines = ["usage: python train.py --task TASK {fit,validate,test,predict} [--config FILE] [options]",
             "       python train.py --task TASK fit --help     (every option of that task)", "", "tasks:"]
    lines += [f"  {TASKS[name].recipes_text()}" for name in TASKS]
    lines += ["", "recipes for real datasets: configs/<task>/<dataset>_<model>.yaml (README lists them)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None):
    """Run the command line; returns the LightningCLI object (its trainer, model and datamodule) to a caller."""
    task, rest = parse_task(sys.argv[1:] if argv is None else argv)
    spec = get_task(task)
    try:
        return run(spec, rest)
    except user_errors() as error:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"error: {concise(error)}\n(set {DEBUG_ENV}=1 to see the traceback)\n")
        raise SystemExit(1) from None


def run(spec, rest: list[str]):
    from common.lightning_cli import ShortErrorParser, TaskCLI

    # `args=` is how the task flag stays out of LightningCLI while sys.argv stays intact for DDP ranks.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # Batches are moved and augmented by the task module on purpose (see its on_after_batch_transfer).
    warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer`")

    defaults = {"default_config_files": spec.config_files()}
    ShortErrorParser.arguments = list(rest)
    return TaskCLI(
        spec.module_class(),
        spec.datamodule_class(),
        spec=spec,
        parser_class=ShortErrorParser,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"description": spec.recipes_text(), **{cmd: defaults for cmd in ("fit", "validate", "test", "predict")}},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=rest,
    )


def user_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises: the project's own errors say what is wrong and where."""
    from common.data.align import DetectorUnavailable, NoFaceError
    from common.data.cache import CacheError
    from common.data.readers import ReadError

    return (FileNotFoundError, NotADirectoryError, ValueError, KeyError, ReadError, CacheError, NoFaceError,
            DetectorUnavailable)
