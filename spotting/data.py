"""Spotting data: long videos as per-frame motion features (spotting/features.py) with per-frame targets.

Training reads windows of `window` feature frames (half-overlapping) from the training videos; validation and
test read whole videos, one per batch. Targets per type (macro, micro): actionness 1 inside an annotated interval,
start and end as Gaussians (sigma = a tenth of the interval, at least one frame) at its onset and offset.

Datasets: `synthetic` (the built-in long videos of common.synth: planted micro and macro expressions among blinks
and slow head drift, rendered and featurised once, then cached), casme_sq, samm_lv, casme3_lv (spotting/parsers.py).
Real datasets are split by subject (LOSO by default, `--data.fold K`); thresholds and checkpoints are chosen on
validation subjects carved from the training subjects, or on the training videos when `val_fraction` is 0.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.data import load_samples
from common.data.records import Interval, Sample
from common.datamodule import (TaskDataModule, check_choice, check_fraction, dataset_sources, datasets_from_roots,
                               subject_ranges)
from common.datamodule import dataset_names as common_dataset_names
from spotting.features import FeatureCache, FeatureSettings, VideoFeatures, extract
from spotting.parsers import video_events
from spotting.postprocess import SCORE_NAMES, TYPES

DEFAULT_CACHE = "~/.cache/facex/spotting-features"
FOLD_SCHEMES = ("loso", "kfold")


def dataset_names(dataset) -> list[str]:
    return common_dataset_names("spotting", dataset)


def frame_positions(numbers: np.ndarray, frames: Sequence[int]) -> np.ndarray:
    """Feature positions of source frame numbers: the last kept frame at or before each."""
    return np.clip(np.searchsorted(numbers, np.asarray(frames), side="right") - 1, 0, len(numbers) - 1)


def frame_targets(numbers: np.ndarray, events: Sequence[dict]) -> np.ndarray:
    """[T, 6] targets in SCORE_NAMES order for a video whose feature frames are `numbers`."""
    out = np.zeros((len(numbers), len(SCORE_NAMES)), np.float32)
    t = np.arange(len(numbers))
    for event in events:
        onset, offset = frame_positions(numbers, [event["interval"].onset, event["interval"].offset])
        base = 3 * TYPES.index(event["type"])
        sigma = max(1.0, 0.1 * (offset - onset + 1))
        out[onset:offset + 1, base] = 1.0
        out[:, base + 1] = np.maximum(out[:, base + 1], np.exp(-0.5 * ((t - onset) / sigma) ** 2))
        out[:, base + 2] = np.maximum(out[:, base + 2], np.exp(-0.5 * ((t - offset) / sigma) ** 2))
    return out


class Video:
    """One featurised video and its annotation."""

    def __init__(self, dataset: str, subject: str, vid: str, features: VideoFeatures, events: Sequence[dict]):
        self.dataset, self.subject, self.vid, self.value, self.events = dataset, subject, vid, features, list(events)
        self.targets = frame_targets(features.numbers, self.events)

    def item(self, start: int = 0, stop: int | None = None) -> dict:
        stop = len(self.value.features) if stop is None else stop
        return {"input": torch.from_numpy(self.value.features[start:stop]),
                "target": torch.from_numpy(self.targets[start:stop]),
                "dataset": self.dataset, "subject": self.subject, "sample": self.vid}


class Windows(Dataset):
    """Half-overlapping windows over training videos, each moved by a random shift of up to half a window every
    time it is read (`jitter`); a window that runs past the end is zero-padded (`mask`)."""

    def __init__(self, videos: Sequence[Video], window: int, jitter: bool = True):
        self.videos, self.window, self.jitter = list(videos), window, jitter
        self.index = [(v, start) for v, video in enumerate(self.videos)
                      for start in range(0, max(1, len(video.value.features) - window // 2), window // 2)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        v, start = self.index[i]
        if self.jitter:
            shift = int(torch.randint(-(self.window // 4), self.window // 4 + 1, ()))
            start = min(max(0, start + shift), max(0, len(self.videos[v].value.features) - self.window // 2))
        item = self.videos[v].item(start, start + self.window)
        valid = len(item["input"])
        pad = self.window - valid
        if pad:
            item["input"] = torch.cat([item["input"], item["input"].new_zeros(pad, item["input"].shape[1])])
            item["target"] = torch.cat([item["target"], item["target"].new_zeros(pad, item["target"].shape[1])])
        item["mask"] = torch.arange(self.window) < valid
        return item


class Videos(Dataset):
    """Whole videos, one per item; `numbers`, `step` and `fps` say where each feature frame lies in the source."""

    def __init__(self, videos: Sequence[Video]):
        self.videos = list(videos)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> dict:
        video = self.videos[i]
        return {**video.item(), "mask": torch.ones(len(video.value.features), dtype=torch.bool),
                "numbers": torch.from_numpy(video.value.numbers.astype(np.int64)), "step": video.value.step,
                "fps": video.value.fps, "index": i}


def single(batch: list[dict]) -> dict:
    """Batches of one whole video keep its own length."""
    item = batch[0]
    return {key: (value.unsqueeze(0) if isinstance(value, torch.Tensor) else [value]) for key, value in item.items()}


class SpottingDataModule(TaskDataModule):
    """Per-frame motion features of long videos, with onset/offset/actionness targets for macro and micro.

    Args:
        dataset: `synthetic` (default), casme_sq, samm_lv or casme3_lv.
        root: the dataset folder as distributed.
        feature_cache: folder for cached features (null: compute every time).
        window: training window, in feature frames (about 8.5 s at 30 fps).
        flow_method, k, face_size, margin, target_fps, regions, detector: the features (spotting/features.py);
            k None = 0.1 s after subsampling. The synthetic faces fill their frames: detector `none` there.
        fold: the fold of `fold_scheme` (loso: one subject per fold) for a real dataset. val_fraction: share of
            the training subjects that validates (chooses thresholds and the checkpoint).
        subjects: synthetic identities (train, val, test). seconds, fps, videos_per_subject: synthetic videos.
    """

    def __init__(self, dataset: str = "synthetic", root: str | dict[str, str] | None = None,
                 feature_cache: str | None = DEFAULT_CACHE, window: int = 256, flow_method: str = "dis",
                 k: int | None = None, face_size: int = 128, margin: float = 0.15, target_fps: float = 30.0,
                 regions: list[str] | None = None, detector: str = "auto", fold: int | None = None,
                 fold_scheme: str = "loso", num_folds: int = 5, val_fraction: float = 0.2,
                 subjects: tuple[int, int, int] = (8, 2, 3), seconds: float = 60.0, fps: float = 30.0,
                 videos_per_subject: int = 1, **loader):
        loader.setdefault("batch_size", 8)
        super().__init__(**loader)
        check_choice("fold_scheme", fold_scheme, FOLD_SCHEMES)
        check_fraction("val_fraction", val_fraction)
        if window < 16:
            raise ValueError(f"--data.window must be at least 16 feature frames, got {window}")
        self.datasets = dataset_names(datasets_from_roots(dataset, root))
        self.dataset_name = "+".join(self.datasets)
        self.synthetic = self.datasets == ["synthetic"]
        self.sources = [None] if self.synthetic else dataset_sources(self.datasets, root, None)
        from spotting.features import REGIONS

        self.feature_settings = FeatureSettings(
            size=face_size, margin=margin, k=k, method=flow_method, target_fps=target_fps,
            regions=tuple(regions or REGIONS), detector="none" if self.synthetic else detector)
        self.cache = FeatureCache(None if feature_cache is None else Path(feature_cache).expanduser(),
                                  self.feature_settings)
        self.window = window
        self.fold, self.fold_scheme, self.num_folds, self.val_fraction = fold, fold_scheme, num_folds, val_fraction
        self.subjects, self.seconds, self.fps = tuple(subjects), seconds, fps
        self.videos_per_subject = videos_per_subject
        self.train_videos: list[Video] = []
        self.val_videos: list[Video] = []
        self.test_videos: list[Video] = []

    # --- what the model takes from here ---
    @property
    def feature_dim(self) -> int:
        return self.feature_settings.dim

    @property
    def features(self) -> dict:
        """The feature extractor's settings and names (exported as model metadata)."""
        return {**self.feature_settings.to_dict(), "names": self.feature_settings.names()}

    @property
    def preprocessing(self) -> dict:
        from common.data.align import preprocessing_record

        record = preprocessing_record(self.feature_settings.align_settings())
        if self.synthetic:
            record["face_detector"] = "none (synthetic faces are rendered centred and upright)"
        return record

    @property
    def validates(self) -> bool:
        return True  # thresholds are chosen every epoch: on validation subjects, else on the training videos

    # --- inspect ---
    @classmethod
    def dataset_parts(cls, dataset: str) -> list[str]:
        return dataset_names(dataset)

    @classmethod
    def class_of(cls, requested: str, dataset: str, sample: Sample) -> tuple[str | None, str | None]:
        return ("video", None) if video_events(sample) else (None, "no annotated interval")

    @classmethod
    def label_counts(cls, requested: str, dataset: str, samples) -> dict:
        counts = Counter(e["type"] for sample in samples for e in video_events(sample))
        return {"classes": {kind: counts[kind] for kind in TYPES}, **{kind: counts[kind] for kind in TYPES},
                "videos": len(samples)}

    # --- setup ---
    def setup(self, stage: str | None = None) -> None:
        if self.train_videos:
            return
        if self.synthetic:
            self._setup_synthetic()
        else:
            self._setup_real()
        if not self.train_videos:
            raise ValueError(f"{self.dataset_name} fold {self.fold}: no training videos")
        self.train_set = Windows(self.train_videos, self.window)
        self.val_set = Videos(self.val_videos or self.train_videos)
        self.test_set = Videos(self.test_videos)

    def _setup_synthetic(self) -> None:
        from common.synth import long_video

        blocks = subject_ranges(self.subjects)
        if self.fold is not None:
            identities = [f"synthetic/{i}" for i in range(sum(self.subjects))]
            split = self.subject_fold(identities, self.fold_scheme, self.num_folds, self.val_fraction)
            blocks = [[int(s.split("/")[1]) for s in part]
                      for part in (split.train_subjects, split.val_subjects, split.test_subjects)]
        made = []
        for block in blocks:
            videos = []
            for subject in block:
                for take in range(self.videos_per_subject):
                    video = long_video(subject, self.seed * 1000 + take, fps=self.fps, seconds=self.seconds,
                                       size=self.feature_settings.size)
                    videos.append(self.synthetic_video(video, take))
            made.append(videos)
        self.train_videos, self.val_videos, self.test_videos = made

    def synthetic_video(self, video, take: int) -> Video:
        vid = f"s{video.subject}_{take}"
        key = self.cache.key(f"synthetic/{video.subject}@{video.seed}", len(video), video.fps)
        value = self.cache.load(key)
        if value is None:
            value = extract(lambda positions: np.stack([video.frame(int(p)) for p in positions]),
                            np.arange(len(video)), video.fps, self.feature_settings, where=vid,
                            progress=lambda done, total: self.cache.report_progress(f"synthetic {vid}", done, total))
            self.cache.save(key, value)
        events = [{"interval": Interval(e.onset, e.apex, e.offset), "type": e.kind, "emotion": str(e.emotion),
                   "aus": "", "row": k} for k, e in enumerate(video.events)]
        return Video("synthetic", f"synthetic/{video.subject}", vid, value, events)

    def _setup_real(self) -> None:
        if self.fold is None:
            raise ValueError(f"--data.fold: {self.dataset_name} is evaluated leave-one-subject-out; pass "
                             f"--data.fold K (python -m common.loso runs every fold)")
        samples = [(name, s) for name, source in zip(self.datasets, self.sources)
                   for s in load_samples(name, source, task="spotting") if video_events(s)]
        subjects = [f"{name}/{s.subject}" for name, s in samples]
        split = self.subject_fold(subjects, self.fold_scheme, self.num_folds, self.val_fraction)
        featurise = lambda rows: [Video(samples[i][0], subjects[i], samples[i][1].extra["vid"],
                                        self.cache.video(samples[i][1], f"{samples[i][0]} {samples[i][1].extra['vid']}"),
                                        video_events(samples[i][1])) for i in rows]
        self.train_videos, self.val_videos, self.test_videos = (featurise(rows) for rows in
                                                                (split.train, split.val, split.test))

    # --- loaders ---
    def positive_rates(self) -> np.ndarray:
        targets = np.concatenate([v.targets for v in self.train_videos])
        return (targets > 0.5).mean(0)

    def feature_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        features = np.concatenate([v.value.features for v in self.train_videos])
        return features.mean(0), features.std(0)

    def _videos_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=single, num_workers=0)

    def val_dataloader(self):
        return self._videos_loader(self.val_set)

    def test_dataloader(self):
        return self._videos_loader(self.test_set)

    def predict_dataloader(self):
        return self._videos_loader(self.test_set)

