"""Action-unit data: the built-in synthetic AU faces and BP4D / DISFA (parsed in au/parsers.py), as uint8 faces
[3, S, S] with, per AU of the model's set, an occurrence, an intensity and a mask of what is annotated.

Masks: an AU a sample's dataset does not code, or codes 9 (unknown), is masked out of every loss and metric, so
BP4D and DISFA train jointly over the union of their AUs and nothing is learned from labels that do not exist.
DISFA codes intensity only: its occurrence is intensity >= `occurrence_threshold` (2 by default, the common
protocol; 1 as OpenGraphAU does). A frame with no known AU of the set is left out and counted.

Folds: `--data.fold 0|1|2` of the published subject-independent 3-fold protocols (common/data/folds/); fold k
tests on part 3 - k. A joint BP4D + DISFA fold k is the union of both datasets' fold k. Validation subjects are
carved from the fold's training subjects.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from common.data import report_left_out
from common.data.align import AlignSettings
from common.data.cache import AlignedFrames, FrameSettings, open_source, source_root
from common.data.records import Sample, sample_name
from common.datamodule import (TaskDataModule, check_choice, check_fraction, chosen_parts, dataset_sources,
                               datasets_from_roots, subject_ranges)
from common.datamodule import dataset_names as common_dataset_names
from common.labels import au_name, au_set

UNKNOWN = 9
DEFAULT_AUS = {"bp4d": "bp4d12", "disfa": "disfa8", "synthetic": "app17"}
JOINT_AUS = "app17"
FOLD_SCHEMES = ("published", "kfold", "loso")


def label_vectors(sample: Sample, aus: Sequence[int], threshold: int) -> tuple[np.ndarray, ...]:
    """(occurrence, occurrence mask, intensity, intensity mask) over `aus` from a sample's sheet codes."""
    occ_codes, int_codes = sample.labels.get("au_occ", {}), sample.labels.get("au_int", {})
    occurrence, occ_mask = np.zeros(len(aus), np.float32), np.zeros(len(aus), bool)
    intensity, int_mask = np.zeros(len(aus), np.float32), np.zeros(len(aus), bool)
    for k, au in enumerate(aus):
        level = int_codes.get(au, UNKNOWN)
        if level != UNKNOWN:
            intensity[k], int_mask[k] = level, True
        code = occ_codes.get(au, UNKNOWN)
        if code != UNKNOWN:
            occurrence[k], occ_mask[k] = code, True
        elif au not in occ_codes and int_mask[k]:  # DISFA: intensity only
            occurrence[k], occ_mask[k] = float(level >= threshold), True
    return occurrence, occ_mask, intensity, int_mask


class AUFrames(Dataset):
    """Labelled frames of a frame source as batch items: `input` uint8 [3, S, S], `target` (occurrence, float
    [K]), `mask` [K], `intensity` [K] (0-5), `intensity_mask` [K], and `dataset`, `subject`, `sample`."""

    def __init__(self, frames: AlignedFrames, indices: Sequence[int], vectors: Sequence[tuple], names: Sequence[str],
                 subjects: Sequence[str], size: int):
        self.frames, self.indices, self.vectors = frames, list(indices), list(vectors)
        self.names, self.subjects, self.size = list(names), list(subjects), size

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def occurrence(self) -> np.ndarray:
        return np.stack([v[0] for v in self.vectors])

    @property
    def occurrence_mask(self) -> np.ndarray:
        return np.stack([v[1] for v in self.vectors])

    def __getitem__(self, i: int) -> dict:
        image = self.frames.read(self.indices[i], [0])[0]
        if image.shape[:2] != (self.size, self.size):
            method = cv2.INTER_AREA if image.shape[0] > self.size else cv2.INTER_LINEAR
            image = cv2.resize(image, (self.size, self.size), interpolation=method)
        occurrence, occ_mask, intensity, int_mask = (torch.from_numpy(v) for v in self.vectors[i])
        return {"input": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), "target": occurrence,
                "mask": occ_mask, "intensity": intensity, "intensity_mask": int_mask,
                "dataset": self.frames.samples[self.indices[i]].dataset, "subject": self.subjects[i],
                "sample": self.names[i]}


