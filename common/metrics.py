"""Classification metrics (torchmetrics), one collection per stage, with the figures a researcher looks at."""
from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import ConfusionMatrix, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall


def classification_metrics(num_classes: int) -> MetricCollection:
    """acc = overall accuracy, f1 = macro F1 (UF1), uar = macro recall, plus per-class F1 and the confusion matrix."""
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1": MulticlassF1Score(num_classes, average="macro"),
        "uar": MulticlassRecall(num_classes, average="macro"),
        "f1_per_class": MulticlassF1Score(num_classes, average=None),
        "confmat": ConfusionMatrix(task="multiclass", num_classes=num_classes),
    })


def split_results(results: dict[str, torch.Tensor], class_names: Sequence[str]) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Scalars to log, and the per-class F1 and confusion matrix kept apart for figures."""
    per_class = results.pop("f1_per_class")
    confmat = results.pop("confmat")
    scalars = dict(results)
    scalars.update({f"f1_{name}": value for name, value in zip(class_names, per_class)})
    return scalars, per_class, confmat
