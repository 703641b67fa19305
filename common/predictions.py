"""Per-sample prediction files: one row per sample with its identity, so runs and folds can be pooled and
re-scored later.

Columns: `dataset`, `subject`, `sample` (a stable id: the path relative to the dataset root, or the annotation
row), `label` (the true class name; empty where unknown), `pred` (the predicted class name), then `p_<class>`
for every class. Under DDP each rank writes its part and rank 0 joins them into one `predictions.csv`, dropping
the repeats a distributed sampler pads with.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import torch

PREDICTIONS_FILE = "predictions.csv"
ID_COLUMNS = ("dataset", "subject", "sample")


def probability_column(name: str) -> str:
    return f"p_{name}"


class PredictionWriter:
    def __init__(self, class_names: Sequence[str]):
        self.class_names = list(class_names)
        self.rows: list[dict] = []

    @property
    def columns(self) -> list[str]:
        return [*ID_COLUMNS, "label", "pred", *map(probability_column, self.class_names)]

    def add(self, batch: dict, probs: torch.Tensor) -> None:
        probs = probs.detach().float().cpu()
        labels = hard_labels(batch.get("target"), len(probs))
        ids = {key: batch.get(key) or [""] * len(probs) for key in ID_COLUMNS}
        for i, (label, row) in enumerate(zip(labels, probs.tolist())):
            sample = ids["sample"][i] or str(len(self.rows))  # position in this rank's stream, as a last resort
            self.rows.append({"dataset": ids["dataset"][i], "subject": ids["subject"][i], "sample": sample,
                              "label": self.class_names[label] if label >= 0 else "",
                              "pred": self.class_names[max(range(len(row)), key=row.__getitem__)],
                              **{probability_column(c): f"{p:.6f}" for c, p in zip(self.class_names, row)}})

    def write(self, trainer) -> Path | None:
        """Write (and under DDP join) the rows collected on every rank; returns the file on rank 0."""
        rows, self.rows = self.rows, []
        return write_joined(trainer, self.columns, rows)


def write_joined(trainer, columns: Sequence[str], rows: list[dict], name: str = PREDICTIONS_FILE,
                 key: Sequence[str] = ("dataset", "sample")) -> Path | None:
    """`name` in rank 0's run directory from every rank's rows (gathered over the process group, so ranks on other
    nodes need no shared disk; the repeats a distributed sampler pads with, rows with the same `key` columns, are
    dropped); returns the file on rank 0."""
    out_dir = trainer.log_dir  # a collective under DDP: every rank asks
    if out_dir is None:
        return None
    final = Path(out_dir) / name
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        write_rows(final, columns, rows)
        return final
    parts: list[list[dict] | None] = [None] * trainer.world_size
    torch.distributed.all_gather_object(parts, rows)
    if trainer.is_global_zero:
        write_rows(final, columns, unique_rows((row for part in parts for row in part), key))
    return final if trainer.is_global_zero else None


def hard_labels(target, count: int) -> list[int]:
    if target is None:
        return [-1] * count
    target = torch.as_tensor(target)
    return (target.argmax(-1) if target.ndim == 2 else target).long().tolist()


def unique_rows(rows, key: Sequence[str] = ("dataset", "sample")) -> list[dict]:
    seen, kept = set(), []
    for row in rows:
        value = tuple(row[k] for k in key)
        if value not in seen:
            seen.add(value)
            kept.append(row)
    return kept


def write_rows(path: Path, columns: Sequence[str], rows) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def read_predictions(path: Path | str) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
