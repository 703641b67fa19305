"""Base LightningDataModule: loaders with the settings every task wants."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.data.splits import FOLDS_FILE, Split, load_folds, resolve_folds, split_fold


class TaskDataModule(L.LightningDataModule):
    """Args:
        batch_size: per-device batch size (keep it even when Mixup/CutMix is on).
        num_workers: loader processes per device.
        seed: seed of the data split and of synthetic data.
    """

    dataset_name: str = "data"
    fold: int | None = None
    train_set = val_set = test_set = None

    def __init__(self, batch_size: int = 32, num_workers: int = 2, seed: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"--data.batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    def loader(self, dataset: Dataset, train: bool, sampler: Sampler | None = None) -> DataLoader:
        """Training drops the last partial batch: Mixup pairs samples and BatchNorm dislikes tiny batches."""
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    @property
    def preprocessing(self) -> dict:
        """How a face reaching the model was made (exported as model metadata); needs `frame_settings`."""
        from common.data.align import preprocessing_record

        record = preprocessing_record(self.frame_settings.align)
        if getattr(self, "datasets", None) == ["synthetic"]:
            record["face_detector"] = "none (synthetic faces are rendered centred and upright)"
        return record

    # --- loaders over train_set / val_set / test_set (val_set None: no validation) ---
    def train_dataloader(self):
        return self.loader(self.train_set, train=True)

    def val_dataloader(self):
        return [] if self.val_set is None else self.loader(self.val_set, train=False)

    def test_dataloader(self):
        return self.loader(self.test_set, train=False)

    def predict_dataloader(self):
        return self.loader(self.test_set, train=False)

    @classmethod
    def dataset_parts(cls, dataset: str) -> list[str]:
        """The datasets a `--data.dataset` value reads (a composite names several)."""
        return [name.strip() for name in dataset.split("+") if name.strip()]

    @classmethod
    def class_of(cls, requested: str, dataset: str, sample) -> tuple[str | None, str | None]:
        """(class name, None) for a sample of `dataset` read as part of `requested` in its default class scheme,
        or (None, why it is left out): what `python -m common.inspect` counts."""
        raise NotImplementedError

    @classmethod
    def label_counts(cls, requested: str, dataset: str, samples) -> dict[str, dict[str, int]]:
        """Task-specific counts `python -m common.inspect` adds to its report (none by default)."""
        return {}

    def split_parts(self, parts: Sequence[dict]) -> Split:
        """Fold `self.fold` over the subjects of labelled dataset parts (`part["subjects"]`, one per row), logged."""
        from lightning.pytorch.utilities import rank_zero_info

        subjects = [s for part in parts for s in part["subjects"]]
        split = self.subject_fold(subjects, self.fold_scheme, self.num_folds, self.val_fraction)
        rank_zero_info(f"{self.dataset_name} fold {self.fold}: test subjects {split.test_subjects}, "
                       f"{len(split.val_subjects)} validation and {len(split.train_subjects)} training subjects")
        return split

    def subject_fold(self, subjects: Sequence[str], scheme: str, k: int, val_fraction: float) -> Split:
        """Fold `self.fold` of a subject split; validation subjects come from its training subjects only.

        The subject -> fold table is saved as folds.csv in the run directory and re-read from there, so a fold
        re-runs exactly. Rank 0 writes it; other ranks read it when it is there, else derive the same table.
        """
        run_dir = self.trainer.log_dir if self.trainer is not None else None  # every rank asks: a collective
        saved = Path(run_dir) / FOLDS_FILE if run_dir else None
        if saved is not None and self.trainer.global_rank > 0:
            folds = load_folds(saved) if saved.is_file() else resolve_folds(subjects, None, scheme, k, self.seed)
        else:
            folds = resolve_folds(subjects, run_dir and Path(run_dir), scheme, k, self.seed)
        return split_fold(subjects, folds, self.fold, val_fraction, self.seed)


def subject_ranges(counts: Sequence[int], start: int = 0) -> list[list[int]]:
    """Consecutive, disjoint subject-id blocks, e.g. (24, 6, 6) -> train, val, test identities."""
    blocks, first = [], start
    for count in counts:
        blocks.append(list(range(first, first + count)))
        first += count
    return blocks


def dataset_names(task: str, dataset: str | Sequence[str], composites: Sequence[str] = ()) -> list[str]:
    """The datasets a `--data.dataset` value names (a list, or names joined by '+'), checked against the task's
    registered parsers: `synthetic` alone, no name twice."""
    from common.data import DATASETS, _import_task_parsers

    _import_task_parsers(task)
    known = ["synthetic", *sorted(n.split("/", 1)[1] for n in DATASETS if n.startswith(f"{task}/")), *composites]
    names = [n.strip() for n in (dataset.split("+") if isinstance(dataset, str) else dataset) if n.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise ValueError(f"--data.dataset {dataset!r}: unknown {unknown or 'empty'}; choose from {known}")
    if "synthetic" in names and len(names) > 1:
        raise ValueError("--data.dataset: the synthetic data cannot be trained jointly with real datasets")
    if len(set(names)) != len(names):
        raise ValueError(f"--data.dataset {dataset!r} names a dataset twice")
    return names


def chosen_parts(parts: Sequence[dict], chosen: Sequence[int]) -> list[tuple[dict, list[int]]]:
    """The rows of each part (`part["rows"]`) whose positions in the parts' joint list are `chosen`."""
    selected, offset, chosen = [], 0, set(chosen)
    for part in parts:
        mine = [k for k in range(len(part["rows"])) if offset + k in chosen]
        offset += len(part["rows"])
        if mine:
            selected.append((part, mine))
    return selected


def check_choice(flag: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"--data.{flag} must be one of {tuple(choices)}, got {value!r}")


def check_fraction(flag: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"--data.{flag} must be in [0, 1), got {value}")


def datasets_from_roots(dataset, root):
    """`--data.root "{name: DIR, ...}"` alone names the datasets of a joint set."""
    return list(root) if dataset == "synthetic" and isinstance(root, Mapping) else dataset


def dataset_sources(names: Sequence[str], root, cache) -> list[Path]:
    """Where each dataset of a (joint) set is read from: its cache where one is given, else its root."""
    roots, caches = per_dataset(root, names, "root"), per_dataset(cache, names, "cache")
    sources = [Path(c) if c else Path(r) if r else None for r, c in zip(roots, caches)]
    missing = [n for n, s in zip(names, sources) if s is None]
    if missing:
        example = names[0] if len(names) == 1 else "{" + ", ".join(f"{n}: DIR" for n in names) + "}"
        raise ValueError(f"--data.root (or --data.cache) is needed for {missing}, e.g. --data.root \"{example}\"")
    return sources


def per_dataset(value, names: Sequence[str], flag: str) -> list:
    """One entry per dataset of a joint set, from a mapping `{dataset: value}` (the form every task accepts), a
    list in the order of `names`, or a single value for a single dataset; None where none is given."""
    if value is None:
        return [None] * len(names)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"--data.{flag} names {unknown}, which the data set ({'+'.join(names)}) does not hold")
        return [value.get(name) for name in names]
    values = [value] if isinstance(value, (str, Path)) else list(value)
    if len(values) != len(names):
        raise ValueError(f"--data.{flag} needs one entry per dataset ({'+'.join(names)}), got {len(values)}; "
                         f"a mapping {{dataset: path}} names them")
    return values
