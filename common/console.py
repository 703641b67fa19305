"""Progress of long work on the console (the runtime over a video, writing synthetic data): a live line on a
terminal; where stderr is a log, a plain line every ten seconds, so a log shows the work moving without a line per
item."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, unit: str, enabled: bool = True, every: float | None = None):
        self.total, self.unit, self.enabled, self.done = total, unit, enabled, 0
        self.live = sys.stderr.isatty()
        self.every = every if every is not None else (1.0 if self.live else 10.0)
        self.start = self.last = time.monotonic()

    def step(self, count: int = 1) -> None:
        self.update(self.done + count)

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        count = f"{done}/{self.total}" if self.total else str(done)
        text = f"{count} {self.unit}, {done / max(now - self.start, 1e-9):.1f} {self.unit}/s"
        print(f"\r{text}" if self.live else text, end="" if self.live else "\n", file=sys.stderr, flush=True)

    def close(self, done: int | None = None) -> None:
        done = self.done if done is None else done
        if self.enabled:
            print(f"{chr(13) if self.live else ''}{done} {self.unit} in {time.monotonic() - self.start:.1f} s",
                  file=sys.stderr, flush=True)
