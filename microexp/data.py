"""Micro-expression data: the built-in synthetic micro clips and the real datasets (parsed in
microexp/parsers.py), as uint8 clips [T, 3, S, S] with a class of a scheme in common/labels.yaml.

Subjects are named `<dataset>/<subject>` so that subjects of a joint set never collide; `--data.fold K` holds
out fold K of a subject split (`fold_scheme` loso: one subject, kfold, or lodo: one dataset), saved as
folds.csv in the run directory. Validation subjects are carved from the training subjects of the fold, never
from the held-out ones; `val_fraction 0` trains for a fixed epoch budget with no validation at all.
"""
from __future__ import annotations

import bisect
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from common.data import report_left_out
from common.data.align import AlignSettings
from common.data.cache import AlignedFrames, FrameSettings, open_source, source_root
from common.data.clips import clip_positions, gather_clip
from common.data.records import Interval, Sample, sample_name
from common.datamodule import (TaskDataModule, check_choice, check_fraction, chosen_parts, dataset_sources,
                               datasets_from_roots, per_dataset)
from common.datamodule import dataset_names as common_dataset_names
from common.labels import class_names, word_map
from microexp.flow import FLOW_METHODS, FlowFeatureCache, roi_flow_features
from microexp.parsers import FPS

COMPOSITES = {"megc2019": ("casme2", "samm", "smic")}
DEFAULT_SCHEMES = {"casme2": "casme2_5", "samm": "samm_5", "smic": "smic_3", "casme3": "casme3_4",
                   "megc2019": "megc2019", "synthetic": "megc2019"}
JOINT_SCHEME = "megc2019"
SAMPLINGS = ("uniform", "apex")
INPUTS = ("clips", "roi_flow")
HEADS = ("shared", "per_dataset")
FEATURE_CACHE = Path(".cache") / "flow"
# the synthetic generator's emotion (EMOTIONS order) for each class of the megc2019 scheme
SYNTHETIC_EMOTIONS = {"negative": (2, 4, 5, 6), "positive": (1,), "surprise": (3,)}


# ---------------------------------------------------------------- datasets


class MicroClips(Dataset):
    """Annotated intervals of a frame source as batch items: `input` uint8 [T, 3, S, S] sampled from onset to
    offset (uniform, with one random position per segment in training) or around the apex, `target`, and the
    sample's `dataset`, `subject` and `sample` id."""

    def __init__(self, frames: AlignedFrames, indices: Sequence[int], labels: Sequence[int], names: Sequence[str],
                 subjects: Sequence[str], length: int, sampling: str, size: int, train: bool):
        self.frames, self.indices, self.names, self.subjects = frames, list(indices), list(names), list(subjects)
        self.labels = [int(v) for v in labels]
        self.length, self.sampling, self.size, self.train = length, sampling, size, train

    def __len__(self) -> int:
        return len(self.indices)

    def identity(self, i: int) -> dict:
        return {"target": self.labels[i], "dataset": self.frames.samples[self.indices[i]].dataset,
                "subject": self.subjects[i], "sample": self.names[i]}

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        sample = self.frames.samples[index]
        rng = np.random.default_rng(int(torch.randint(2 ** 31, ()))) if self.train and self.sampling == "uniform" else None
        clip = self.frames.clip(index, clip_positions(sample.interval, self.length, self.sampling, rng=rng))
        return {"input": clip_tensor(clip, self.size), **self.identity(i)}


