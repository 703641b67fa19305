"""Base LightningModules: optimisation from config, the export hook, and classification bookkeeping."""
from __future__ import annotations

import json
import weakref
from contextlib import nullcontext
from typing import Any, ClassVar, Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from common.augment import AugmentSpec, Normalize, build_augmentation, to_float
from common.contract import Contract
from common.figures import confusion_figure, per_class_figure, publish
from common.metrics import classification_metrics, split_results
from common.mixing import make_mixer, mix_batch
from common.optim import LayerOf, build_optimizer, build_scheduler, is_sam
from common.predictions import PredictionWriter


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
        layer_decay: layer-wise learning-rate decay (1.0: none); layer l of L trains at lr * layer_decay^(L - l)
            (models that define `lr_layer_of`, e.g. VideoMAE).

    Subclasses implement `compute_loss(batch)`; the training step (plain or SAM) is shared.
    """

    task: ClassVar[str] = ""
    contract: ClassVar[Contract]

    def __init__(self, optimizer: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.05,
                 scheduler: str = "cosine", warmup_epochs: float = 0.0, lr_gamma: float = 0.9,
                 min_lr_ratio: float = 0.01, sam_rho: float = 0.05, lr_step_epochs: int = 10,
                 layer_decay: float = 1.0):
        super().__init__()
        if not 0 < layer_decay <= 1:
            raise ValueError(f"--model.layer_decay must be in (0, 1], got {layer_decay}")
        self.optim_config = dict(optimizer=optimizer, lr=lr, weight_decay=weight_decay, scheduler=scheduler,
                                 warmup_epochs=warmup_epochs, lr_gamma=lr_gamma, min_lr_ratio=min_lr_ratio,
                                 sam_rho=sam_rho, lr_step_epochs=lr_step_epochs, layer_decay=layer_decay)
        self.run_config: str | None = None
        # SAM runs its two passes itself; everything else keeps Lightning's loop
        self.automatic_optimization = not is_sam(optimizer)
        self._clipping: tuple[weakref.ref, float, str | None] | None = None
        self._initial_weights_done = False

    @property
    def arch_name(self) -> str:
        return type(self).__name__

    @property
    def lr_layer_of(self) -> LayerOf | None:
        """Parameter name -> (its layer, the deepest layer), for layer-wise lr decay; None: no layers."""
        return None

    def configure_optimizers(self):
        cfg = self.optim_config
        optimizer = build_optimizer(self, cfg["optimizer"], cfg["lr"], cfg["weight_decay"], cfg["sam_rho"],
                                    cfg["layer_decay"], self.lr_layer_of)
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
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size_of(batch))
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

    # --- pretrained weights: read when a run starts from scratch, never when a checkpoint is restored ---
    def load_initial_weights(self) -> None:
        """Read the local pretrained files this module was configured with (none by default)."""

    def _initial_weights(self) -> None:
        # By on_fit_start (and the evaluation hooks) Lightning has restored any checkpoint and knows its path;
        # loading copies into the existing parameters, so optimisers and DDP replicas stay valid.
        if not self._initial_weights_done:
            self._initial_weights_done = True
            if self.trainer.ckpt_path is None:
                self.load_initial_weights()

    def on_validation_start(self) -> None:
        self._initial_weights()

    def on_test_start(self) -> None:
        self._initial_weights()

    def on_predict_start(self) -> None:
        self._initial_weights()

    def on_fit_start(self) -> None:
        self._initial_weights()
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
        self._initial_weights_done = True

    # --- export hook: common/export.py knows no task by name, only these three methods ---
    def export_wrapper(self, activation: bool = True) -> nn.Module:
        """The graph to export: float RGB in [0, 1] in, the contract's outputs out; with `activation=False` the
        same graph stops before each output's activation (export compares those values, which do not saturate)."""
        raise NotImplementedError

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        """Real samples for export parity checks, already in the exported graph's input format."""
        raise NotImplementedError

    def export_metadata(self) -> dict[str, str]:
        """Metadata beside the contract's own keys; `training_config` is scrubbed of local paths by export."""
        return {"training_config": self.run_config or json.dumps(_jsonable(dict(self.hparams)), sort_keys=True)}


