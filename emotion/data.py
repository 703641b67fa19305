"""Emotion data: the built-in synthetic faces (default) and, later, the real datasets' parsers."""
from __future__ import annotations

from common.datamodule import TaskDataModule, subject_ranges

EMOTION_CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")


class EmotionDataModule(TaskDataModule):
    """Face images as uint8 [3, S, S] with labels in the shared order (neutral, happy, ..., contempt).

    Args:
        dataset: `synthetic` (the built-in generator).
        num_classes: 7 (no contempt) or 8.
        image_size: side of the square crops fed to the model.
        subjects: synthetic identities for train, validation and test; the three sets are disjoint.
        per_subject: synthetic images per identity.
    """

    def __init__(self, dataset: str = "synthetic", num_classes: int = 7, image_size: int = 224,
                 subjects: tuple[int, int, int] = (24, 6, 6), per_subject: int = 42, **loader):
        super().__init__(**loader)
        if num_classes not in (7, 8):
            raise ValueError(f"--data.num_classes must be 7 or 8, got {num_classes}")
        if dataset != "synthetic":
            raise ValueError(f"--data.dataset {dataset!r} is not available; choose from ['synthetic']")
        self.dataset_name = dataset
        self.num_classes = num_classes
        self.image_size = image_size
        self.subjects = tuple(subjects)
        self.per_subject = per_subject

    @property
    def class_names(self) -> list[str]:
        return list(EMOTION_CLASSES[: self.num_classes])

    def setup(self, stage: str | None = None) -> None:
        from common.synth.datasets import SyntheticEmotionDataset

        train, val, test = subject_ranges(self.subjects)
        make = lambda ids, offset: SyntheticEmotionDataset(ids, self.per_subject, self.num_classes, self.image_size,
                                                           seed=self.seed + offset)
        self.train_set, self.val_set, self.test_set = make(train, 0), make(val, 1), make(test, 2)

    def train_dataloader(self):
        return self.loader(self.train_set, train=True)

    def val_dataloader(self):
        return self.loader(self.val_set, train=False)

    def test_dataloader(self):
        return self.loader(self.test_set, train=False)

    def predict_dataloader(self):
        return self.loader(self.test_set, train=False)