def clip_tensor(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, 3, size, size] (a cache made at another size is resized)."""
    if frames.shape[1:3] != (size, size):
        method = cv2.INTER_AREA if frames.shape[1] > size else cv2.INTER_LINEAR
        frames = np.stack([cv2.resize(f, (size, size), interpolation=method) for f in frames])
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))


class JointClips(ConcatDataset):
    """Clips of several datasets in one; `identity` and `labels` as each part gives them."""

    @property
    def labels(self) -> list[int]:
        return [label for part in self.datasets for label in part.labels]

    def identity(self, i: int) -> dict:
        part = bisect.bisect_right(self.cumulative_sizes, i)
        return self.datasets[part].identity(i - (self.cumulative_sizes[part - 1] if part else 0))


class SyntheticMicroClips(Dataset):
    """Micro-expression clips of the synthetic faces, rendered on the fly: item i is a pure function of
    (seed, i); classes of the megc2019 scheme cycle with i, so every subject shows every class."""

    def __init__(self, subjects: Sequence[int], per_subject: int, length: int = 16, size: int = 224,
                 sampling: str = "uniform", fps: float = 200.0, seed: int = 0):
        self.subjects, self.per_subject = [int(s) for s in subjects], int(per_subject)
        self.length, self.size, self.sampling, self.fps, self.seed = length, size, sampling, fps, seed
        self.classes = class_names("megc2019")

    @property
    def labels(self) -> list[int]:
        return [i % len(self.classes) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self.subjects) * self.per_subject

    def identity(self, i: int) -> dict:
        subject = self.subjects[i // self.per_subject]
        return {"target": i % len(self.classes), "dataset": "synthetic", "subject": f"synthetic/{subject}",
                "sample": f"{subject}/{i % self.per_subject}@{self.seed}"}

    def __getitem__(self, i: int) -> dict:
        from common.synth import expression_clip

        subject, label = self.subjects[i // self.per_subject], i % len(self.classes)
        choices = SYNTHETIC_EMOTIONS[self.classes[label]]
        clip = expression_clip(subject, self.seed * 100_003 + i, kind="micro", fps=self.fps,
                               n_frames=self.length + 8, size=self.size, emotion=choices[(i // 3) % len(choices)])
        positions = clip_positions(Interval(clip.onset, clip.apex, clip.offset), self.length, self.sampling)
        frames = gather_clip(lambda p: clip.frames[p], positions, np.arange(len(clip.frames)))
        return {"input": torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))), **self.identity(i)}


class FlowFeatures(Dataset):
    """Items of a clip dataset with `input` replaced by its 7-region optical-flow features, float32 [T, 14],
    computed once per clip and cached (microexp/flow.py)."""

    def __init__(self, clips: Dataset, cache: FlowFeatureCache, method: str, margin: float):
        self.clips, self.cache, self.method, self.margin = clips, cache, method, margin

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def labels(self) -> list[int]:
        return self.clips.labels

    def __getitem__(self, i: int) -> dict:
        identity = self.clips.identity(i)
        compute = lambda: roi_flow_features(self.clips[i]["input"].permute(0, 2, 3, 1).numpy(), self.method,
                                            self.margin)
        features = self.cache.get(f"{identity['dataset']}:{identity['sample']}", compute)
        return {"input": torch.from_numpy(features), **identity}


# ---------------------------------------------------------------- the data module


class MicroExpDataModule(TaskDataModule):
    """Micro-expression clips as uint8 [T, 3, S, S] with classes of one scheme.

    Args:
        dataset: `synthetic` (the built-in generator), casme2, samm, smic, casme3, the MEGC2019 composite
            `megc2019` (casme2 + samm + smic), or several (a list, or names joined by '+') trained jointly in one
            label space.
        root: the dataset folder as distributed (or a cache); for a joint set or the composite a mapping
            `{dataset: folder}`, e.g. `{casme2: DIR, samm: DIR, smic: DIR}`.
        cache: caches made by `python -m common.prepare --task microexp`, given like `root`.
        scheme: class scheme of common/labels.yaml (casme2_5, casme2_7, samm_5, smic_3, casme3_3/4/7, megc4,
            megc2019); default: the dataset's usual one, megc2019 for joint sets and the composite. Samples whose
            emotion the scheme does not name are left out (and counted). With `heads: per_dataset`, a mapping
            `{dataset: scheme}` (default: each dataset's usual scheme).
        heads: `shared` (one label space for all datasets) or `per_dataset` (one head per dataset: classes are
            named `<dataset>:<class>` and each sample is scored within its dataset's classes).
        clip_length: frames per clip (16 for VideoMAE). sampling: `uniform` from onset to offset, or `apex`.
        image_size: side of the aligned face crops. margin: context around the aligned face.
        fold: the held-out fold of `fold_scheme` (loso, kfold with `num_folds`, lodo); required for real data,
            which has no official split.
        val_fraction: share of each fold's training subjects that validates (0: no validation).
        subjects: synthetic identities (train, val, test) without a fold, or all of them for a fold split.
        per_subject: synthetic clips per identity.
        inputs: `clips` (uint8 frames), or `roi_flow`: 7-region optical-flow features [T, 14] for the
            ROI-Transformer baseline, with `flow_method` dis or farneback, computed once and kept in
            `feature_cache` (default .cache/flow/<dataset>).
    """

    def __init__(self, dataset: str | list[str] = "synthetic", root: str | list[str] | dict[str, str] | None = None,
                 cache: str | list[str | None] | dict[str, str] | None = None,
                 scheme: str | dict[str, str] | None = None, heads: str = "shared",
                 clip_length: int = 16, sampling: str = "uniform", image_size: int = 224, margin: float = 0.15,
                 fold: int | None = None, fold_scheme: str = "loso", num_folds: int = 5, val_fraction: float = 0.15,
                 subjects: tuple[int, ...] = (16, 4, 4), per_subject: int = 9, inputs: str = "clips",
                 flow_method: str = "dis", feature_cache: str | None = None, **loader):
        super().__init__(**loader)
        for flag, value, choices in (("inputs", inputs, INPUTS), ("flow_method", flow_method, FLOW_METHODS),
                                     ("sampling", sampling, SAMPLINGS), ("heads", heads, HEADS)):
            check_choice(flag, value, choices)
        check_fraction("val_fraction", val_fraction)
        self.requested = dataset_names(datasets_from_roots(dataset, root))
        self.dataset_name = "+".join(self.requested)
        self.datasets = [part for name in self.requested for part in COMPOSITES.get(name, (name,))]
        self.heads = heads
        self.schemes = self.resolve_schemes(scheme)
        self.scheme = "+".join(dict.fromkeys(self.schemes.values()))
        if self.datasets == ["synthetic"] and self.scheme != "megc2019":
            raise ValueError(f"--data.scheme {self.scheme!r}: the synthetic clips are labelled in megc2019's classes")
        for name in self.datasets if self.datasets != ["synthetic"] else []:
            word_map(self.schemes[name], name)  # a scheme that cannot label a dataset fails here, naming both
        self.sources = [None] if self.datasets == ["synthetic"] else dataset_sources(self.datasets, root, cache)
        self.clip_length, self.sampling, self.image_size, self.margin = clip_length, sampling, image_size, margin
        self.fold, self.fold_scheme, self.num_folds, self.val_fraction = fold, fold_scheme, num_folds, val_fraction
        self.subjects, self.per_subject = tuple(subjects), per_subject
        self.inputs, self.flow_method = inputs, flow_method
        self.feature_cache = Path(feature_cache) if feature_cache else FEATURE_CACHE / self.dataset_name
        self.train_set = self.val_set = self.test_set = None

    def resolve_schemes(self, scheme) -> dict[str, str]:
        """The class scheme of each dataset: one for all (shared head), or each its own (one head per dataset)."""
        if self.heads == "shared":
            if isinstance(scheme, Mapping):
                raise ValueError("--data.scheme: a mapping of schemes needs --data.heads per_dataset")
            chosen = scheme or (DEFAULT_SCHEMES[self.requested[0]] if len(self.requested) == 1 else JOINT_SCHEME)
            return {name: chosen for name in self.datasets}
        given = per_dataset(scheme, self.datasets, "scheme") if isinstance(scheme, Mapping) else [scheme] * len(self.datasets)
        return {name: s or DEFAULT_SCHEMES[name] for name, s in zip(self.datasets, given)}

    @property
    def class_names(self) -> list[str]:
        if self.heads == "shared":
            return class_names(self.schemes[self.datasets[0]])
        return [f"{name}:{c}" for name in self.datasets for c in class_names(self.schemes[name])]

    @property
    def class_groups(self) -> dict[str, list[int]] | None:
        """{dataset: [start, end]} slices of `class_names` with one head per dataset; None for a shared head."""
        if self.heads == "shared":
            return None
        groups, start = {}, 0
        for name in self.datasets:
            end = start + len(class_names(self.schemes[name]))
            groups[name], start = [start, end], end
        return groups

    @property
    def validates(self) -> bool:
        """False for a fixed epoch budget (val_fraction 0): the checkpoint is then the last one."""
        return self.val_fraction > 0

    @classmethod
    def dataset_parts(cls, dataset: str) -> list[str]:
        return [part for name in dataset_names(dataset) for part in COMPOSITES.get(name, (name,))]

    @classmethod
    def class_of(cls, requested: str, dataset: str, sample: Sample) -> tuple[str | None, str | None]:
        names = dataset_names(requested)
        scheme = DEFAULT_SCHEMES[names[0]] if len(names) == 1 else JOINT_SCHEME
        label = word_map(scheme, dataset).get(str(sample.labels.get("emotion", "")).lower())
        if label is None:
            return None, f"emotion {sample.labels.get('emotion')!r} not in {scheme}"
        return class_names(scheme)[label], None

    @property
    def frame_settings(self) -> FrameSettings:
        return FrameSettings(AlignSettings(size=self.image_size, margin=self.margin), span="interval")

    @property
    def preprocessing(self) -> dict:
        record = super().preprocessing
        fps = {name: FPS.get(name, 200.0) for name in self.datasets}
        record["fps"] = fps
        record["clip_sampling"] = (f"{self.clip_length} frames, " + ("uniform from onset to offset (interpolated "
                                   "where the interval is shorter)" if self.sampling == "uniform" else
                                   "consecutive frames centred on the apex"))
        return record

    # --- setup ---
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.datasets == ["synthetic"]:
            self._setup_synthetic()
        else:
            self._setup_real()
        if self.inputs == "roi_flow":
            cache = FlowFeatureCache(self.feature_cache, {"method": self.flow_method, "length": self.clip_length,
                                                          "sampling": self.sampling, "size": self.image_size,
                                                          "margin": self.margin, "seed": self.seed})
            wrap = lambda part: None if part is None else FlowFeatures(part, cache, self.flow_method, self.margin)
            self.train_set, self.val_set, self.test_set = map(wrap, (self.train_set, self.val_set, self.test_set))

    def _setup_synthetic(self) -> None:
        if self.fold is None:
            train, val, test = (list(range(start, start + n)) for start, n in
                                zip(np.cumsum((0,) + self.subjects[:-1]), self.subjects))
        else:
            identities = [f"synthetic/{i}" for i in range(sum(self.subjects))]
            split = self.subject_fold(identities, self.fold_scheme, self.num_folds, self.val_fraction)
            train, val, test = ([int(s.split("/")[1]) for s in part] for part in
                                (split.train_subjects, split.val_subjects, split.test_subjects))
        make = lambda ids, offset: SyntheticMicroClips(ids, self.per_subject, self.clip_length, self.image_size,
                                                       self.sampling, seed=self.seed + offset)
        self.train_set, self.test_set = make(train, 0), make(test, 2)
        self.val_set = make(val, 1) if val else None

    def _setup_real(self) -> None:
        if self.fold is None:
            raise ValueError(f"--data.fold: {self.dataset_name} has no official split; pass the held-out fold "
                             f"(--data.fold K with --data.fold_scheme {self.fold_scheme})")
        parts = [self.labelled(name, source) for name, source in zip(self.datasets, self.sources)]
        split = self.split_parts(parts)
        self.train_set = self.clips(parts, split.train, train=self.inputs == "clips")
        self.val_set = self.clips(parts, split.val, train=False) if split.val else None
        self.test_set = self.clips(parts, split.test, train=False)

    def labelled(self, name: str, source: Path) -> dict:
        """The samples of one dataset that the scheme labels, with their classes and ids."""
        frames = open_source(source, name, task="microexp", settings=self.frame_settings)
        scheme = self.schemes[name]
        words = word_map(scheme, name)
        offset = self.class_groups[name][0] if self.class_groups else 0
        kept, left_out = [], Counter()
        for i, sample in enumerate(frames.samples):
            label = words.get(str(sample.labels.get("emotion", "")).lower())
            if label is None:
                left_out[f"emotion {sample.labels.get('emotion')!r} not in {scheme}"] += 1
            else:
                kept.append((i, offset + label))
        report_left_out(name, source, left_out)
        root = source_root(frames, source)
        return {"frames": frames, "rows": kept,
                "subjects": [f"{name}/{frames.samples[i].subject}" for i, _ in kept],
                "names": [sample_name(frames.samples[i], root) for i, _ in kept]}

    def clips(self, parts: list[dict], chosen: Sequence[int], train: bool) -> Dataset:
        """The chosen positions of the joint sample list, as one dataset per source joined together."""
        sets = [MicroClips(part["frames"], [part["rows"][k][0] for k in mine], [part["rows"][k][1] for k in mine],
                           [part["names"][k] for k in mine], [part["subjects"][k] for k in mine], self.clip_length,
                           self.sampling, self.image_size, train)
                for part, mine in chosen_parts(parts, chosen)]
        return sets[0] if len(sets) == 1 else JointClips(sets)




def dataset_names(dataset: str | Sequence[str]) -> list[str]:
    names = common_dataset_names("microexp", dataset, composites=tuple(COMPOSITES))
    expanded = [part for n in names for part in COMPOSITES.get(n, (n,))]
    if len(set(expanded)) != len(expanded):
        raise ValueError(f"--data.dataset {dataset!r} names a dataset twice")
    return names
