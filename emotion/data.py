"""Emotion data: the built-in synthetic faces and the real macro-expression datasets.

Parsers (registered for `common.prepare` and the data module) map every dataset's codes into the shared order
0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt, and tag each sample with its
official split in extra["split"]:

    fer2013        fer2013.csv (or fer2013/fer2013.csv as Kaggle unpacks it): Training -> train,
                   PublicTest -> val, PrivateTest -> test. Faces are read from the sheet's pixels by the reader
                   kind `fer2013_pixels`, which numbers the sheet's data rows like frames.
    ferplus        fer2013new.csv beside fer2013.csv, row for row; same splits. Labels keep the votes
                   (shared order, then unknown, NF); rows with an empty Image name or whose most voted column is
                   unknown or NF are left out, as FERPlus defines.
    rafdb          EmoLabel/list_patition_label.txt + Image/aligned/*_aligned.jpg; train_ -> train, test_ -> test.
    affectnet      Manually_Annotated_file_lists/{training,validation}.csv + Manually_Annotated_Images/;
                   training -> train, validation -> test (its de-facto test set); codes 8-10 left out; the
                   face box goes to extra["face_box"], so reading crops it.
    affectnet_npy  {train_set,val_set}/images/<i>.jpg + annotations/<i>_exp.npy; train_set -> train,
                   val_set -> test; codes 8-10 left out.

Validation: FER2013 and FERPlus validate on PublicTest, their official validation split, and ignore
`val_fraction`; the others carve a class-stratified, seeded subset out of their training split. An official
test split is only ever used by `test` and `predict`.

A row that cannot be read, a label code the dataset does not define or an image that is not there stops the
parser with the file and the line (as an editor numbers it); rows left out by a dataset's own rules are
counted in the log.

Images are face crops already (AffectNet's box is applied), so a raw root is resized, never searched for a
face. A cache with the same crops: `python -m common.prepare --task emotion --dataset rafdb --root R --out C
--detector none --margin 0`; FER2013 and FERPlus faces come through a reader kind registered in this module,
so their prepare worker processes need `--import emotion.data`.
"""
from __future__ import annotations

import functools
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import ConcatDataset, Dataset

from common.data import DATASETS, register_dataset
from common.data.align import AlignSettings
from common.data.cache import AlignedFrames, FrameSettings, is_cache, open_source
from common.data.readers import FrameSource, ReadError, register_reader
from common.data.records import Interval, Sample
from common.data.sampling import ClassBalancedSampler, stratified_subset
from common.data.sheets import (AnnotationError, MissingImageError, csv_rows, find_file, integer, number,
                                row_error)
from common.datamodule import TaskDataModule, subject_ranges

EMOTION_CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
CONTEMPT = EMOTION_CLASSES.index("contempt")
SPLITS = ("train", "val", "test")
FERPLUS_MODES = ("majority", "soft")

# dataset code -> shared label
FER2013_TO_SHARED = (6, 5, 4, 1, 2, 3, 0)  # Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral
FER2013_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FER2013_FILES = ("fer2013.csv", "fer2013/fer2013.csv")
FER_SIDE = 48
FERPLUS_EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FERPLUS_TO_SHARED = (0, 1, 3, 2, 6, 5, 4, 7)
FERPLUS_COLUMNS = (*FERPLUS_EMOTIONS, "unknown", "NF")
# 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral
RAFDB_TO_SHARED = {1: 3, 2: 4, 3: 5, 4: 1, 5: 2, 6: 6, 7: 0}
RAFDB_LIST = "EmoLabel/list_patition_label.txt"
AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                     "expression", "valence", "arousal")
AFFECTNET_SHEETS = {"train": "training.csv", "test": "validation.csv"}
AFFECTNET_NPY_FOLDERS = {"train": "train_set", "test": "val_set"}
AFFECTNET_DROPPED = {8: "None", 9: "Uncertain", 10: "No-Face"}
FER_PIXELS_KIND = "fer2013_pixels"


def report_left_out(dataset: str, where: Path, counts: Counter) -> None:
    if counts:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        rank_zero_info(f"{dataset}: {where}: left out {sum(counts.values())} samples ({reasons})")


