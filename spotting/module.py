"""The spotting LightningModule: the temporal network on feature windows, thresholds chosen on training subjects,
MEGC scores with the optical-flow baseline beside them, submission files, and the export.

Training: binary cross-entropy on the six per-frame scores (soft start/end targets), positives weighted by the
inverse of their rate in the training videos (capped), padding masked out.

Every validation epoch picks, per type, the actionness threshold with the best F1 on the validation videos
(subjects carved from the training subjects; the training videos when there are none), and the baseline's
relative threshold the same way; `val/f1` (overall, at those thresholds) chooses the checkpoint. The thresholds
are buffers, so a checkpoint and its export carry them. `test` scores the held-out videos with them:
`test/f1`, `test/f1_macro`, `test/f1_micro` and the baseline's `test/baseline_f1...`, and writes
`predictions.csv` (MEGC submission: vid, onset, offset, type, plus apex, score, subject, dataset),
`baseline_predictions.csv` and `ground_truth.csv` in the run directory, which `python -m spotting.evaluate` reads.
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.module import TaskModule, preprocessing_metadata
from common.predictions import write_joined
from spotting.baseline import P_GRID, ThresholdSpotter
from spotting.contract import CONTRACT
from spotting.evaluate import CODE_OF, Counts, video_counts
from spotting.model import TemporalSpotter
from spotting.postprocess import SCORE_NAMES, TYPES, SpotSettings, plausible_lengths, proposals, select, spot

THRESHOLD_GRID = tuple(np.round(np.linspace(0.05, 0.95, 19), 2))
MAX_POSITIVE_WEIGHT = 20.0
SUBMISSION = ("vid", "onset", "offset", "type", "apex", "score", "subject", "dataset")


class SpottingModule(TaskModule):
    """Args:
        feature_dim: D of the features (linked from the data module). features: the extractor's settings (linked;
            exported as metadata). preprocessing: the face alignment record (linked).
        width, depth, max_dilation, dropout: the temporal network (spotting/model.py).
        boundary: share of the peak actionness that bounds an interval (spotting/postprocess.py).
        min_gap_seconds: least time between two apexes of one type.
    """

    task = "spotting"
    contract = CONTRACT

    def __init__(self, feature_dim: int = 35, features: dict | None = None, preprocessing: dict | None = None,
                 width: int = 64, depth: int = 8, max_dilation: int = 32, dropout: float = 0.1,
                 boundary: float = 0.5, min_gap_seconds: float = 0.3, **optim):
        optim.setdefault("lr", 2e-3)
        optim.setdefault("weight_decay", 0.01)
        super().__init__(**optim)
        self.save_hyperparameters()
        self.features = dict(features or {})
        self.preprocessing = dict(preprocessing or {})
        self.net = TemporalSpotter(feature_dim, width, depth, max_dilation, dropout)
        self.register_buffer("thresholds", torch.full((len(TYPES),), 0.5))
        self.register_buffer("baseline_p", torch.full((len(TYPES),), 0.5))
        self.register_buffer("positive_weight", torch.ones(len(SCORE_NAMES)))
        self._videos: dict[str, list[dict]] = {}
        self._baseline_scores: dict | None = None

    @property
    def arch_name(self) -> str:
        return f"tcn-w{self.hparams.width}-d{self.hparams.depth}"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    # --- training ---
    def on_fit_start(self) -> None:
        super().on_fit_start()
        datamodule = self.trainer.datamodule
        if self.trainer.ckpt_path is None and hasattr(datamodule, "feature_statistics"):
            mean, std = datamodule.feature_statistics()
            self.net.set_statistics(torch.as_tensor(mean, device=self.device), torch.as_tensor(std, device=self.device))
            rates = torch.as_tensor(datamodule.positive_rates(), dtype=torch.float32, device=self.device)
            self.positive_weight.copy_(((1 - rates) / rates.clamp(min=1e-4)).clamp(1.0, MAX_POSITIVE_WEIGHT))

    def compute_loss(self, batch: dict) -> torch.Tensor:
        logits = self.net.logits(batch["input"].float())
        target, mask = batch["target"].float(), batch["mask"].float()
        weight = 1 + (self.positive_weight - 1) * target  # soft targets weigh in proportion
        loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight, reduction="none")
        return (loss.mean(-1) * mask).sum() / mask.sum().clamp(min=1)

    # --- evaluation: whole videos, one per batch ---
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._collect("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._collect("test", batch)

    def predict_step(self, batch: dict, batch_idx: int):
        return self._collect("predict", batch)

    def _collect(self, stage: str, batch: dict) -> torch.Tensor:
        scores = self(batch["input"].float())
        video = {"scores": scores[0].float().cpu().numpy(), "features": batch["input"][0].float().cpu().numpy(),
                 "numbers": batch["numbers"][0].cpu().numpy(), "step": int(batch["step"][0]),
                 "fps": float(batch["fps"][0]), "index": int(batch["index"][0]), "vid": batch["sample"][0],
                 "subject": batch["subject"][0], "dataset": batch["dataset"][0]}
        video["truth"] = self._truth(stage, video["index"])
        self._videos.setdefault(stage, []).append(video)
        return scores

    def _truth(self, stage: str, index: int) -> list[tuple[int, int, str]]:
        datamodule = self.trainer.datamodule
        dataset = {"val": datamodule.val_set, "test": datamodule.test_set, "predict": datamodule.test_set}[stage]
        return [(e["interval"].onset, e["interval"].offset, e["type"]) for e in dataset.videos[index].events]

    def settings(self, video: dict, thresholds: dict | None = None) -> SpotSettings:
        thresholds = thresholds or dict(zip(TYPES, self.thresholds.tolist()))
        source_fps = video["fps"] * video["step"]
        gap = max(1, int(round(self.hparams.min_gap_seconds * video["fps"])))
        return SpotSettings(thresholds, plausible_lengths(source_fps), self.hparams.boundary, {k: gap for k in TYPES})

    def spots(self, video: dict, thresholds: dict | None = None) -> list:
        return spot(video["scores"], video["numbers"], self.settings(video, thresholds), video["step"])

    def spot_video(self, path, detector: str | None = None) -> list:
        """Intervals (onset, apex, offset in the source's frame numbers, type, score) in a video file or frame folder,
        found as `test` finds them: this model's feature settings, the network, the thresholds chosen in training.
        `detector` overrides the recorded face detector ('none' for frames that are the face already)."""
        from pathlib import Path

        from common.data.readers import open_frames
        from spotting.features import FeatureSettings, extract

        chosen = {k: v for k, v in self.features.items() if k != "names"}
        settings = FeatureSettings(**{**chosen, **({"detector": detector} if detector else {})})
        with open_frames("frames" if Path(path).is_dir() else "video", path) as source:
            found = extract(source.read, source.numbers, source.fps or settings.target_fps, settings, where=path)
        with torch.no_grad():
            scores = self(torch.from_numpy(found.features)[None].to(self.device))[0].float().cpu().numpy()
        return self.spots({"scores": scores, "numbers": found.numbers, "fps": found.fps, "step": found.step})

    def baseline(self) -> ThresholdSpotter:
        regions = len(self.features.get("regions", ())) or (self.hparams.feature_dim - 2) // 3 + 1
        return ThresholdSpotter(regions, dict(zip(TYPES, self.baseline_p.tolist())))

    def baseline_spots(self, video: dict, p: dict | None = None) -> list:
        return self.baseline().spot(video["features"], video["numbers"], video["fps"], video["step"], p)

    def on_validation_epoch_end(self) -> None:
        videos = self._videos.pop("val", [])
        total = len(self.trainer.datamodule.val_set)
        for video in videos:  # every threshold's intervals are a subset of the lowest one's
            video["proposals"] = proposals(video["scores"], video["numbers"], self.settings(video), video["step"],
                                           floor=min(THRESHOLD_GRID))
        learned = self._sweep(videos, total, lambda v, value: select(v["proposals"], {k: value for k in TYPES}),
                              THRESHOLD_GRID)
        for k, kind in enumerate(TYPES):
            self.thresholds[k] = float(THRESHOLD_GRID[learned["best"][kind]])
        if self._baseline_scores is None or self.trainer.sanity_checking:  # the baseline does not learn: fit it once
            base = self._sweep(videos, total, lambda v, value: self.baseline_spots(v, {k: value for k in TYPES}), P_GRID)
            self.baseline_p.copy_(torch.tensor([float(P_GRID[base["best"][kind]]) for kind in TYPES]))
            self._baseline_scores = None if self.trainer.sanity_checking else base["scores"]
            scores = base["scores"]
        else:
            scores = self._baseline_scores
        self.log_dict({**_scalars("val", learned["scores"]), **_scalars("val", scores, "baseline_"),
                       **{f"val/threshold_{kind}": float(self.thresholds[k]) for k, kind in enumerate(TYPES)}})

    def _sweep(self, videos: list[dict], total: int, spotter, grid: Sequence[float]) -> dict:
        """Counts (hits, gt, pred) for every grid value and type, summed over the videos of every rank (a padded
        repeat of a video counts once); the best value per type and the scores there."""
        counts = torch.zeros(total, len(grid), len(TYPES), 3, dtype=torch.float64)
        for video in videos:
            for g, value in enumerate(grid):
                found = spotter(video, value)
                for t, kind in enumerate(TYPES):
                    c = video_counts([(a, b) for a, b, k in video["truth"] if k == kind],
                                     [(i.onset, i.offset) for i in found if i.type == kind])
                    counts[video["index"], g, t] = torch.tensor([c.hits, c.gt, c.pred], dtype=torch.float64)
        counts = self._reduce_max(counts).sum(0)  # [grid, types, 3]
        best, chosen = {}, {}
        for t, kind in enumerate(TYPES):
            f1 = [Counts(int(h), int(g), int(p)).as_dict()["f1"] for h, g, p in counts[:, t].tolist()]
            best[kind] = int(np.argmax(f1))
            chosen[kind] = Counts(*(int(x) for x in counts[best[kind], t].tolist()))
        return {"best": best, "scores": _type_scores(chosen)}

    def _reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size > 1:
            tensor = tensor.to(self.device)
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.cpu()

    def on_test_epoch_end(self) -> None:
        videos = self._videos.pop("test", [])
        total = len(self.trainer.datamodule.test_set)
        fixed = dict(zip(TYPES, self.thresholds.tolist()))
        learned = self._sweep(videos, total, lambda v, value: self.spots(v, fixed), (0.0,))
        base = self._sweep(videos, total, lambda v, value: self.baseline_spots(v), (0.0,))
        self.log_dict({**_scalars("test", learned["scores"]), **_scalars("test", base["scores"], "baseline_")})
        self._write(videos, self.spots, "predictions.csv")
        self._write(videos, self.baseline_spots, "baseline_predictions.csv")
        truth = [{"vid": v["vid"], "onset": a, "offset": b, "type": CODE_OF[k], "apex": "", "score": "",
                  "subject": v["subject"], "dataset": v["dataset"]} for v in videos for a, b, k in v["truth"]]
        write_joined(self.trainer, SUBMISSION, truth, "ground_truth.csv", key=SUBMISSION)

    def on_predict_epoch_end(self) -> None:
        self._write(self._videos.pop("predict", []), self.spots, "predictions.csv")

    def _write(self, videos: list[dict], spotter, name: str) -> None:
        rows = [{"vid": v["vid"], "onset": i.onset, "offset": i.offset, "type": CODE_OF[i.type], "apex": i.apex,
                 "score": f"{i.score:.4f}", "subject": v["subject"], "dataset": v["dataset"]}
                for v in videos for i in spotter(v)]
        write_joined(self.trainer, SUBMISSION, rows, name, key=SUBMISSION)

    # --- export ---
    def export_wrapper(self, activation: bool = True) -> nn.Module:
        return ExportGraph(self.net, activation).eval()

    def example_inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        """Features of generated long videos (8 s each), made with this model's feature settings."""
        from common.synth import long_video
        from spotting.features import FeatureSettings, extract

        chosen = {k: v for k, v in self.features.items() if k != "names"}
        settings = FeatureSettings(**{**chosen, "detector": "none"})
        rows = []
        for i in range(batch):
            video = long_video(10_000 + i, i, fps=settings.target_fps, seconds=8.0, size=settings.size)
            rows.append(extract(lambda p: np.stack([video.frame(int(j)) for j in p]), np.arange(len(video)),
                                video.fps, settings).features)
        return (torch.from_numpy(np.stack(rows)),)

    def export_metadata(self) -> dict[str, str]:
        fps = self.features.get("target_fps", "")
        return {**super().export_metadata(), "classes": json.dumps(list(TYPES)), "score_names": json.dumps(list(SCORE_NAMES)),
                "input_size": json.dumps(["T", self.hparams.feature_dim]), "fps": str(fps),
                "feature_settings": json.dumps(self.features),
                "thresholds": json.dumps(dict(zip(TYPES, self.thresholds.tolist()))),
                "baseline_p": json.dumps(dict(zip(TYPES, self.baseline_p.tolist()))),
                "boundary": str(self.hparams.boundary), "min_gap_seconds": str(self.hparams.min_gap_seconds),
                "receptive_radius": str(self.net.receptive_radius), "arch": self.arch_name,
                "output_activation": "sigmoid: per-frame scores in [0, 1] (score_names order); intervals come from "
                                     "spotting.postprocess.spot with `thresholds`",
                **preprocessing_metadata(self.preprocessing)}


class ExportGraph(nn.Module):
    def __init__(self, net: TemporalSpotter, activation: bool):
        super().__init__()
        self.net, self.activation = net, activation

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features) if self.activation else self.net.logits(features)


def _type_scores(counts: dict) -> dict:
    scores = {kind: c.as_dict() for kind, c in counts.items()}
    scores["overall"] = (counts["macro"] + counts["micro"]).as_dict()
    return scores


def _scalars(stage: str, scores: dict, tag: str = "") -> dict[str, float]:
    """`val/f1`, `val/f1_micro`, ...; with tag "baseline_": `val/baseline_f1`, ..."""
    out = {f"{stage}/{tag}{name}": scores["overall"][name] for name in ("f1", "precision", "recall")}
    out.update({f"{stage}/{tag}f1_{kind}": scores[kind]["f1"] for kind in TYPES})
    return out
