"""Emotion data: the built-in synthetic faces and the real macro-expression datasets (parsed in
emotion/parsers.py), as uint8 [3, S, S] faces with labels in the shared order of common/labels.yaml.

Validation: FER2013 and FERPlus validate on PublicTest, their official validation split, and ignore
`val_fraction`; the others carve a class-stratified, seeded subset out of their training split. An official
test split is only ever used by `test` and `predict`.

Images are face crops already (AffectNet's box is applied), so a raw root is resized, never searched for a
face. A cache with the same crops: `python -m common.prepare --task emotion --dataset rafdb --root R --out C
--detector none --margin 0`; FER2013 and FERPlus faces come through a reader kind registered in
emotion/parsers.py, so their prepare worker processes need `--import emotion.parsers`.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import ConcatDataset, Dataset

from common.data.align import AlignSettings
from common.data.cache import AlignedFrames, FrameSettings, is_cache, open_source, source_root
from common.data.records import Sample, sample_name
from common.data.sampling import ClassBalancedSampler, stratified_subset
from common.datamodule import (TaskDataModule, check_choice, check_fraction, dataset_sources, datasets_from_roots,
                               subject_ranges)
from common.datamodule import dataset_names as common_dataset_names
from common.data import report_left_out
from emotion.parsers import EMOTION_CLASSES, SPLITS

FERPLUS_MODES = ("majority", "soft")


# ---------------------------------------------------------------- targets


def sample_target(sample: Sample, num_classes: int, ferplus_mode: str) -> tuple[int, np.ndarray | None] | str:
    """(hard label, soft target or None), or the reason the sample is left out at this setting."""
    votes = sample.labels.get("votes")
    soft = None
    if votes is None:
        hard = int(sample.labels["emotion"])
    elif ferplus_mode == "majority":
        hard = majority_label(np.asarray(votes))
        if hard is None:
            return "no FERPlus majority"
    else:
        soft = np.asarray(votes[:8], dtype=np.float32)
        hard = int(np.argmax(soft))
    if hard >= num_classes:
        return "contempt (7-class setting)"
    return hard, None if soft is None else soft[:num_classes] / soft[:num_classes].sum()


def majority_label(votes: np.ndarray) -> int | None:
    """The emotion with more than half of all votes, unknown and NF included (FERPlus' majority mode)."""
    top = int(np.argmax(votes[:8]))
    return top if 2 * votes[top] > votes.sum() else None


# ---------------------------------------------------------------- torch datasets


class EmotionImages(Dataset):
    """Chosen samples of a frame source as batch items: `input` uint8 [3, S, S], `target` (an int, or a float
    vector over the classes where `soft` targets are given) and the sample's `dataset`, `subject` and `sample` id."""

    def __init__(self, frames: AlignedFrames, indices: Sequence[int], labels: Sequence[int], size: int,
                 names: Sequence[str], soft: np.ndarray | None = None):
        self.frames, self.indices, self.size = frames, list(indices), size
        self.labels = [int(v) for v in labels]
        self.names = list(names)
        self.soft = None if soft is None else np.asarray(soft, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        image = self.frames.read(self.indices[i], [0])[0]
        if image.shape[:2] != (self.size, self.size):  # a cache made at another size
            shrink = image.shape[0] > self.size
            image = cv2.resize(image, (self.size, self.size),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        sample = self.sample(i)
        target = self.labels[i] if self.soft is None else torch.from_numpy(self.soft[i])
        return {"input": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), "target": target,
                "dataset": sample.dataset, "subject": sample.subject, "sample": self.names[i]}

    def sample(self, i: int) -> Sample:
        return self.frames.samples[self.indices[i]]

    def with_soft(self, num_classes: int) -> "EmotionImages":
        """The same samples with one-hot vectors, to share a batch with soft-labelled data."""
        soft = self.soft if self.soft is not None else np.eye(num_classes, dtype=np.float32)[self.labels]
        return EmotionImages(self.frames, self.indices, self.labels, self.size, self.names, soft)


def labels_of(dataset: Dataset) -> list[int]:
    """Hard labels of a dataset, joint ones included (what the balanced sampler balances)."""
    if isinstance(dataset, ConcatDataset):
        return [label for part in dataset.datasets for label in labels_of(part)]
    return list(dataset.labels)


# ---------------------------------------------------------------- the data module


class EmotionDataModule(TaskDataModule):
    """Face images as uint8 [3, S, S] with labels in the shared order (neutral, happy, ..., contempt).

    Args:
        dataset: `synthetic` (the built-in generator), one of fer2013, ferplus, rafdb, affectnet, affectnet_npy,
            or several (a list, or names joined by '+') trained jointly, each through its own label map.
        num_classes: 7 (no contempt: AffectNet's and FERPlus' contempt samples are left out) or 8 (contempt
            simply never occurs in FER2013 or RAF-DB).
        image_size: side of the square crops fed to the model.
        subjects: synthetic identities for train, validation and test; the three sets are disjoint.
        per_subject: synthetic images per identity.
        root: the dataset folder as distributed (or a cache folder); for a joint set a mapping
            `{dataset: folder}` (the datasets are then its keys unless `dataset` names them), or a list in the
            order of `dataset`.
        cache: a cache made by `python -m common.prepare --task emotion --dataset NAME`, given like `root`
            (a dataset without one reads its root); a cache of another size is resized.
        ferplus_mode: `majority` (an emotion with more than half of the votes, else the row is left out) or `soft`
            (training targets are the vote distribution; validation and test use its argmax).
        val_fraction: share of each class of the training split held out for validation (FER2013 and FERPlus
            validate on PublicTest instead).
        balanced_sampler: draw every class equally often in training (sharded by rank under DDP).
        fold: synthetic data only: split all `subjects` identities into folds (`fold_scheme` loso or kfold
            with `num_folds`) and test on this one; `val_fraction` of the other identities validate. The table
            is saved as folds.csv in the run directory.
    """

    def __init__(self, dataset: str | list[str] = "synthetic", num_classes: int = 7, image_size: int = 224,
                 subjects: tuple[int, int, int] = (24, 6, 6), per_subject: int = 42,
                 root: str | list[str] | dict[str, str] | None = None,
                 cache: str | list[str | None] | dict[str, str] | None = None,
                 ferplus_mode: str = "majority", val_fraction: float = 0.1, balanced_sampler: bool = False,
                 fold: int | None = None, fold_scheme: str = "kfold", num_folds: int = 5, **loader):
        super().__init__(**loader)
        check_choice("num_classes", num_classes, (7, 8))
        check_choice("ferplus_mode", ferplus_mode, FERPLUS_MODES)
        check_fraction("val_fraction", val_fraction)
        self.datasets = dataset_names(datasets_from_roots(dataset, root))
        self.sources = [None] if self.datasets == ["synthetic"] else dataset_sources(self.datasets, root, cache)
        self.dataset_name = "+".join(self.datasets)
        self.num_classes = num_classes
        self.image_size = image_size
        self.subjects = tuple(subjects)
        self.per_subject = per_subject
        self.ferplus_mode = ferplus_mode
        self.val_fraction = val_fraction
        self.balanced_sampler = balanced_sampler
        if fold is not None and self.datasets != ["synthetic"]:
            raise ValueError(f"--data.fold: {self.dataset_name} has no subject ids to fold over; "
                             "its official splits are used")
        self.fold, self.fold_scheme, self.num_folds = fold, fold_scheme, num_folds
        self.train_set = self.val_set = self.test_set = None

    @property
    def class_names(self) -> list[str]:
        return list(EMOTION_CLASSES[: self.num_classes])

    @classmethod
    def class_of(cls, requested: str, dataset: str, sample: Sample) -> tuple[str | None, str | None]:
        target = sample_target(sample, len(EMOTION_CLASSES), "majority")
        return (None, target) if isinstance(target, str) else (EMOTION_CLASSES[target[0]], None)

    @property
    def frame_settings(self) -> FrameSettings:
        """Emotion images are face crops already (or come with a face box): resize, never detect."""
        return FrameSettings(AlignSettings(size=self.image_size, margin=0.0, detector="none"))


    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return  # fit, then test: the sheets are parsed once
        if self.datasets == ["synthetic"]:
            self._setup_synthetic()
            return
        parts = [self.dataset_splits(name, source) for name, source in zip(self.datasets, self.sources)]
        train = [part["train"] for part in parts]
        if any(t.soft is not None for t in train):
            train = [t.with_soft(self.num_classes) for t in train]
        self.train_set, self.val_set, self.test_set = (
            join(sets) for sets in (train, [p["val"] for p in parts], [p["test"] for p in parts]))

    def _setup_synthetic(self) -> None:
        from common.synth.datasets import SyntheticEmotionDataset

        if self.fold is None:
            train, val, test = subject_ranges(self.subjects)
        else:
            identities = [str(i) for i in range(sum(self.subjects))]
            split = self.subject_fold(identities, self.fold_scheme, self.num_folds, self.val_fraction)
            train, val, test = ([int(s) for s in part] for part in
                                (split.train_subjects, split.val_subjects, split.test_subjects))
        make = lambda ids, offset: SyntheticEmotionDataset(ids, self.per_subject, self.num_classes, self.image_size,
                                                           seed=self.seed + offset)
        self.train_set, self.val_set, self.test_set = make(train, 0), make(val, 1), make(test, 2)

    def open_frames(self, name: str, source: Path) -> AlignedFrames:
        """A cache as it was made (resized on reading where its size differs), or the raw root read on the fly."""
        return open_source(source, name, task="emotion", settings=None if is_cache(source) else self.frame_settings)

    def dataset_splits(self, name: str, source: Path) -> dict[str, EmotionImages]:
        frames = self.open_frames(name, source)
        chosen, left_out = {split: [] for split in SPLITS}, Counter()
        for i, sample in enumerate(frames.samples):
            target = sample_target(sample, self.num_classes, self.ferplus_mode)
            if isinstance(target, str):
                left_out[target] += 1
            else:
                chosen[official_split(sample)].append((i, *target))
        if not chosen["train"]:
            raise ValueError(f"{name} at {source}: no training samples")
        if not chosen["val"]:
            chosen["train"], chosen["val"] = carve(chosen["train"], self.val_fraction, self.seed)
        report_left_out(name, source, left_out)
        rank_zero_info(f"{name}: {', '.join(f'{s} {len(chosen[s])}' for s in SPLITS)} samples")
        root = source_root(frames, source)
        return {split: self.images(frames, rows, root, soft=split == "train") for split, rows in chosen.items()}

    def images(self, frames: AlignedFrames, rows: list[tuple], root: Path, soft: bool) -> EmotionImages:
        """Soft targets reach training only: metrics want the argmax, so validation and test get hard labels."""
        indices, labels, vectors = ([r[k] for r in rows] for k in range(3))
        names = [sample_name(frames.samples[i], root) for i in indices]
        use_soft = soft and bool(rows) and vectors[0] is not None
        return EmotionImages(frames, indices, labels, self.image_size, names, np.stack(vectors) if use_soft else None)

    def train_dataloader(self):
        sampler = self.make_balanced_sampler() if self.balanced_sampler else None
        return self.loader(self.train_set, train=True, sampler=sampler)

    def make_balanced_sampler(self) -> ClassBalancedSampler:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return ClassBalancedSampler(labels_of(self.train_set), replicas, rank, seed=self.seed)



def official_split(sample: Sample) -> str:
    split = sample.extra.get("split")
    if split not in SPLITS:
        raise ValueError(f"{sample.path}: sample has no official split (extra['split'] = {split!r})")
    return split


def carve(rows: list[tuple], fraction: float, seed: int) -> tuple[list[tuple], list[tuple]]:
    """(train, val): a class-stratified validation share of the training rows."""
    held = set(stratified_subset([r[1] for r in rows], fraction, seed))
    return [r for k, r in enumerate(rows) if k not in held], [r for k, r in enumerate(rows) if k in held]


def join(sets: list[Dataset]) -> Dataset:
    return sets[0] if len(sets) == 1 else ConcatDataset(sets)


def dataset_names(dataset: str | Sequence[str]) -> list[str]:
    return common_dataset_names("emotion", dataset)
