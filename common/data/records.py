"""The `Sample` record: what a dataset parser hands to every later stage.

A parser turns annotation sheets and folder names into a list of these; readers, alignment, the cache, clip
sampling and splits read nothing else. Frame numbers in `interval` are the reader's frame numbers: the number
in the file name for a frame folder, the 0-based decode index for a video, 0 for a single image. A parser whose
sheet counts differently (DISFA labels start at 1) converts once, here, so no later stage has to know.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

SOURCE_KINDS = ("frames", "video", "image")


@dataclass(frozen=True)
class Interval:
    """An annotated expression, inclusive frame numbers; `apex` is None where the sheet does not give one."""

    onset: int
    apex: int | None
    offset: int

    def __post_init__(self):
        if self.offset < self.onset:
            raise ValueError(f"interval offset {self.offset} is before onset {self.onset}")
        if self.apex is not None and not self.onset <= self.apex <= self.offset:
            raise ValueError(f"interval apex {self.apex} lies outside onset..offset {self.onset}..{self.offset}")

    @property
    def length(self) -> int:
        return self.offset - self.onset + 1

    @property
    def apex_or_middle(self) -> float:
        """The apex, or the middle of the interval where none is annotated (SMIC, SAMM's missing apexes)."""
        return float(self.apex) if self.apex is not None else (self.onset + self.offset) / 2

    def as_tuple(self) -> tuple[int, int | None, int]:
        return self.onset, self.apex, self.offset


@dataclass(frozen=True)
class Sample:
    """One training example as the dataset describes it.

    labels: task targets by name ("emotion": 3, "au": array of 17, "events": [...]); values are numbers,
        strings, lists or numpy arrays (the cache index restores arrays as arrays).
    label_mask: same keys as labels where some entries are unknown (BP4D's 9, an AU a dataset does not code);
        missing key = everything known.
    extra: whatever a later stage may use and the parser knows: "fps", "landmarks" (5 or 68 points in source
        pixels, or one set per frame [T, K, 2]), "face_box" (x, y, w, h), "id" (overrides the key), ...
    """

    dataset: str
    subject: str
    source: str
    path: Path
    interval: Interval | None = None
    labels: Mapping[str, Any] = field(default_factory=dict)
    label_mask: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "subject", str(self.subject))
        if not self.source:
            raise ValueError(f"sample {self.path}: source kind is empty (expected one of {SOURCE_KINDS})")

    @property
    def key(self) -> str:
        return sample_key(self)

    @property
    def fps(self) -> float | None:
        fps = self.extra.get("fps")
        return None if fps is None else float(fps)

def sample_key(sample: Sample, root: Path | None = None) -> str:
    """A stable name for a sample across datasets (the cache's resume list): `<dataset>:<sample_name>`."""
    return f"{sample.dataset}:{sample_name(sample, root)}"


def sample_name(sample: Sample, root: Path | None = None) -> str:
    """A stable name for a sample within its dataset (the `sample` column of prediction files).

    The parser's `id` where it gives one (an annotation row), else the path relative to `root` when it lies
    inside, so a dataset copied elsewhere keeps its names; the interval is part of the name because one video
    holds many annotated intervals (CAS(ME)³ repeats a Filename within a subject).
    """
    if "id" in sample.extra:
        return str(sample.extra["id"])
    name = relative_path(sample.path, root).as_posix()
    if sample.interval is not None:
        onset, apex, offset = sample.interval.as_tuple()
        name += f"@{onset}-{'' if apex is None else apex}-{offset}"
    return name


def relative_path(path: Path, root: Path | None) -> Path:
    """`path` relative to `root` where it lies inside (compared as given, then with links resolved)."""
    if root is None:
        return path
    for inside, outside in ((path.absolute(), Path(root).absolute()), (path.resolve(), Path(root).resolve())):
        try:
            return inside.relative_to(outside)
        except ValueError:
            continue
    return path


def to_jsonable(value: Any) -> Any:
    """Arrays become tagged lists so that `from_jsonable` gives back an array of the same dtype; mappings with
    non-string keys become tagged pairs so {12: 1} does not come back as {"12": 1}."""
    if isinstance(value, np.ndarray):
        return {"__array__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value):
            return {k: to_jsonable(v) for k, v in value.items()}
        return {"__items__": [[to_jsonable(k), to_jsonable(v)] for k, v in value.items()]}  # AU numbers as keys
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    return value


def from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if "__array__" in value:
            return np.asarray(value["__array__"], dtype=value["dtype"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__items__" in value:
            return {from_jsonable(k): from_jsonable(v) for k, v in value["__items__"]}
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def sample_to_dict(sample: Sample, root: Path | None = None) -> dict:
    """A JSON-ready dict; with `root`, a path inside it is stored relative so the record survives a move."""
    return {
        "dataset": sample.dataset,
        "subject": sample.subject,
        "source": sample.source,
        "path": relative_path(sample.path, root).as_posix(),
        "interval": None if sample.interval is None else list(sample.interval.as_tuple()),
        "labels": to_jsonable(sample.labels),
        "label_mask": to_jsonable(sample.label_mask),
        "extra": to_jsonable(sample.extra),
    }


def sample_from_dict(row: Mapping, root: Path | None = None) -> Sample:
    path = Path(row["path"])
    if root is not None and not path.is_absolute():
        path = Path(root) / path
    interval = row.get("interval")
    return Sample(
        dataset=row["dataset"],
        subject=row["subject"],
        source=row["source"],
        path=path,
        interval=None if interval is None else Interval(*interval),
        labels=from_jsonable(row.get("labels", {})),
        label_mask=from_jsonable(row.get("label_mask", {})),
        extra=from_jsonable(row.get("extra", {})),
    )


