"""SAM: the update uses the gradient at the perturbed point; Lightning runs it with manual optimisation, schedulers,
clipping, bf16 and DDP (one synchronised backward per step, replicas identical)."""
from __future__ import annotations

import copy
import importlib
import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from common.cli import main as train_main
from common.optim import build_optimizer
from common.sam import SAM
from tests.conftest import TINY_EMOTION, run_train

A = (torch.tensor([1.0, 4.0]), torch.tensor([0.5, 2.0, 3.0]))  # curvatures of the two parameter tensors
W0 = (torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0, -1.5]))
RHO = 0.3


def quadratic_params(lrs=(0.1, 0.2)) -> tuple[list[torch.Tensor], list[dict]]:
    params = [w.clone().requires_grad_(True) for w in W0]
    return params, [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]


def quadratic_loss(params) -> torch.Tensor:
    return sum(0.5 * (a * p.square()).sum() for a, p in zip(A, params))


def backward(params) -> torch.Tensor:
    loss = quadratic_loss(params)
    loss.backward()
    return loss


def perturbed_gradients() -> list[torch.Tensor]:
    """By hand: g = A w, e = rho g / ||g|| over both tensors together, g' = A (w + e)."""
    grads = [a * w for a, w in zip(A, W0)]
    norm = torch.sqrt(sum(g.square().sum() for g in grads))
    return [a * (w + RHO * g / norm) for a, w, g in zip(A, W0, grads)]


def test_second_step_uses_gradient_at_perturbed_point():
    params, groups = quadratic_params()
    sam = SAM(groups, torch.optim.SGD, rho=RHO, lr=0.1)
    backward(params)
    sam.first_step(zero_grad=True)
    backward(params)
    sam.second_step(zero_grad=True)
    for p, w, g, lr in zip(params, W0, perturbed_gradients(), (0.1, 0.2)):
        torch.testing.assert_close(p.detach(), w - lr * g)
        assert not torch.allclose(p.detach(), w - lr * (A[0 if p.numel() == 2 else 1] * w))  # not plain SGD
        assert p.grad is None


def test_closure_step_matches_the_two_halves():
    params, groups = quadratic_params()
    sam = SAM(groups, torch.optim.SGD, rho=RHO, lr=0.1)
    backward(params)
    sam.step(lambda: backward(params))
    for p, w, g, lr in zip(params, W0, perturbed_gradients(), (0.1, 0.2)):
        torch.testing.assert_close(p.detach(), w - lr * g)
    with pytest.raises(ValueError, match="closure"):
        sam.step()


def test_adam_base_sees_only_perturbed_gradients_and_state_round_trips():
    lrs = (0.05, 0.1)
    params, groups = quadratic_params(lrs)
    sam = SAM(groups, torch.optim.Adam, rho=RHO, lr=1.0)
    reference = [w.clone().requires_grad_(True) for w in W0]
    adam = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(reference, lrs)])
    for _ in range(3):
        backward(params)
        sam.step(lambda: backward(params))
        sam.zero_grad()
        # the reference gets, by hand, the gradient at w + e for its own current w
        grads = [a * p.detach() for a, p in zip(A, reference)]
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        for a, p, g in zip(A, reference, grads):
            p.grad = a * (p.detach() + RHO * g / norm)
        adam.step()
    for p, q in zip(params, reference):
        torch.testing.assert_close(p.detach(), q.detach())

    saved = copy.deepcopy(sam.state_dict())  # as a checkpoint would: Adam updates its moments in place
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(saved["state"][0]), "base optimiser state must be saved"
    assert saved["param_groups"][0]["rho"] == RHO
    params2, groups2 = quadratic_params(lrs)
    with torch.no_grad():
        for p2, p in zip(params2, params):
            p2.copy_(p)
    restored = SAM(groups2, torch.optim.Adam, rho=0.0, lr=9.0)
    restored.load_state_dict(saved)
    assert restored.param_groups[0]["rho"] == RHO and restored.base_optimizer.param_groups[0]["lr"] == 0.05
    for optimizer, ps in ((sam, params), (restored, params2)):
        backward(ps)
        optimizer.step(lambda ps=ps: backward(ps))
    for p, q in zip(params, params2):
        torch.testing.assert_close(p.detach(), q.detach())


def test_adaptive_climb_scales_with_weight_magnitude():
    params, groups = quadratic_params()
    sam = SAM(groups, torch.optim.SGD, rho=RHO, adaptive=True, lr=0.1)
    backward(params)
    grads = [p.grad.clone() for p in params]
    sam.first_step()
    norm = torch.sqrt(sum((w.abs() * g).square().sum() for w, g in zip(W0, grads)))
    for p, w, g in zip(params, W0, grads):
        torch.testing.assert_close(p.detach(), w + RHO * w.square() * g / norm)
    with pytest.raises(RuntimeError, match="twice"):
        sam.first_step()