def existing_image(path: Path, sheet: Path, line: int | None) -> Path:
    if not path.is_file():
        where = f"{sheet}, line {line}" if line is not None else f"{sheet}"
        raise MissingImageError(f"{where}: image {path} not found")
    return path


def split_of(value: str, table: dict[str, str], path: Path, line: int) -> str:
    if value.strip() not in table:
        raise row_error(path, line, f"Usage {value!r} is not one of {', '.join(table)}")
    return table[value.strip()]


# ---------------------------------------------------------------- FER2013 pixels as a frame source


def decode_pixels(text: str, path: Path, line: int) -> np.ndarray:
    with warnings.catch_warnings():  # numpy warns, and stops early, on a token that is not a number
        warnings.simplefilter("ignore", DeprecationWarning)
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    if values.size != FER_SIDE * FER_SIDE or values.min() < 0 or values.max() > 255:
        raise row_error(path, line, f"pixels must be {FER_SIDE * FER_SIDE} values 0-255 separated by spaces")
    return values.astype(np.uint8).reshape(FER_SIDE, FER_SIDE)


@functools.lru_cache(maxsize=2)
def _sheet_faces(path: str, stamp: tuple[int, int]) -> np.ndarray:
    """Every face of a sheet, decoded once per process (the stamp makes an edited file decode again)."""
    rows = csv_rows(Path(path), ("pixels",))
    faces = [decode_pixels(cells["pixels"], Path(path), line) for line, cells in rows]
    return np.stack(faces) if faces else np.zeros((0, FER_SIDE, FER_SIDE), np.uint8)