class SyntheticAUFrames(Dataset):
    """The synthetic AU faces with every AU of the set annotated: occurrence = activation >= 0.4 (FACS B),
    intensity = 5 x activation."""

    def __init__(self, subjects: Sequence[int], per_subject: int, aus: Sequence[int], size: int, seed: int):
        from common.synth import AUS
        from common.synth.datasets import SyntheticAUDataset

        missing = sorted(set(aus) - set(AUS))
        if missing:
            raise ValueError(f"--data.aus: the synthetic faces do not render AUs {missing}")
        self.faces = SyntheticAUDataset(subjects, per_subject, size=size, seed=seed)
        self.columns = [AUS.index(au) for au in aus]

    def __len__(self) -> int:
        return len(self.faces)

    @property
    def occurrence(self) -> np.ndarray:
        from common.synth import AU_OCCURRENCE_THRESHOLD

        return np.stack([(self.activations(i) >= AU_OCCURRENCE_THRESHOLD).astype(np.float32) for i in range(len(self))])

    @property
    def occurrence_mask(self) -> np.ndarray:
        return np.ones((len(self), len(self.columns)), bool)

    def activations(self, i: int) -> np.ndarray:
        return self.faces.activations(i)[self.columns]

    def __getitem__(self, i: int) -> dict:
        from common.synth import AU_INTENSITY_SCALE, AU_OCCURRENCE_THRESHOLD

        item = self.faces[i]
        activation = item["target"][self.columns]
        everything = torch.ones(len(self.columns), dtype=torch.bool)
        return {**item, "subject": f"synthetic/{item['subject']}", "target": (activation >= AU_OCCURRENCE_THRESHOLD).float(),
                "mask": everything, "intensity": activation * AU_INTENSITY_SCALE, "intensity_mask": everything}


