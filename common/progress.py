"""Progress as plain periodic lines, for logs, CI and `nohup` where a live progress bar cannot draw."""
from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar


class LineProgress(ProgressBar):
    """One line every `every_seconds` of training and at each epoch's end, with the rate and the latest metrics."""

    def __init__(self, every_seconds: float = 30.0):
        super().__init__()
        self.every_seconds = every_seconds
        self._enabled = True
        self._last = self._start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _say(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, file=sys.stdout, flush=True)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_seconds:
            self._last = now
            rate = (batch_idx + 1) / max(now - self._start, 1e-9)
            self._say(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: batch {batch_idx + 1}/"
                      f"{self.total_train_batches} ({rate:.2f} batches/s) {self._metrics(trainer, pl_module)}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.monotonic() - self._start
        self._say(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} done in {seconds:.0f} s "
                  f"{self._metrics(trainer, pl_module)}")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn != "fit":
            self._say(f"validation: {self._metrics(trainer, pl_module)}")

    def on_test_end(self, trainer, pl_module) -> None:
        self._say(f"test: {self._metrics(trainer, pl_module)}")

    def _metrics(self, trainer, pl_module) -> str:
        shown = {k.removesuffix("_step"): v for k, v in self.get_metrics(trainer, pl_module).items()
                 if k != "v_num" and not k.endswith("_epoch")}
        for key, value in trainer.callback_metrics.items():  # the stage summaries (val/acc, val/f1, ...)
            if key.count("/") == 1 and "_" not in key.split("/")[1] and value.numel() == 1:
                shown[key] = float(value)
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
