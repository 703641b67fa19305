"""Subject-independent splits: leave-one-subject-out, k-fold over subjects, published fixed folds.

A fold assignment is a dict subject -> fold index (0-based); the subjects of fold k are its test set. It is
computed deterministically (natural subject order, seeded rng), saved to the run directory as
`folds.csv` (subject,fold), and a re-run in that directory reads the file back, so a fold can be repeated
exactly even if the code that computes folds changes. The validation subset is always carved from the
training subjects of that fold, never from the test subject(s).

Published folds (the BP4D and DISFA 3-fold protocols) are data: `common/data/folds/<name>.csv` with columns
subject,part. Fold k (0-based) tests on part n_parts-k: with three parts, fold 0 tests part 3, fold 1 part 2,
fold 2 part 1 -- the protocol's "fold k tests on part 4-k" counted from 1.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

FOLDS_DIR = Path(__file__).resolve().parent / "folds"
FOLDS_FILE = "folds.csv"


def natural_key(text: str) -> list:
    """sub2 before sub10; numbers compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text))]


def ordered_subjects(subjects: Iterable[str]) -> list[str]:
    return sorted(set(map(str, subjects)), key=natural_key)


def loso_folds(subjects: Iterable[str]) -> dict[str, int]:
    """One fold per subject, numbered in natural subject order."""
    return {subject: i for i, subject in enumerate(ordered_subjects(subjects))}


def kfold_subjects(subjects: Iterable[str], k: int, seed: int = 0,
                   sizes: Mapping[str, int] | None = None) -> dict[str, int]:
    """k folds of whole subjects. With `sizes` (samples per subject) the folds are balanced by sample count:
    subjects in decreasing size go to the currently smallest fold, ties broken by a seeded shuffle."""
    order = ordered_subjects(subjects)
    if not 2 <= k <= len(order):
        raise ValueError(f"k-fold over subjects needs 2 <= k <= {len(order)} subjects, got k={k}")
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    if sizes is None:
        return {subject: i % k for i, subject in enumerate(order)}
    order.sort(key=lambda s: -sizes.get(s, 0))  # stable: equal sizes keep the shuffled order
    totals, folds = [0] * k, {}
    for subject in order:
        fold = int(np.argmin(totals))
        folds[subject] = fold
        totals[fold] += sizes.get(subject, 0)
    return folds


def fixed_folds(name_or_path: str | Path) -> dict[str, int]:
    """A published protocol from a subject,part CSV ('bp4d_3fold' or a path)."""
    path = Path(name_or_path)
    if path.suffix != ".csv":
        path = FOLDS_DIR / f"{name_or_path}.csv"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(FOLDS_DIR.glob("*.csv")))
        raise FileNotFoundError(f"{path}: fold list not found (bundled: {known})")
    parts = read_column_pairs(path, "subject", "part")
    n_parts = max(parts.values())
    return {subject: n_parts - part for subject, part in parts.items()}


def read_column_pairs(path: Path, key: str, value: str) -> dict[str, int]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or key not in reader.fieldnames or value not in reader.fieldnames:
            raise ValueError(f"{path}: expected columns {key},{value}, found {reader.fieldnames}")
        pairs = {}
        for line, row in enumerate(reader, start=2):
            subject = row[key].strip()
            if subject in pairs:
                raise ValueError(f"{path}, line {line}: subject {subject!r} listed twice")
            try:
                pairs[subject] = int(row[value])
            except ValueError:
                raise ValueError(f"{path}, line {line}: {value} {row[value]!r} is not an integer") from None
    return pairs


def save_folds(path: Path, folds: Mapping[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "fold"])
        for subject in ordered_subjects(folds):
            writer.writerow([subject, folds[subject]])


def load_folds(path: Path) -> dict[str, int]:
    return read_column_pairs(Path(path), "subject", "fold")


def lodo_folds(subjects: Iterable[str]) -> dict[str, int]:
    """Leave one dataset out: subjects spelled `<dataset>/<subject>`, one fold per dataset (in name order)."""
    subjects = ordered_subjects(subjects)
    unnamed = [s for s in subjects if "/" not in s]
    if unnamed:
        raise ValueError(f"leave-one-dataset-out needs subjects spelled <dataset>/<subject>, got {unnamed[:3]}")
    datasets = sorted({s.split("/", 1)[0] for s in subjects})
    if len(datasets) < 2:
        raise ValueError(f"leave-one-dataset-out needs two or more datasets, got {datasets}")
    return {s: datasets.index(s.split("/", 1)[0]) for s in subjects}