class ClassificationModule(TaskModule):
    """Single-label classification of images or clips: the whole step lives here.

    On the device: uint8 -> float, augmentation, Mixup/CutMix (once per batch, so SAM's two passes see the same
    samples); then loss (hard or soft targets, label smoothing, class weights), metrics and figures per stage, and
    a predictions file for `test` and `predict`. A subclass builds `self.net` and names its arguments; it may add
    `extra_loss` (DAN's auxiliary terms), `example_inputs` and its own metadata.

    Batches are dicts: `input` (uint8 [B, C, H, W] or [B, T, C, H, W]), `target` (class index, or a probability
    vector for soft labels, -1 where unknown), and the identity of each sample: `dataset`, `subject`, `sample`.

    Args:
        class_names: output classes, in order (linked from the data module).
        image_size: input side (linked from the data module).
        augment: device-side augmentation (common/augment.py): `true` for the default, `false` for none, or a
            mapping from operation to its kornia arguments, e.g. `{hflip: {}, erasing: {scale: [0.02, 0.1]}}`.
        mixup_alpha, cutmix_alpha, mix_prob: timm Mixup/CutMix (0 disables).
        label_smoothing: for hard targets (Mixup/CutMix targets carry their own).
        class_weights: one loss weight per class.
        preprocessing: how inputs were cropped (linked from the data module; exported as model metadata).
        class_groups: one head per dataset of a joint set, `{dataset: [start, end]}` slices of the classes
            (linked from the data module): each sample's softmax, loss, metrics and predictions stay within its
            dataset's slice. None: one shared label space.
    """

    def __init__(self, class_names: Sequence[str], image_size: int = 224, augment: AugmentSpec = True,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, mix_prob: float = 1.0,
                 label_smoothing: float = 0.0, class_weights: list[float] | None = None,
                 preprocessing: dict[str, Any] | None = None, class_groups: dict[str, list[int]] | None = None,
                 **optim):
        super().__init__(**optim)
        self.class_names = list(class_names)
        self.image_size = image_size
        self.label_smoothing = label_smoothing
        self.preprocessing = dict(preprocessing or {})
        if class_weights is not None and len(class_weights) != len(self.class_names):
            raise ValueError(f"class_weights has {len(class_weights)} values for {len(self.class_names)} classes")
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.normalize = Normalize()
        self.augmenter = build_augmentation(image_size, augment)
        self.mixer = make_mixer(mixup_alpha, cutmix_alpha, mix_prob, label_smoothing, self.num_classes)
        self.class_groups = {name: tuple(span) for name, span in (class_groups or {}).items()}
        if self.class_groups and self.mixer is not None:
            raise ValueError("Mixup/CutMix would mix samples of datasets with heads of their own: with one head per "
                             "dataset set --model.mixup_alpha 0 --model.cutmix_alpha 0")
        self.metrics = nn.ModuleDict({stage: classification_metrics(self.num_classes) for stage in ("val", "test")})
        self.predictions = PredictionWriter(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # --- the network ---
    def network(self, x: torch.Tensor):
        """Normalised input -> logits, or a dict holding `logits` (and whatever `extra_loss` needs)."""
        return self.net(x)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the network reads: normalised pixels (a network on precomputed features overrides this)."""
        return self.normalize(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float RGB in [0, 1] (NCHW images or NTCHW clips) -> logits."""
        return logits_of(self.network(self.prepare_input(x)))

    def extra_loss(self, output, target: torch.Tensor) -> torch.Tensor | float:
        """Auxiliary training terms of an architecture (none by default)."""
        return 0.0

    # --- the step ---
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """uint8 arrives on the device; scaling, augmentation and mixing happen there, not in loader workers."""
        batch = dict(batch)
        x = to_float(batch["input"])
        if self.training and self.augmenter is not None:
            x = self.augmenter(x)
        if self.training and self.mixer is not None:
            x, batch["target"] = mix_batch(self.mixer, x, batch["target"])
        batch["input"] = x
        return batch

    def within_groups(self, logits: torch.Tensor, datasets: Sequence[str] | None) -> torch.Tensor:
        """With one head per dataset, each sample's logits outside its dataset's slice become -inf."""
        if not self.class_groups or datasets is None:
            return logits
        keep = torch.zeros_like(logits, dtype=torch.bool)
        for i, name in enumerate(datasets):
            start, end = self.class_groups[name]
            keep[i, start:end] = True
        return logits.masked_fill(~keep, float("-inf"))

    def classification_loss(self, logits: torch.Tensor, target: torch.Tensor,
                            datasets: Sequence[str] | None = None) -> torch.Tensor:
        """Hard labels get label smoothing; soft (Mixup/CutMix, vote) targets already carry it. With one head
        per dataset, each dataset's samples are scored within its own slice of the classes."""
        if self.class_groups and datasets is not None:
            return self.grouped_loss(logits, target, datasets)
        if target.ndim == 2:
            log_probs = F.log_softmax(logits.float(), dim=-1)
            weights = self.class_weights if self.class_weights is not None else 1.0
            return -(target * weights * log_probs).sum(-1).mean()
        return F.cross_entropy(logits.float(), target, weight=self.class_weights, label_smoothing=self.label_smoothing)

    def grouped_loss(self, logits: torch.Tensor, target: torch.Tensor, datasets: Sequence[str]) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for name, (start, end) in self.class_groups.items():
            rows = [i for i, d in enumerate(datasets) if d == name]
            if rows:
                weight = None if self.class_weights is None else self.class_weights[start:end]
                total = total + len(rows) * F.cross_entropy(logits[rows, start:end].float(), target[rows] - start,
                                                            weight=weight, label_smoothing=self.label_smoothing)
        return total / len(datasets)

    def compute_loss(self, batch: dict) -> torch.Tensor:
        output = self.network(self.prepare_input(batch["input"]))
        loss = self.classification_loss(logits_of(output), batch["target"], batch.get("dataset"))
        return loss + self.extra_loss(output, batch["target"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        probs = self.within_groups(self(batch["input"]).float(), batch.get("dataset")).softmax(-1)
        self.predictions.add(batch, probs)
        return probs

    def _evaluate(self, stage: str, batch: dict) -> None:
        logits = self.within_groups(self(batch["input"]), batch.get("dataset"))
        target = batch["target"]
        loss = self.classification_loss(logits, target, batch.get("dataset"))
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=len(logits))
        self.metrics[stage].update(logits.float(), target)
        if stage == "test":
            self.predictions.add(batch, logits.float().softmax(-1))

    def on_validation_epoch_end(self) -> None:
        self._finish_stage("val")

    def on_test_epoch_end(self) -> None:
        self._finish_stage("test")
        self.predictions.write(self.trainer)

    def on_predict_epoch_end(self) -> None:
        self.predictions.write(self.trainer)

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
            publish(figures, self.trainer, out_dir)

    # --- export ---
    def export_wrapper(self, activation: bool = True) -> nn.Module:
        head = nn.Softmax(dim=-1) if activation else nn.Identity()
        return nn.Sequential(self.normalize, LogitsOf(self.net), head).eval()

    def export_metadata(self) -> dict[str, str]:
        size = [self.image_size, self.image_size]
        groups = {"class_groups": json.dumps({k: list(v) for k, v in self.class_groups.items()})} if self.class_groups else {}
        activation = ("softmax over all classes: take a dataset's slice (class_groups) and renormalise it"
                      if self.class_groups else "softmax: the outputs are class probabilities")
        return {**super().export_metadata(), "classes": json.dumps(self.class_names), "input_size": json.dumps(size),
                "output_activation": activation, **groups, **preprocessing_metadata(self.preprocessing)}


def logits_of(output) -> torch.Tensor:
    """Some architectures return a dict in training mode (DAN: logits plus what its extra losses need)."""
    return output["logits"] if isinstance(output, Mapping) else output


class LogitsOf(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.net(x))


PREPROCESSING_KEYS = ("face_detector", "landmark_scheme", "align_template", "align_margin", "resize_interpolation")


def preprocessing_metadata(preprocessing: Mapping[str, Any]) -> dict[str, str]:
    """The crop recipe as metadata strings; JSON for anything that is not already text."""
    values = {key: preprocessing.get(key, "") for key in PREPROCESSING_KEYS}
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}

def batch_size_of(batch) -> int | None:
    return len(batch["input"]) if isinstance(batch, Mapping) and "input" in batch else None


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
