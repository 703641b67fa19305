"""The shared data layer: sample records, readers, alignment, cache, clip sampling, splits, augmentation.

Dataset parsers register here so that `common.prepare` and the DataModules find them by name:

    from common.data import register_dataset

    @register_dataset("casme2", task="microexp")
    def casme2(root: Path) -> list[Sample]: ...

A name registered with a task is looked up as "task/name" first, so the same dataset may mean different
samples for two tasks (CAS(ME)³ clips for `microexp`, its long videos for `spotting`).
"""
from __future__ import annotations

import contextlib
import importlib
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from common.data.records import Interval, Sample, sample_key

DatasetParser = Callable[[Path], "list[Sample]"]
DATASETS: dict[str, DatasetParser] = {}

__all__ = ["DATASETS", "Interval", "Sample", "collect_left_out", "dataset_parser", "load_samples", "register_dataset",
           "report_left_out", "sample_key"]
_COLLECTORS: list[dict[str, Counter]] = []


def register_dataset(name: str, task: str | None = None):
    """Decorator: make a parser `(root) -> list[Sample]` known as `name` (or `task/name`)."""
    def add(parser: DatasetParser) -> DatasetParser:
        DATASETS[f"{task}/{name}" if task else name] = parser
        return parser
    return add


def dataset_parser(dataset: str, task: str | None = None) -> DatasetParser:
    """The parser for `dataset`; importing the task's parsers first lets them register themselves."""
    if task:
        _import_task_parsers(task)
        if f"{task}/{dataset}" in DATASETS:
            return DATASETS[f"{task}/{dataset}"]
    if dataset in DATASETS:
        return DATASETS[dataset]
    known = ", ".join(sorted(DATASETS)) or "none registered"
    raise KeyError(f"unknown dataset {dataset!r}{f' for task {task!r}' if task else ''}; known: {known}")


def _import_task_parsers(task: str) -> None:
    """A task's parsers live in `<task>/parsers.py` (imported by its data module too)."""
    for module in (f"{task}.parsers", f"{task}.data"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name not in (task, module):
                raise  # the task's module exists but one of its imports is missing: say so


def load_samples(dataset: str, root: Path | str, task: str | None = None) -> list[Sample]:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: dataset root of {dataset!r} not found")
    return list(dataset_parser(dataset, task)(root))


def report_left_out(dataset: str, where: Path | str, counts: Counter) -> None:
    """Log the samples a rule left out (never silently), and count them for `collect_left_out`."""
    if not counts:
        return
    from lightning.pytorch.utilities import rank_zero_info

    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
    rank_zero_info(f"{dataset}: {where}: left out {sum(counts.values())} samples ({reasons})")
    for collector in _COLLECTORS:
        collector.setdefault(dataset, Counter()).update(counts)


@contextlib.contextmanager
def collect_left_out() -> Iterator[dict[str, Counter]]:
    """What parsers and data modules leave out while the block runs: {dataset: Counter(reason -> count)}."""
    collected: dict[str, Counter] = {}
    _COLLECTORS.append(collected)
    try:
        yield collected
    finally:
        _COLLECTORS.remove(collected)