def published_folds(subjects: Iterable[str]) -> dict[str, int]:
    """Each dataset's published protocol (`<dataset>_3fold.csv`) for subjects spelled `<dataset>/<subject>`; the
    folds of a joint set are the union of its datasets' folds with the same number."""
    folds = {}
    for subject in ordered_subjects(subjects):
        dataset, _, name = subject.partition("/")
        table = fixed_folds(f"{dataset}_3fold")
        if name not in table:
            raise ValueError(f"{dataset}_3fold.csv has no part for subject {name!r}")
        folds[subject] = table[name]
    return folds


def make_folds(subjects: Iterable[str], scheme: str = "loso", k: int = 5, seed: int = 0,
               sizes: Mapping[str, int] | None = None) -> dict[str, int]:
    """scheme: 'loso', 'kfold', 'lodo' (leave one dataset out), 'published' (each dataset's own fold list), or the
    name/path of a fixed fold list."""
    if scheme == "loso":
        return loso_folds(subjects)
    if scheme == "published":
        return published_folds(subjects)
    if scheme == "lodo":
        return lodo_folds(subjects)
    if scheme == "kfold":
        return kfold_subjects(subjects, k, seed, sizes)
    folds = fixed_folds(scheme)
    unknown = sorted(set(map(str, subjects)) - set(folds), key=natural_key)
    if unknown:
        raise ValueError(f"fold list {scheme!r} has no part for subjects {unknown}")
    return folds


def resolve_folds(subjects: Iterable[str], run_dir: Path | None, scheme: str = "loso", k: int = 5,
                  seed: int = 0, sizes: Mapping[str, int] | None = None) -> dict[str, int]:
    """The run directory's saved folds if there are any (so re-runs repeat exactly), else new ones, saved."""
    subjects = set(map(str, subjects))
    saved = None if run_dir is None else Path(run_dir) / FOLDS_FILE
    if saved is not None and saved.is_file():
        folds = load_folds(saved)
        unknown = sorted(subjects - set(folds), key=natural_key)
        if unknown:
            raise ValueError(f"{saved}: subjects {unknown} of this dataset have no fold; "
                             f"the saved folds belong to another dataset or version")
        return folds
    folds = make_folds(subjects, scheme, k, seed, sizes)
    if saved is not None:
        save_folds(saved, folds)
    return folds


@dataclass(frozen=True)
class Split:
    """Sample indices of one fold; the subject sets are disjoint by construction."""

    fold: int
    train: list[int]
    val: list[int]
    test: list[int]
    train_subjects: list[str]
    val_subjects: list[str]
    test_subjects: list[str]


def validation_subjects(train_subjects: Sequence[str], fraction: float, seed: int, fold: int) -> list[str]:
    """A seeded choice of whole training subjects; at least one when fraction > 0 and two or more remain."""
    order = ordered_subjects(train_subjects)
    if fraction <= 0 or len(order) < 2:
        return []
    count = min(len(order) - 1, max(1, round(fraction * len(order))))
    chosen = np.random.default_rng([seed, fold]).permutation(len(order))[:count]
    return [order[i] for i in sorted(chosen)]


def split_fold(sample_subjects: Sequence[str], folds: Mapping[str, int], fold: int,
               val_fraction: float = 0.1, seed: int = 0) -> Split:
    """Train/val/test indices of `fold` for samples whose subjects are `sample_subjects` (in sample order)."""
    fold_ids = sorted(set(folds.values()))
    if fold not in fold_ids:
        raise ValueError(f"--data.fold {fold} does not exist; folds are {fold_ids[0]}..{fold_ids[-1]}")
    missing = sorted({str(s) for s in sample_subjects} - set(folds), key=natural_key)
    if missing:
        raise ValueError(f"subjects {missing} have no fold")
    test_subjects = ordered_subjects(s for s, f in folds.items() if f == fold)
    present = {str(s) for s in sample_subjects}
    train_subjects = ordered_subjects(s for s in present if folds[s] != fold)
    val_subjects = validation_subjects(train_subjects, val_fraction, seed, fold)
    train_subjects = [s for s in train_subjects if s not in set(val_subjects)]
    role = {**{s: "train" for s in train_subjects}, **{s: "val" for s in val_subjects},
            **{s: "test" for s in test_subjects}}
    indices = {"train": [], "val": [], "test": []}
    for i, subject in enumerate(sample_subjects):
        indices[role[str(subject)]].append(i)
    return Split(fold, indices["train"], indices["val"], indices["test"],
                 train_subjects, val_subjects, test_subjects)