def test_build_optimizer_wraps_any_base_and_schedulers_reach_it():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    for name, base in (("sam_adam", torch.optim.Adam), ("sam_adamw", torch.optim.AdamW), ("sam_sgd", torch.optim.SGD)):
        optimizer = build_optimizer(model, name, lr=0.1, weight_decay=0.01, sam_rho=0.2)
        assert isinstance(optimizer, SAM) and isinstance(optimizer.base_optimizer, base)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
        assert all(g["rho"] == 0.2 for g in optimizer.param_groups)
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
        assert [g["lr"] for g in optimizer.base_optimizer.param_groups] == [0.05, 0.05]
    with pytest.raises(ValueError, match="sam_lion"):
        build_optimizer(model, "sam_lion", 0.1, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Lightning: manual optimisation through the CLI
# ---------------------------------------------------------------------------------------------------------------




class GradNormProbe(L.Callback):
    """Records the gradient norm the optimiser is about to use, and the learning rate, at every step."""

    norms: list[float] = []
    lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        GradNormProbe.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        GradNormProbe.lrs.append(optimizer.param_groups[0]["lr"])


def test_fit_with_sam_adam_steps_schedules_and_clips(tmp_path, one_torch_thread):
    # the CLI imports the probe by its dotted name, which need not be the module object pytest collected
    probe = importlib.import_module("tests.test_sam").GradNormProbe
    probe.norms, probe.lrs = [], []
    train_main(["--task", "emotion", "fit", *TINY_EMOTION, "--model.optimizer", "sam_adam", "--model.lr", "0.01",
                "--model.scheduler", "exponential", "--model.lr_gamma", "0.5", "--model.warmup_epochs", "0",
                "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                "--trainer.gradient_clip_val", "0.05", "--trainer.callbacks+=tests.test_sam.GradNormProbe",
                "--run.root", str(tmp_path), "--run.wandb", "false"])
    checkpoint = torch.load(next(tmp_path.glob("emotion/*/version_0/checkpoints/last.ckpt")), weights_only=False)
    assert checkpoint["global_step"] == 2
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 2
    # one epoch of 2 steps: the per-epoch decay has been applied once
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.005)
    assert "exp_avg" in next(iter(checkpoint["optimizer_states"][0]["state"].values()))
    assert probe.lrs == pytest.approx([0.01, 0.01])
    assert len(probe.norms) == 2 and max(probe.norms) <= 0.05 * (1 + 1e-4)


def test_fp16_loss_scaling_is_refused_with_sam(one_torch_thread):
    from emotion.module import EmotionModule

    from lightning.pytorch.plugins import MixedPrecision

    module = EmotionModule(["a", "b"], image_size=32, optimizer="sam_sgd")
    # what 16-mixed gives on a GPU without bf16 (on a CPU Lightning would switch to bf16)
    fp16 = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = L.Trainer(accelerator="cpu", plugins=[fp16], max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="bf16"):
        trainer.fit(module, torch.utils.data.DataLoader([(torch.zeros(3, 32, 32, dtype=torch.uint8), 0)] * 2,
                                                        batch_size=2))


class SyncProbe(L.Callback):
    """Under DDP: counts the synchronised backward passes of every step (a backward's all-reduce starts with
    bucket 0) and, at the end, writes them with a checksum of the weights to $SAM_PROBE_DIR/rank<N>.json."""

    def __init__(self):
        self.synced_passes = 0
        self.per_step: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        trainer.strategy.model.register_comm_hook(self, SyncProbe._count_and_allreduce)

    @staticmethod
    def _count_and_allreduce(probe: SyncProbe, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        probe.synced_passes += bucket.index() == 0
        return allreduce_hook(None, bucket)

    def on_train_batch_end(self, trainer, *args) -> None:
        self.per_step.append(self.synced_passes)
        self.synced_passes = 0

    def on_train_end(self, trainer, pl_module) -> None:
        checksum = float(sum(p.double().sum() for p in pl_module.parameters()))
        out = Path(os.environ["SAM_PROBE_DIR"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"per_step": self.per_step, "checksum": checksum}))


def test_ddp_sam_synchronises_only_the_second_pass_and_keeps_replicas_equal(tmp_path):
    result = run_train("--task", "emotion", "fit", *TINY_EMOTION, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                       "--trainer.precision", "bf16-mixed", "--model.optimizer", "sam_adam",
                       "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                       "--trainer.limit_val_batches", "1", "--trainer.callbacks+=tests.test_sam.SyncProbe",
                       "--run.root", str(tmp_path), "--run.wandb", "false",
                       env={"SAM_PROBE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(rank["per_step"] == [1, 1] for rank in ranks), ranks
    assert ranks[0]["checksum"] == ranks[1]["checksum"]
