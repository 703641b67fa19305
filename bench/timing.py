"""Timing shared by the benchmark scripts."""
from __future__ import annotations

import time
from typing import Callable

from common.export import median_ms  # noqa: F401  (the benchmarks' latency helper is the export report's)


def seconds_per_step(step: Callable[[], None], steps: int) -> float:
    """Mean time of `steps` calls after one warm-up call (the first call pays for allocation)."""
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def training_seconds_per_step(module, batch: dict, steps: int, lr: float = 1e-4, transfer: bool = False) -> float:
    """Seconds per step of forward + backward + AdamW on a fixed batch (`module.compute_loss`, after the module's
    own on-device batch preparation when `transfer`), trainable parameters only."""
    import torch

    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    module.train()

    def step():
        loss = module.compute_loss(module.on_after_batch_transfer(batch, 0) if transfer else batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return seconds_per_step(step, steps)