class AUDataModule(TaskDataModule):
    """Faces as uint8 [3, S, S] with occurrence, intensity and masks over a set of AUs.

    Args:
        dataset: `synthetic` (the built-in AU faces), bp4d, disfa, or `bp4d+disfa` (joint, over the union of AUs).
        root: the dataset folder as distributed (or a cache); for a joint set a mapping `{bp4d: DIR, disfa: DIR}`.
        cache: caches made by `python -m common.prepare --task au`, given like `root`.
        aus: the model's AUs: a set of common/labels.yaml (app17, bp4d12, disfa12, disfa8) or a list of numbers;
            default bp4d12 for BP4D, disfa8 for DISFA, app17 for a joint set and the synthetic faces.
        occurrence_threshold: DISFA intensity at which an AU occurs (2, or 1 as OpenGraphAU).
        image_size: side of the aligned faces (256; the model crops 224 inside). margin: context around the face.
        fold: 0, 1 or 2 of `fold_scheme` (published: each dataset's 3-fold protocol; kfold; loso).
        val_fraction: share of the fold's training subjects that validates.
        subjects, per_subject: synthetic identities (train, val, test) and faces per identity.
    """

    def __init__(self, dataset: str | list[str] = "synthetic", root: str | dict[str, str] | None = None,
                 cache: str | dict[str, str] | None = None, aus: str | list[int] | None = None,
                 occurrence_threshold: int = 2, image_size: int = 256, margin: float = 0.15, fold: int | None = None,
                 fold_scheme: str = "published", num_folds: int = 3, val_fraction: float = 0.1,
                 subjects: tuple[int, int, int] = (24, 6, 6), per_subject: int = 40, **loader):
        super().__init__(**loader)
        check_choice("occurrence_threshold", occurrence_threshold, (1, 2))
        check_choice("fold_scheme", fold_scheme, FOLD_SCHEMES)
        check_fraction("val_fraction", val_fraction)
        self.datasets = dataset_names(datasets_from_roots(dataset, root))
        self.dataset_name = "+".join(self.datasets)
        self.sources = [None] if self.datasets == ["synthetic"] else dataset_sources(self.datasets, root, cache)
        default = DEFAULT_AUS[self.datasets[0]] if len(self.datasets) == 1 else JOINT_AUS
        self.aus = au_set(aus or default) if isinstance(aus, str) or aus is None else [int(a) for a in aus]
        self.occurrence_threshold, self.image_size, self.margin = occurrence_threshold, image_size, margin
        self.fold, self.fold_scheme, self.num_folds, self.val_fraction = fold, fold_scheme, num_folds, val_fraction
        self.subjects, self.per_subject = tuple(subjects), per_subject
        self.train_set = self.val_set = self.test_set = None

    @property
    def class_names(self) -> list[str]:
        return [au_name(au) for au in self.aus]

    @property
    def frame_settings(self) -> FrameSettings:
        return FrameSettings(AlignSettings(size=self.image_size, margin=self.margin), span="interval")


    @classmethod
    def dataset_parts(cls, dataset: str) -> list[str]:
        return dataset_names(dataset)

    @classmethod
    def class_of(cls, requested: str, dataset: str, sample: Sample) -> tuple[str | None, str | None]:
        aus = au_set(DEFAULT_AUS[dataset] if "+" not in requested else JOINT_AUS)
        _, mask, _, int_mask = label_vectors(sample, aus, 2)
        return ("labelled frames", None) if mask.any() or int_mask.any() else (None, "no coded AU in the set")

    @classmethod
    def label_counts(cls, requested: str, dataset: str, samples) -> dict[str, dict[str, int]]:
        aus = au_set(DEFAULT_AUS[dataset] if "+" not in requested else JOINT_AUS)
        positive, unknown = Counter(), Counter()
        for sample in samples:
            occurrence, mask, _, _ = label_vectors(sample, aus, 2)
            for au, occurs, known in zip(aus, occurrence, mask):
                positive[au_name(au)] += int(known and occurs)
                unknown[au_name(au)] += int(not known)
        return {"au_positive": dict(positive), "au_unknown": dict(unknown)}

    def positive_rates(self) -> np.ndarray:
        """Per AU, the share of the training fold's annotated frames where it occurs (for the loss weights)."""
        parts = getattr(self.train_set, "datasets", [self.train_set])
        occurrence = np.concatenate([p.occurrence for p in parts])
        mask = np.concatenate([p.occurrence_mask for p in parts])
        return (occurrence * mask).sum(0) / np.maximum(mask.sum(0), 1)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.datasets == ["synthetic"]:
            self._setup_synthetic()
            return
        if self.fold is None:
            raise ValueError(f"--data.fold: {self.dataset_name} is evaluated by subject folds; pass --data.fold 0, 1 "
                             f"or 2 (the published 3-fold protocol)")
        parts = [self.labelled(name, source) for name, source in zip(self.datasets, self.sources)]
        split = self.split_parts(parts)
        self.train_set, self.val_set, self.test_set = (self.frames_of(parts, rows) for rows in (split.train, split.val, split.test))

    def _setup_synthetic(self) -> None:
        if self.fold is None:
            train, val, test = subject_ranges(self.subjects)
        else:
            identities = [f"synthetic/{i}" for i in range(sum(self.subjects))]
            scheme = "kfold" if self.fold_scheme == "published" else self.fold_scheme
            split = self.subject_fold(identities, scheme, self.num_folds, self.val_fraction)
            train, val, test = ([int(s.split("/")[1]) for s in part] for part in
                                (split.train_subjects, split.val_subjects, split.test_subjects))
        make = lambda ids, offset: SyntheticAUFrames(ids, self.per_subject, self.aus, self.image_size, self.seed + offset)
        self.train_set, self.val_set, self.test_set = make(train, 0), make(val, 1), make(test, 2)

    def labelled(self, name: str, source: Path) -> dict:
        frames = open_source(source, name, task="au", settings=self.frame_settings)
        root = source_root(frames, source)
        kept, left_out = [], Counter()
        for i, sample in enumerate(frames.samples):
            vectors = label_vectors(sample, self.aus, self.occurrence_threshold)
            if vectors[1].any() or vectors[3].any():
                kept.append((i, vectors))
            else:
                left_out["no coded AU in the set"] += 1
        report_left_out(name, source, left_out)
        return {"frames": frames, "rows": kept, "subjects": [f"{name}/{frames.samples[i].subject}" for i, _ in kept],
                "names": [sample_name(frames.samples[i], root) for i, _ in kept]}

    def frames_of(self, parts: list[dict], chosen: Sequence[int]) -> Dataset | None:
        sets = [AUFrames(part["frames"], [part["rows"][k][0] for k in mine], [part["rows"][k][1] for k in mine],
                         [part["names"][k] for k in mine], [part["subjects"][k] for k in mine], self.image_size)
                for part, mine in chosen_parts(parts, chosen)]
        if not sets:
            return None
        return sets[0] if len(sets) == 1 else ConcatDataset(sets)

    @property
    def validates(self) -> bool:
        return self.val_fraction > 0




def dataset_names(dataset: str | Sequence[str]) -> list[str]:
    return common_dataset_names("au", dataset)
