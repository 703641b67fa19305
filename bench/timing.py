"""Timing shared by the benchmark scripts."""
from __future__ import annotations

import time
from typing import Callable


def seconds_per_step(step: Callable[[], None], steps: int) -> float:
    """Mean time of `steps` calls after one warm-up call (the first call pays for allocation)."""
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps
