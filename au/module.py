"""The action-unit LightningModule: ME-GraphAU with masked multi-label losses, per-AU F1 and intensity metrics,
OpenFace-style prediction files and an export with both heads."""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from au.contract import CONTRACT, gate_intensity, openface_columns
from au.evaluate import f1_counts, f1_scores, icc_3_1, mean_defined
from au.model import MEGraphAU
from common.augment import Normalize, build_augmentation, to_float
from common.figures import per_class_figure, publish
from common.module import TaskModule, preprocessing_metadata
from common.predictions import ID_COLUMNS, write_joined

# ME-GraphAU's training transform: a 224 crop of the 256 face at a random place, a flip, colour jitter 0.4
AU_AUGMENTATION = {"crop": {"size": 224}, "hflip": {},
                   "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0, "p": 1.0}}
IGNORE = -100


def weighted_asymmetric_loss(prob: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                             weight: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """ME-GraphAU's WAL on probabilities: -(y log p + (1 - y) p log(1 - p)), the negative term scaled by p (not
    differentiated through), per-AU weights; averaged over the annotated entries only."""
    prob = prob.float()
    positive = target * torch.log(prob.clamp(min=eps))
    negative = (1 - target) * torch.log((1 - prob).clamp(min=eps)) * prob.detach()
    loss = -(positive + negative)
    if weight is not None:
        loss = loss * weight.view(1, -1)
    mask = mask.float()
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def relation_targets(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Edge i*N + j: the 4 co-occurrence states 2 y_i + y_j, ignored where either AU is not annotated."""
    states = 2 * target[:, :, None] + target[:, None, :]
    known = mask[:, :, None] & mask[:, None, :]
    return torch.where(known, states.long(), torch.full_like(states, IGNORE, dtype=torch.long)).flatten(1)


class AUModule(TaskModule):
    """Action-unit occurrence and intensity.

    Args:
        class_names: AU names in output order (linked from the data module: AU01, AU02, ...).
        image_size: side of the faces (256); the network sees a `crop_size` crop (random in training, central
            otherwise; the exported graph crops too).
        backbone: a timm model name (resnet50, swin_base_patch4_window7_224, convnext_base, a ViT).
        stage: 1 (ANFL) or 2 (MEFL, the full model). neighbours: K of stage 1's graph (4 BP4D, 3 DISFA).
        metric: stage 1's node similarity (dots, cosine, l1).
        pretrained: local backbone weights (timm key layout, e.g. ImageNet ResNet-50 or an MAE-style ViT).
        init_from: a whole ME-GraphAU checkpoint to start from: a stage-1 run for stage 2 (backbone, AU feature
            generators, read-out), or an official release of the same stage (loaded key for key).
        edge_weight: weight of the edge loss (stage 2; the official BP4D 0.05, DISFA 0.01).
        intensity_weight: weight of the masked intensity regression (L1 on 0-5, divided by 5).
        threshold: occurrence threshold on the probability.
        allow_pickle: read an `init_from` file that pickles more than tensors and the known training namespaces
            (trusted files only; this project's own checkpoints need no such permission).
        augment: device-side augmentation (default: a 224 crop, a flip, colour jitter 0.4).

    Intensity and occurrence: `forward`, `predict`, the export's `au_intensity` and the `AU01_r` column all give
    0 wherever the AU's probability is below the threshold, so a consumer never shows an intensity for an absent
    AU; the loss and the intensity metrics (ICC, MAE) use the ungated estimate (`au_intensity_raw`, `AU01_r_raw`).
    """

    task = "au"
    contract = CONTRACT

    def __init__(self, class_names: Sequence[str], image_size: int = 256, crop_size: int = 224,
                 backbone: str = "resnet50", stage: int = 2, neighbours: int = 4, metric: str = "dots",
                 pretrained: str | None = None, init_from: str | None = None, edge_weight: float = 0.05,
                 intensity_weight: float = 1.0, threshold: float = 0.5, augment=AU_AUGMENTATION,
                 preprocessing: dict | None = None, allow_pickle: bool = False, **optim):
        super().__init__(**optim)
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.image_size, self.crop_size, self.threshold = image_size, min(crop_size, image_size), threshold
        self.edge_weight, self.intensity_weight = edge_weight, intensity_weight
        self.preprocessing = dict(preprocessing or {})
        self.net = MEGraphAU(len(self.class_names), backbone, stage, neighbours, metric)
        self.normalize = Normalize()
        self.augmenter = build_augmentation(self.crop_size, augment)
        self.register_buffer("au_weights", torch.ones(len(self.class_names)))
        self._stats: dict[str, dict[str, list]] = {}
        self._rows: list[dict] = []

    @property
    def arch_name(self) -> str:
        return f"megraphau-{self.hparams.backbone}-stage{self.net.stage}"

    # --- weights and loss weights ---
    def load_initial_weights(self) -> None:
        from au.weights import load_backbone, load_graph_checkpoint

        if self.hparams.pretrained:
            load_backbone(self.net, self.hparams.pretrained)
        if self.hparams.init_from:
            load_graph_checkpoint(self.net, self.hparams.init_from, self.hparams.allow_pickle)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        rates = getattr(self.trainer.datamodule, "positive_rates", None)
        if rates is not None:
            self.au_weights.copy_(au_loss_weights(rates()))

    # --- the network ---
    def central_crop(self, x: torch.Tensor) -> torch.Tensor:
        offset = (x.shape[-1] - self.crop_size) // 2
        return x[..., offset:offset + self.crop_size, offset:offset + self.crop_size] if offset > 0 else x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float RGB in [0, 1], NCHW (256: cropped to 224 in the middle) -> a dict of [N, K] tensors: `au_prob`
        (probabilities), `au_intensity` (0-5, gated: 0 where au_prob < threshold, as exported) and
        `au_intensity_raw` (the ungated estimate); stage 2 adds `edge_logits` [N, K*K, 4]."""
        out = dict(self.net(self.normalize(self.central_crop(x))))
        out["au_intensity_raw"] = out["au_intensity"]
        out["au_intensity"] = gate_intensity(out["au_prob"], out["au_intensity_raw"], self.threshold)
        return out

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        batch = dict(batch)
        x = to_float(batch["input"])
        batch["input"] = self.augmenter(x) if self.training and self.augmenter is not None else x
        return batch

    def compute_loss(self, batch: dict) -> torch.Tensor:
        out = self(batch["input"])
        mask = batch["mask"].bool()
        loss = weighted_asymmetric_loss(out["au_prob"], batch["target"], mask, self.au_weights)
        if "edge_logits" in out and self.edge_weight:
            relations = relation_targets(batch["target"], mask)
            if (relations != IGNORE).any():
                loss = loss + self.edge_weight * F.cross_entropy(out["edge_logits"].flatten(0, 1).float(),
                                                                 relations.flatten(), ignore_index=IGNORE)
        if self.intensity_weight:
            int_mask = batch["intensity_mask"].float()
            error = (out["au_intensity_raw"].float() - batch["intensity"]).abs() / 5
            loss = loss + self.intensity_weight * (error * int_mask).sum() / int_mask.sum().clamp(min=1)
        return loss

    # --- evaluation ---
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def predict_step(self, batch: dict, batch_idx: int):
        out = self(batch["input"])
        self._rows += prediction_rows(batch, out, self.class_names, self.threshold)
        return out

    def _evaluate(self, stage: str, batch: dict) -> None:
        out = self(batch["input"])
        self.log(f"{stage}/loss", weighted_asymmetric_loss(out["au_prob"], batch["target"], batch["mask"].bool(),
                                                           self.au_weights), sync_dist=True, batch_size=len(batch["target"]))
        stats = self._stats.setdefault(stage, {k: [] for k in ("prob", "target", "mask", "intensity", "int_target", "int_mask")})
        for key, value in (("prob", out["au_prob"]), ("target", batch["target"]), ("mask", batch["mask"]),
                           ("intensity", out["au_intensity_raw"]), ("int_target", batch["intensity"]),
                           ("int_mask", batch["intensity_mask"])):
            stats[key].append(value.detach().float().cpu())
        if stage == "test":
            self._rows += prediction_rows(batch, out, self.class_names, self.threshold)

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")
        self._write_rows()

    def on_predict_epoch_end(self) -> None:
        self._write_rows()

    def _finish(self, stage: str) -> None:
        stats = {k: self._gather(torch.cat(v)) for k, v in self._stats.pop(stage, {}).items()}
        if not stats:
            return
        f1 = f1_scores(*f1_counts(stats["prob"] >= self.threshold, stats["target"], stats["mask"]))
        labelled = stats["mask"].sum(0) > 0
        scalars = {f"{stage}/f1": float(f1[labelled].mean()) if labelled.any() else 0.0}
        scalars.update({f"{stage}/f1_{name}": float(v) for name, v, known in zip(self.class_names, f1, labelled) if known})
        scalars.update(intensity_scores(stage, stats, self.class_names))
        self.log_dict(scalars)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking and self.trainer.loggers:
            figure = per_class_figure(np.where(labelled, f1, 0.0), self.class_names, f"{stage} F1 per AU")
            publish({f"{stage}/per_au_f1": figure}, self.trainer, self.trainer.log_dir)

    def _gather(self, tensor: torch.Tensor) -> np.ndarray:
        """Every rank's rows, so F1 is accumulated over the whole fold."""
        if self.trainer.world_size > 1:
            tensor = self.all_gather(tensor.to(self.device)).flatten(0, 1).cpu()
        return tensor.numpy()

    def _write_rows(self) -> None:
        """Every rank takes part (the join waits for all of them), with or without rows of its own."""
        rows, self._rows = self._rows, []
        labelled = bool(rows) and f"{self.class_names[0]}_label" in rows[0]
        write_joined(self.trainer, prediction_columns(self.class_names, labelled or not rows), rows)

    # --- export ---
    def export_wrapper(self, activation: bool = True) -> nn.Module:
        return ExportGraph(self).eval()

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        from common.synth import au_sample

        faces = [au_sample(subject=10_000 + i, seed=i, size=self.image_size)[0] for i in range(batch)]
        return (torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in faces]).float() / 255,)

    def export_metadata(self) -> dict[str, str]:
        return {**super().export_metadata(), "classes": json.dumps(self.class_names),
                "aus": json.dumps(self.class_names), "input_size": json.dumps([self.image_size, self.image_size]),
                "threshold": str(self.threshold), "arch": self.arch_name,
                "output_activation": ("au_prob: probabilities (cosine similarity in [0, 1]); au_intensity: 0-5, "
                                      f"set to 0 where au_prob < {self.threshold}"),
                **preprocessing_metadata(self.preprocessing)}


class ExportGraph(nn.Module):
    """The two contract outputs of the module's forward, as a tuple."""

    def __init__(self, module: AUModule):
        super().__init__()
        self.module = module

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module(image)
        return out["au_prob"], out["au_intensity"]


def au_loss_weights(rates: np.ndarray) -> torch.Tensor:
    """The official per-AU weights: 1 / positive rate, scaled to average 1 (a never-positive AU gets the largest)."""
    rates = np.asarray(rates, dtype=np.float64)
    safe = np.where(rates > 0, rates, rates[rates > 0].min() if (rates > 0).any() else 1.0)
    weights = 1.0 / safe
    return torch.tensor(weights / weights.sum() * len(weights), dtype=torch.float32)


def intensity_scores(stage: str, stats: dict, names: Sequence[str]) -> dict[str, float]:
    iccs, maes = [], []
    for k, name in enumerate(names):
        known = stats["int_mask"][:, k] > 0
        if known.sum() > 1:
            pred, true = stats["intensity"][known, k], stats["int_target"][known, k]
            iccs.append(icc_3_1(pred, true))
            maes.append(float(np.abs(pred - true).mean()))
    if not maes:
        return {}
    icc = mean_defined(iccs)
    return {f"{stage}/icc": 0.0 if icc is None else icc, f"{stage}/mae": float(np.mean(maes))}


PER_AU = ("c", "r", "r_raw", "p")
PER_AU_LABELS = ("label", "mask", "r_label", "r_mask")


def prediction_columns(names: Sequence[str], labelled: bool = True) -> list[str]:
    fields = PER_AU + (PER_AU_LABELS if labelled else ())
    return [*ID_COLUMNS, *(f"{name}_{field}" for name in names for field in fields)]


def prediction_rows(batch: dict, out: dict, names: Sequence[str], threshold: float) -> list[dict]:
    """OpenFace-named columns per sample: AU01_c, AU01_r, AU01_r_raw, AU01_p, and the labels where known."""
    prob, intensity = (out[key].detach().float().cpu().numpy() for key in ("au_prob", "au_intensity_raw"))
    columns = openface_columns(prob, intensity, names, threshold)
    rows = []
    for i in range(len(prob)):
        row = {key: (batch.get(key) or [""] * len(prob))[i] for key in ID_COLUMNS}
        for k, name in enumerate(names):
            row[f"{name}_c"] = int(columns[f"{name}_c"][i])
            row[f"{name}_r"] = f"{columns[f'{name}_r'][i]:.3f}"
            row[f"{name}_r_raw"] = f"{intensity[i, k]:.3f}"
            row[f"{name}_p"] = f"{columns[f'{name}_p'][i]:.6f}"
            if "target" in batch:
                row[f"{name}_label"] = int(batch["target"][i, k])
                row[f"{name}_mask"] = int(batch["mask"][i, k])
                row[f"{name}_r_label"] = f"{float(batch['intensity'][i, k]):.3f}"
                row[f"{name}_r_mask"] = int(batch["intensity_mask"][i, k])
        rows.append(row)
    return rows
