"""Base LightningModules: optimisation from config, the export hook, and classification bookkeeping."""
from __future__ import annotations

import csv
import json
import weakref
from contextlib import nullcontext
from pathlib import Path
from typing import ClassVar, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from common.contract import CONTRACTS, Contract
from common.figures import confusion_figure, per_class_figure, publish
from common.metrics import classification_metrics, split_results
from common.optim import build_optimizer, build_scheduler, is_sam

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Float RGB in [0, 1] -> the network's normalised input; lives inside exported graphs too.

    Works on any [..., C, H, W] layout (images NCHW, clips NTCHW).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class TaskModule(L.LightningModule):
    """What every task shares: optimiser/schedule from plain arguments, the task id in checkpoints, the export hook.

    Args:
        optimizer: adamw | adam | sgd, or sam_adamw | sam_adam | sam_sgd: sharpness-aware minimisation around
            that optimiser (two forward/backward passes per step, see `sam_training_step`).
        lr: peak learning rate.
        weight_decay: weight decay (not applied to norms and biases); decoupled for adamw, L2 for adam and sgd.
        scheduler: cosine | exponential | step | none (stepped every batch).
        warmup_epochs: linear warm-up length, in epochs (fractions allowed).
        lr_gamma: decay factor of the exponential (every epoch) and step (every `lr_step_epochs`) schedules.
        min_lr_ratio: final learning rate of the cosine schedule, relative to `lr`.
        sam_rho: SAM's neighbourhood radius.
        lr_step_epochs: epochs between decays of the step schedule.

    Subclasses implement `compute_loss(batch)`; the training step (plain or SAM) is shared.
    """

    task: ClassVar[str] = ""

    def __init__(self, optimizer: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.05,
                 scheduler: str = "cosine", warmup_epochs: float = 0.0, lr_gamma: float = 0.9,
                 min_lr_ratio: float = 0.01, sam_rho: float = 0.05, lr_step_epochs: int = 10):
        super().__init__()
        self.optim_config = dict(optimizer=optimizer, lr=lr, weight_decay=weight_decay, scheduler=scheduler,
                                 warmup_epochs=warmup_epochs, lr_gamma=lr_gamma, min_lr_ratio=min_lr_ratio,
                                 sam_rho=sam_rho, lr_step_epochs=lr_step_epochs)
        self.run_config: str | None = None
        # SAM runs its two passes itself; everything else keeps Lightning's loop
        self.automatic_optimization = not is_sam(optimizer)
        self._clipping: tuple[weakref.ref, float, str | None] | None = None

    @property
    def contract(self) -> Contract:
        return CONTRACTS[self.task]

    @property
    def arch_name(self) -> str:
        return type(self).__name__

    def configure_optimizers(self):
        cfg = self.optim_config
        optimizer = build_optimizer(self, cfg["optimizer"], cfg["lr"], cfg["weight_decay"], cfg["sam_rho"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = build_scheduler(optimizer, cfg["scheduler"], total, per_epoch, cfg["warmup_epochs"],
                                    cfg["lr_gamma"], cfg["min_lr_ratio"], cfg["lr_step_epochs"])
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    # --- training step: one loss function, run once (plain) or twice (SAM) per step ---
    def compute_loss(self, batch) -> torch.Tensor:
        """The training loss of a batch. Must not log or draw new randomness for the batch (augmentation, mixing):
        SAM evaluates it twice on the same batch and both passes must see the same samples."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int):
        loss = self.compute_loss(batch) if self.automatic_optimization else self.sam_training_step(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def sam_training_step(self, batch) -> torch.Tensor:
        """Gradient at w, climb to w + e, gradient there, update w; returns the loss at w.

        Under DDP the first backward does not all-reduce: each rank climbs along its own gradient, as in the SAM
        paper's m-sharpness (m = per-device batch). Only the second gradient is synchronised, and every rank steps
        from the same w with it, so the replicas stay identical.
        """
        optimizer = self.optimizers()
        optimizer.zero_grad()
        with self._local_backward():
            loss = self.compute_loss(batch)
            self.manual_backward(loss)

        def perturbed_pass() -> torch.Tensor:
            perturbed = self.compute_loss(batch)
            self.manual_backward(perturbed)
            self._clip_gradients_manually(optimizer)
            return perturbed

        optimizer.step(closure=perturbed_pass)  # SAM.step: climb, run the closure, return and update
        optimizer.zero_grad()
        scheduler = self.lr_schedulers()
        if scheduler is not None:  # every schedule from build_scheduler is per step
            scheduler.step()
        return loss.detach()

    def _local_backward(self):
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        return block() if block is not None else nullcontext()

    def configure_callbacks(self):
        # Lightning rejects Trainer(gradient_clip_val) under manual optimisation, before any other hook runs; SAM
        # takes the setting over here and clips the perturbed gradient itself.
        if not self.automatic_optimization:
            self._take_over_gradient_clipping()
        return []

    def _take_over_gradient_clipping(self) -> None:
        trainer = self.trainer
        if trainer.gradient_clip_val:
            self._clipping = (weakref.ref(trainer), float(trainer.gradient_clip_val), trainer.gradient_clip_algorithm)
            trainer.gradient_clip_val = None
        elif self._clipping is not None and self._clipping[0]() is not trainer:
            self._clipping = None

    def _clip_gradients_manually(self, optimizer) -> None:
        if self._clipping is not None:
            _, value, algorithm = self._clipping
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)

    def on_fit_start(self) -> None:
        if not self.automatic_optimization and getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError("SAM optimisers need bf16-mixed or 32-true precision: fp16 loss scaling (GradScaler) "
                             "steps the optimiser without the closure SAM's second pass runs in")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["task"] = self.task
        checkpoint["module_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.run_config = checkpoint.get("run_config")

    # --- export hook: common/export.py knows no task by name, only these three methods ---
    def export_wrapper(self) -> nn.Module:
        """The graph to export: float RGB in [0, 1] in, the contract's outputs (activations included) out."""
        raise NotImplementedError

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        """Real samples for export parity checks, already in the exported graph's input format."""
        raise NotImplementedError

    def export_metadata(self) -> dict[str, str]:
        return {"training_config": self.run_config or json.dumps(_jsonable(dict(self.hparams)), sort_keys=True)}


class ClassificationModule(TaskModule):
    """Single-label classification: soft-target cross-entropy, metrics per stage, figures, prediction CSVs."""

    def __init__(self, class_names: Sequence[str], label_smoothing: float = 0.0,
                 class_weights: list[float] | None = None, **optim):
        super().__init__(**optim)
        self.class_names = list(class_names)
        self.label_smoothing = label_smoothing
        if class_weights is not None and len(class_weights) != len(self.class_names):
            raise ValueError(f"class_weights has {len(class_weights)} values for {len(self.class_names)} classes")
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.metrics = nn.ModuleDict({stage: classification_metrics(len(self.class_names)) for stage in ("val", "test")})
        self._test_rows: list[tuple] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def classification_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Hard labels get label smoothing; soft (Mixup/CutMix) targets already carry it."""
        if target.ndim == 2:
            log_probs = F.log_softmax(logits.float(), dim=-1)
            weights = self.class_weights if self.class_weights is not None else 1.0
            return -(target * weights * log_probs).sum(-1).mean()
        return F.cross_entropy(logits.float(), target, weight=self.class_weights, label_smoothing=self.label_smoothing)

    def update_metrics(self, stage: str, logits: torch.Tensor, target: torch.Tensor, ids: Sequence | None = None) -> None:
        self.metrics[stage].update(logits.float(), target)
        if stage == "test":
            probs = logits.float().softmax(-1).cpu()
            start = len(self._test_rows)  # position in this rank's test stream when the data has no sample ids
            names = ids if ids is not None else range(start, start + len(target))
            self._test_rows.extend(zip(names, target.cpu().tolist(), probs.argmax(-1).tolist(), probs.tolist()))

    def on_validation_epoch_end(self) -> None:
        self._finish_stage("val")

    def on_test_epoch_end(self) -> None:
        self._finish_stage("test")
        self._write_predictions()

    def _finish_stage(self, stage: str) -> None:
        scalars, per_class, confmat = split_results(self.metrics[stage].compute(), self.class_names)
        self.log_dict({f"{stage}/{k}": v for k, v in scalars.items()}, sync_dist=True)
        self.metrics[stage].reset()
        out_dir = self.trainer.log_dir  # a collective under DDP: every rank must ask
        if self.trainer.is_global_zero and not self.trainer.sanity_checking and self.trainer.loggers:
            figures = {
                f"{stage}/confusion_matrix": confusion_figure(confmat.cpu().numpy(), self.class_names, f"{stage} confusion"),
                f"{stage}/per_class_f1": per_class_figure(per_class.cpu().numpy(), self.class_names, f"{stage} F1 per class"),
            }
            publish(figures, self.trainer.loggers, out_dir, self.global_step)

    def _write_predictions(self) -> None:
        """Per-sample test predictions, so folds and datasets can be pooled and re-scored later."""
        out_dir = self.trainer.log_dir
        if not self._test_rows or out_dir is None:
            return
        path = Path(out_dir) / f"predictions_rank{self.global_rank}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sample", "target", "pred", *[f"p_{c}" for c in self.class_names]])
            for sample, target, pred, probs in self._test_rows:
                writer.writerow([sample, target, pred, *[f"{p:.6f}" for p in probs]])
        self._test_rows.clear()


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
