"""Figures logged at validation end: to every logger that takes images, and as PNGs in the run directory."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_figure(confmat: np.ndarray, class_names: Sequence[str], title: str):
    normalised = confmat / np.clip(confmat.sum(axis=1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(class_names), 1 + 0.6 * len(class_names)))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(confmat):
        ax.text(col, row, f"{int(count)}", ha="center", va="center", fontsize=8,
                color="white" if normalised[row, col] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def per_class_figure(values: np.ndarray, class_names: Sequence[str], title: str):
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(class_names), 3))
    ax.bar(range(len(class_names)), values, color="tab:blue")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def publish(figures: dict[str, "plt.Figure"], trainer, out_dir: str | None) -> None:
    """Send each figure to the trainer's loggers that accept images (W&B) and save it under `<run>/figures/`, at the
    step its metrics carry in metrics.csv."""
    loggers, step = trainer.loggers, logged_step(trainer)
    for key, fig in figures.items():
        for logger in loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=key, images=[_to_array(fig)], step=step)
        if out_dir is not None:
            path = Path(out_dir) / "figures" / f"{key.replace('/', '_')}_step{step:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=100)
        plt.close(fig)


def logged_step(trainer) -> int:
    """The step Lightning writes beside epoch-end metrics (its count of optimiser steps, one less than
    `global_step` in a validation that ends an epoch)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def _to_array(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
