"""Torch datasets over the synthetic face, rendered on the fly.

Item i is a pure function of (seed, i): no global RNG, so any worker or process returns the same
sample. Subjects are given explicitly, so train and validation sets can use disjoint identities. Items are the
batch dicts every task module reads: `input` (uint8, channels first), `target`, and the sample's identity
(`dataset` "synthetic", `subject`, `sample`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .face import AUS, rng_for
from .samples import EMOTIONS, au_activations, au_sample, emotion_sample


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CHW uint8 (contiguous, so collation does not copy twice)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class _SubjectGrid(Dataset):
    """Shared bookkeeping: `per_subject` items for each subject, item i belongs to subjects[i // per_subject]."""

    def __init__(self, subjects: Sequence[int], per_subject: int, size: int, seed: int):
        self.subjects = [int(s) for s in subjects]
        if not self.subjects:
            raise ValueError("subjects must not be empty")
        if any(s < 0 for s in self.subjects):
            raise ValueError(f"subject ids must be >= 0, got {self.subjects}")
        if per_subject < 1:
            raise ValueError(f"per_subject must be >= 1, got {per_subject}")
        self.per_subject = int(per_subject)
        self.size = int(size)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.subjects) * self.per_subject

    def _check_index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for dataset of size {n}")
        return i

    def subject_of(self, i: int) -> int:
        return self.subjects[self._check_index(i) // self.per_subject]

    def _sample_seed(self, i: int, tag: int) -> int:
        return int(rng_for(tag, self.seed, i).integers(2 ** 62))

    def item(self, i: int, image: np.ndarray, target) -> dict:
        subject = self.subject_of(i)
        return {"input": _image_tensor(image), "target": target, "dataset": "synthetic", "subject": str(subject),
                "sample": f"{subject}/{i % self.per_subject}@{self.seed}"}


class SyntheticEmotionDataset(_SubjectGrid):
    """Faces (uint8 [3, H, W]) with labels in the shared EMOTIONS order.

    num_classes=7 uses the first seven emotions (no contempt), 8 uses all. Labels cycle through the
    classes with the item index, so every class has the same count (up to one when the length is not a
    multiple of num_classes), within each subject as well as overall.
    """

    def __init__(self, subjects: Sequence[int], per_subject: int, num_classes: int = 7, size: int = 224,
                 seed: int = 0):
        super().__init__(subjects, per_subject, size, seed)
        if num_classes not in (7, 8):
            raise ValueError(f"num_classes must be 7 or 8, got {num_classes}")
        self.num_classes = int(num_classes)
        self.classes = EMOTIONS[:num_classes]

    @property
    def labels(self) -> list[int]:
        return [self._label(i) for i in range(len(self))]

    def _label(self, i: int) -> int:
        return i % self.num_classes

    def __getitem__(self, i: int) -> dict:
        i = self._check_index(i)
        label = self._label(i)
        image, _ = emotion_sample(self.subject_of(i), label, self._sample_seed(i, 0xD1), self.size)
        return self.item(i, image, label)


class SyntheticAUDataset(_SubjectGrid):
    """Faces (uint8 [3, H, W]) with float32 [len(AUS)] activations in AUS order as target (0..1; *5 = FACS
    intensity)."""

    def __init__(self, subjects: Sequence[int], per_subject: int, size: int = 256, seed: int = 0):
        super().__init__(subjects, per_subject, size, seed)
        self.aus = AUS

    def activations(self, i: int) -> np.ndarray:
        """Item i's target without rendering its face."""
        i = self._check_index(i)
        labels = au_activations(self.subject_of(i), self._sample_seed(i, 0xD2))
        return np.array([labels[au] for au in AUS], dtype=np.float32)

    def __getitem__(self, i: int) -> dict:
        i = self._check_index(i)
        image, labels = au_sample(self.subject_of(i), self._sample_seed(i, 0xD2), self.size)
        return self.item(i, image, torch.tensor([labels[au] for au in AUS], dtype=torch.float32))