class PixelSheet(FrameSource):
    """The faces of a FER2013 sheet as gray-to-RGB frames numbered by data row (0 = the row after the header)."""

    def __init__(self, path: Path | str, fps: float | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ReadError(f"{self.path}: FER2013 sheet not found")
        status = self.path.stat()
        self.faces = _sheet_faces(str(self.path.resolve()), (status.st_mtime_ns, status.st_size))
        self.numbers = np.arange(len(self.faces), dtype=np.int64)
        self.fps = fps

    def _read_positions(self, positions: np.ndarray) -> np.ndarray:
        return np.repeat(self.faces[positions][..., None], 3, axis=-1)


register_reader(FER_PIXELS_KIND, PixelSheet)


def fer_sample(dataset: str, sheet: Path, row: int, labels: dict, extra: dict) -> Sample:
    return Sample(dataset, "", FER_PIXELS_KIND, sheet, Interval(row, row, row), labels=labels, extra=extra)


# ---------------------------------------------------------------- parsers


@register_dataset("fer2013", task="emotion")
def fer2013(root: Path) -> list[Sample]:
    sheet = find_file(root, FER2013_FILES, "FER2013 sheet")
    samples = []
    for row, (line, cells) in enumerate(csv_rows(sheet, ("emotion", "pixels", "Usage"))):
        code = integer(cells["emotion"], sheet, line, "emotion")
        if not 0 <= code < len(FER2013_TO_SHARED):
            raise row_error(sheet, line, f"emotion code {code} is not a FER2013 code (0-6)")
        if len(cells["pixels"].split()) != FER_SIDE * FER_SIDE:
            raise row_error(sheet, line, f"pixels must hold {FER_SIDE * FER_SIDE} values")
        split = split_of(cells["Usage"], FER2013_USAGE, sheet, line)
        samples.append(fer_sample("fer2013", sheet, row, {"emotion": FER2013_TO_SHARED[code]}, {"split": split}))
    return samples


@register_dataset("ferplus", task="emotion")
def ferplus(root: Path) -> list[Sample]:
    votes_sheet = find_file(root, ("fer2013new.csv",), "FERPlus votes")
    pixel_sheet = find_file(root, FER2013_FILES, "FER2013 sheet (FERPlus labels its rows)")
    usages = [(line, cells["Usage"].strip()) for line, cells in csv_rows(pixel_sheet, ("Usage",))]
    samples, left_out, count = [], Counter(), 0
    for row, (line, cells) in enumerate(csv_rows(votes_sheet, ("Usage", "Image name", *FERPLUS_COLUMNS))):
        count += 1
        check_aligned(votes_sheet, line, cells["Usage"], pixel_sheet, usages, row)
        votes = shared_votes(cells, votes_sheet, line)
        reason = ferplus_rule(cells["Image name"], votes)
        if reason:
            left_out[reason] += 1
            continue
        split = split_of(cells["Usage"], FER2013_USAGE, votes_sheet, line)
        samples.append(fer_sample("ferplus", pixel_sheet, row, {"emotion": int(np.argmax(votes[:8])), "votes": votes},
                                  {"split": split, "image_name": cells["Image name"].strip()}))
    if count != len(usages):
        raise AnnotationError(f"{votes_sheet} has {count} rows but {pixel_sheet} has {len(usages)}; "
                              f"FERPlus labels FER2013 row for row, so both must be complete")
    report_left_out("ferplus", votes_sheet, left_out)
    return samples


def check_aligned(votes_sheet: Path, line: int, usage: str, pixel_sheet: Path, usages: list, row: int) -> None:
    if row >= len(usages):
        raise row_error(votes_sheet, line, f"no row {row + 1} in {pixel_sheet} (it has {len(usages)} rows)")
    pixel_line, pixel_usage = usages[row]
    if usage.strip() != pixel_usage:
        raise row_error(votes_sheet, line, f"Usage {usage.strip()!r} differs from {pixel_usage!r} at {pixel_sheet}, "
                                           f"line {pixel_line}; the two sheets must be aligned row for row")


def shared_votes(cells: dict[str, str], path: Path, line: int) -> np.ndarray:
    """Votes in the shared order, then unknown and NF."""
    raw = [integer(cells[c], path, line, c) for c in FERPLUS_COLUMNS]
    if min(raw) < 0 or sum(raw) == 0:
        raise row_error(path, line, f"votes must be counts >= 0 with at least one vote, got {raw}")
    votes = np.zeros(len(FERPLUS_COLUMNS), dtype=np.int64)
    votes[list(FERPLUS_TO_SHARED)] = raw[:8]
    votes[8:] = raw[8:]
    return votes


def ferplus_rule(image_name: str, votes: np.ndarray) -> str | None:
    """Why FERPlus itself discards a row, or None. A tie between an emotion and unknown/NF keeps the row:
    the emotion columns come first, so the reference's argmax picks the emotion."""
    if not image_name.strip():
        return "empty Image name"
    if votes[8:].max() > votes[:8].max():
        return "argmax unknown" if votes[8] >= votes[9] else "argmax NF"
    return None


@register_dataset("rafdb", task="emotion")
def rafdb(root: Path) -> list[Sample]:
    listing = root / RAFDB_LIST
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: RAF-DB label list not found (expected {RAFDB_LIST} under {root})")
    samples = []
    for line, text in enumerate(listing.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if text.strip():
            samples.append(rafdb_sample(root, listing, line, text))
    return samples


def rafdb_sample(root: Path, listing: Path, line: int, text: str) -> Sample:
    parts = text.split()
    if len(parts) != 2:
        raise row_error(listing, line, f"expected '<image name> <label>', got {text.strip()!r}")
    name, code = parts[0], integer(parts[1], listing, line, "label")
    if code not in RAFDB_TO_SHARED:
        raise row_error(listing, line, f"label {code} is not a RAF-DB basic code (1-7)")
    split = name.split("_")[0]
    if split not in ("train", "test"):
        raise row_error(listing, line, f"image name {name!r} starts with neither train_ nor test_")
    image = existing_image(root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg", listing, line)
    return Sample("rafdb", "", "image", image, labels={"emotion": RAFDB_TO_SHARED[code]}, extra={"split": split})


@register_dataset("affectnet", task="emotion")
def affectnet(root: Path) -> list[Sample]:
    samples = []
    for split, name in AFFECTNET_SHEETS.items():
        samples += affectnet_sheet(root, root / "Manually_Annotated_file_lists" / name, split)
    return samples


def affectnet_sheet(root: Path, sheet: Path, split: str) -> list[Sample]:
    samples, left_out = [], Counter()
    for line, cells in csv_rows(sheet, AFFECTNET_COLUMNS, default_header=AFFECTNET_COLUMNS):
        code = affectnet_code(cells["expression"], sheet, line)
        if code in AFFECTNET_DROPPED:
            left_out[f"expression {code} ({AFFECTNET_DROPPED[code]})"] += 1
            continue
        samples.append(affectnet_sample(root, sheet, line, cells, code, split))
    report_left_out("affectnet", sheet, left_out)
    return samples


def affectnet_code(cell: str, path: Path, line: int) -> int:
    code = integer(cell, path, line, "expression")
    if not 0 <= code <= max(AFFECTNET_DROPPED):
        raise row_error(path, line, f"expression {code} is not an AffectNet code (0-10)")
    return code


def affectnet_sample(root: Path, sheet: Path, line: int, cells: dict[str, str], code: int, split: str) -> Sample:
    box = [number(cells[c], sheet, line, c) for c in ("face_x", "face_y", "face_width", "face_height")]
    if box[2] <= 0 or box[3] <= 0:
        raise row_error(sheet, line, f"face box {box} has no area")
    image = existing_image(root / "Manually_Annotated_Images" / cells["subDirectory_filePath"].strip(), sheet, line)
    labels = {"emotion": code, "valence": number(cells["valence"], sheet, line, "valence"),
              "arousal": number(cells["arousal"], sheet, line, "arousal")}
    return Sample("affectnet", "", "image", image, labels=labels, extra={"split": split, "face_box": box})


@register_dataset("affectnet_npy", task="emotion")
def affectnet_npy(root: Path) -> list[Sample]:
    samples = []
    for split, folder in AFFECTNET_NPY_FOLDERS.items():
        samples += affectnet_npy_folder(root / folder, split)
    return samples


def affectnet_npy_folder(folder: Path, split: str) -> list[Sample]:
    annotations = folder / "annotations"
    files = sorted(annotations.glob("*_exp.npy"), key=lambda p: _natural(p.name)) if annotations.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{annotations}: no <index>_exp.npy files (AffectNet npy release layout expected)")
    samples, left_out = [], Counter()
    for path in files:
        code = npy_code(path)
        if code in AFFECTNET_DROPPED:
            left_out[f"expression {code} ({AFFECTNET_DROPPED[code]})"] += 1
            continue
        image = existing_image(folder / "images" / f"{path.name[: -len('_exp.npy')]}.jpg", path, None)
        samples.append(Sample("affectnet_npy", "", "image", image, labels={"emotion": code}, extra={"split": split}))
    report_left_out("affectnet_npy", annotations, left_out)
    return samples


def npy_code(path: Path) -> int:
    """Copies of the release store the code as an integer or as its text."""
    try:
        value = np.load(path, allow_pickle=False)
        code = int(str(value.item()).strip())
    except (ValueError, OSError, TypeError) as error:
        raise AnnotationError(f"{path}: expression is not an integer code ({error})") from None
    if not 0 <= code <= max(AFFECTNET_DROPPED):
        raise AnnotationError(f"{path}: expression {code} is not an AffectNet code (0-10)")
    return code


def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def real_datasets() -> list[str]:
    return sorted(name.split("/", 1)[1] for name in DATASETS if name.startswith("emotion/"))


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


# ---------------------------------------------------------------- torch datasets and sampling


class EmotionImages(Dataset):
    """(uint8 [3, S, S], label) for chosen samples of a frame source: an int, or a float vector over the classes
    where `soft` targets are given."""

    def __init__(self, frames: AlignedFrames, indices: Sequence[int], labels: Sequence[int], size: int,
                 soft: np.ndarray | None = None):
        self.frames, self.indices, self.size = frames, list(indices), size
        self.labels = [int(v) for v in labels]
        self.soft = None if soft is None else np.asarray(soft, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image = self.frames.read(self.indices[i], [0])[0]
        if image.shape[:2] != (self.size, self.size):  # a cache made at another size
            shrink = image.shape[0] > self.size
            image = cv2.resize(image, (self.size, self.size),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return tensor, self.labels[i] if self.soft is None else torch.from_numpy(self.soft[i])

    def sample(self, i: int) -> Sample:
        return self.frames.samples[self.indices[i]]

    def with_soft(self, num_classes: int) -> "EmotionImages":
        """The same samples with one-hot vectors, to share a batch with soft-labelled data."""
        soft = self.soft if self.soft is not None else np.eye(num_classes, dtype=np.float32)[self.labels]
        return EmotionImages(self.frames, self.indices, self.labels, self.size, soft)


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
        root: the dataset folder as distributed (or a cache folder), one per dataset.
        cache: a cache made by `python -m common.prepare --task emotion --dataset NAME`, one per dataset (null
            entries read that dataset's root); a cache of another size is resized.
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
                 root: str | list[str] | None = None, cache: str | list[str | None] | None = None,
                 ferplus_mode: str = "majority", val_fraction: float = 0.1, balanced_sampler: bool = False,
                 fold: int | None = None, fold_scheme: str = "kfold", num_folds: int = 5, **loader):
        super().__init__(**loader)
        if num_classes not in (7, 8):
            raise ValueError(f"--data.num_classes must be 7 or 8, got {num_classes}")
        if ferplus_mode not in FERPLUS_MODES:
            raise ValueError(f"--data.ferplus_mode must be one of {FERPLUS_MODES}, got {ferplus_mode!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"--data.val_fraction must be in [0, 1), got {val_fraction}")
        self.datasets = dataset_names(dataset)
        self.sources = dataset_sources(self.datasets, root, cache)
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
        return {split: self.images(frames, rows, soft=split == "train") for split, rows in chosen.items()}

    def images(self, frames: AlignedFrames, rows: list[tuple], soft: bool) -> EmotionImages:
        """Soft targets reach training only: metrics want the argmax, so validation and test get hard labels."""
        indices, labels, vectors = ([r[k] for r in rows] for k in range(3))
        use_soft = soft and bool(rows) and vectors[0] is not None
        return EmotionImages(frames, indices, labels, self.image_size, np.stack(vectors) if use_soft else None)

    def train_dataloader(self):
        sampler = self.make_balanced_sampler() if self.balanced_sampler else None
        return self.loader(self.train_set, train=True, sampler=sampler)

    def make_balanced_sampler(self) -> ClassBalancedSampler:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return ClassBalancedSampler(labels_of(self.train_set), replicas, rank, seed=self.seed)

    def val_dataloader(self):
        return self.loader(self.val_set, train=False)

    def test_dataloader(self):
        return self.loader(self.test_set, train=False)

    def predict_dataloader(self):
        return self.loader(self.test_set, train=False)


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
    names = [n.strip() for n in (dataset.split("+") if isinstance(dataset, str) else dataset) if n.strip()]
    known = ["synthetic", *real_datasets()]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise ValueError(f"--data.dataset {dataset!r}: unknown {unknown or 'empty'}; choose from {known}")
    if "synthetic" in names and len(names) > 1:
        raise ValueError("--data.dataset: the synthetic faces cannot be trained jointly with real datasets")
    if len(set(names)) != len(names):
        raise ValueError(f"--data.dataset {dataset!r} names a dataset twice")
    return names


def dataset_sources(names: list[str], root, cache) -> list[Path | None]:
    """Where each dataset is read from: its cache where one is given, else its root."""
    if names == ["synthetic"]:
        return [None]
    roots, caches = per_dataset(root, names, "root"), per_dataset(cache, names, "cache")
    sources = [Path(c) if c else Path(r) if r else None for r, c in zip(roots, caches)]
    missing = [n for n, s in zip(names, sources) if s is None]
    if missing:
        raise ValueError(f"--data.root (or --data.cache) is needed for {missing}")
    return sources


def per_dataset(value, names: list[str], flag: str) -> list:
    if value is None:
        return [None] * len(names)
    values = [value] if isinstance(value, str) else list(value)
    if len(values) != len(names):
        raise ValueError(f"--data.{flag} needs one entry per dataset ({'+'.join(names)}), got {len(values)}")
    return values
