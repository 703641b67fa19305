"""Align a real dataset once and write it to a cache that training reads by memory mapping.

    python -m common.prepare --task microexp --dataset casme2 --root /data/CASME2 --out cache/casme2_224

Samples come from the dataset's parser (`common.data.DATASETS`), are grouped by source file so a video is
opened once per job, and are aligned by several processes, each appending to shard files of its own.
Interrupt it at any time: a rerun with the same arguments continues where it stopped; a rerun with different
settings is refused. Samples that fail (an undecodable file) are listed with the file at fault; the index is
written only when none failed, unless --skip-failed says to leave them out.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import multiprocessing
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from common.data import load_samples
from common.data.align import AlignSettings, FaceAligner
from common.data.cache import (SHARD_DIR, FrameSettings, ShardWriter, cache_sample, cache_settings, read_done,
                               start_cache, verify_cache, write_index)
from common.data.readers import open_sample
from common.data.records import Sample, sample_key

FAILURES_FILE = "failures.jsonl"
JOB_SIZE = 32


class PrepareFailed(RuntimeError):
    pass


@dataclass
class PrepareReport:
    total: int
    skipped: int  # already done by an earlier run
    written: int
    failures: list[dict] = field(default_factory=list)
    complete: bool = False


# ---------------------------------------------------------------- worker side


_WORKER: dict = {}


def _start_worker(cache: str, root: str, settings: dict, run: str, imports: Sequence[str] = (),
                  in_pool: bool = True) -> None:
    import cv2

    if in_pool:  # Ctrl-C reaches every process of the group; only the parent should act on it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)  # the pool is the parallelism; OpenCV's own threads would fight it
    for module in imports:  # a user's module may register a reader kind the samples need
        importlib.import_module(module)
    frames = FrameSettings.from_dict(settings)
    _WORKER.update(cache=Path(cache), root=Path(root), frames=frames, aligner=FaceAligner(frames.align),
                   writer=ShardWriter(Path(cache), f"{run}-{os.getpid()}", frames.align.size))


def _run_job(job: Sequence[Sample]) -> list[dict]:
    """One source file's samples; a failure is reported per sample and the job goes on."""
    w = _WORKER
    outcomes, reader = [], None
    try:
        for sample in job:
            key = sample_key(sample, w["root"])
            try:
                if reader is None:
                    reader = open_sample(sample)
                cache_sample(sample, w["root"], reader, w["aligner"], w["frames"], w["writer"])
                outcomes.append({"key": key, "ok": True})
            except Exception as error:  # report and go on: one bad file must not stop a night's work
                outcomes.append({"key": key, "ok": False, "path": str(sample.path),
                                 "error": f"{type(error).__name__}: {error}"})
    finally:
        if reader is not None:
            reader.close()
    return outcomes


def _stop_worker() -> None:
    if "writer" in _WORKER:
        _WORKER.pop("writer").close()


# ---------------------------------------------------------------- main side


def group_jobs(samples: Sequence[Sample], size: int = JOB_SIZE) -> list[list[Sample]]:
    """Samples sharing a source file travel together (one open per job), at most `size` per job."""
    by_source: dict[tuple[str, Path], list[Sample]] = {}
    for sample in samples:
        by_source.setdefault((sample.source, sample.path), []).append(sample)
    return [group[i:i + size] for group in by_source.values() for i in range(0, len(group), size)]


def check_unique_keys(samples: Sequence[Sample], root: Path) -> list[str]:
    keys = [sample_key(s, root) for s in samples]
    seen, repeated = set(), []
    for key in keys:
        if key in seen:
            repeated.append(key)
        seen.add(key)
    if repeated:
        raise PrepareFailed(f"the dataset parser returned {len(repeated)} samples with the same key, e.g. "
                            f"{repeated[:3]}; give them extra['id'] to tell them apart")
    return keys


def prepare(samples: Sequence[Sample], out: Path, root: Path, task: str, dataset: str, frames: FrameSettings,
            workers: int = 2, skip_failed: bool = False, progress: bool = True,
            imports: Sequence[str] = ()) -> PrepareReport:
    """Cache `samples`; safe to call again on the same `out` after an interruption. `imports`: modules the
    worker processes import first (where extra reader kinds are registered)."""
    out, root = Path(out), Path(root).resolve()
    keys = check_unique_keys(samples, root)
    settings = cache_settings(task, dataset, root, frames)
    start_cache(out, settings, info={"created": time.strftime("%Y-%m-%d %H:%M:%S"), "samples": len(samples)})
    done = read_done(out, frames.align.size)
    todo = [s for s, k in zip(samples, keys) if k not in done]
    report = PrepareReport(total=len(samples), skipped=len(samples) - len(todo), written=0)
    counter = Progress(len(samples), report.skipped, enabled=progress)
    try:
        for outcomes in run_jobs(group_jobs(todo), out, root, frames, workers, imports):
            for outcome in outcomes:
                if outcome["ok"]:
                    report.written += 1
                else:
                    report.failures.append(outcome)
            counter.advance(len(outcomes), len(report.failures))
    finally:
        counter.finish()
    return finish(out, keys, report, frames, skip_failed)


def run_jobs(jobs: list[list[Sample]], out: Path, root: Path, frames: FrameSettings, workers: int,
             imports: Sequence[str] = ()):
    """Yields each job's outcomes. workers=0 runs in this process (debugging, tests)."""
    run = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
    args = (str(out), str(root), frames.to_dict(), run, tuple(imports))
    if workers == 0:
        _start_worker(*args, in_pool=False)
        try:
            for job in jobs:
                yield _run_job(job)
        finally:
            _stop_worker()
        return
    # spawn: a forked child would inherit whatever threads decord or OpenCV started in the parent
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers, initializer=_start_worker, initargs=args)
    try:
        yield from pool.imap_unordered(_run_job, jobs)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def finish(out: Path, keys: Sequence[str], report: PrepareReport, frames: FrameSettings,
           skip_failed: bool) -> PrepareReport:
    """Write the index in dataset order when every sample is done (or the failed ones may be left out)."""
    failures_path = out / FAILURES_FILE
    with open(failures_path, "w") as handle:
        for failure in report.failures:
            handle.write(json.dumps(failure) + "\n")
    if report.failures and not skip_failed:
        return report
    done = read_done(out, frames.align.size)
    write_index(out, [done[k] for k in keys if k in done])
    remove_empty_shards(out)
    report.complete = True
    return report


def remove_empty_shards(out: Path) -> None:
    """Pool workers that never got a job leave empty files behind."""
    for frames in (out / SHARD_DIR).glob("*.u8"):
        listing = frames.with_suffix(".jsonl")
        if frames.stat().st_size == 0 and (not listing.exists() or listing.stat().st_size == 0):
            frames.unlink()
            listing.unlink(missing_ok=True)


class Progress:
    """A live bar on a terminal (rich); a line every ten seconds in a log file."""

    def __init__(self, total: int, done: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, done, enabled
        self._bar = None
        self._last = 0.0
        self._started = time.monotonic()
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(console=Console(stderr=True))
            self._task = self._bar.add_task("prepare", total=total, completed=done)
            self._bar.start()

    def advance(self, count: int, failed: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=f"prepare ({failed} failed)")
        elif self.enabled and time.monotonic() - self._last > 10:
            self._last = time.monotonic()
            rate = self.done / max(time.monotonic() - self._started, 1e-9)
            print(f"prepare: {self.done}/{self.total} samples, {failed} failed, {rate:.1f}/s", file=sys.stderr)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m common.prepare", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--task", help="emotion, microexp, au or spotting")
    parser.add_argument("--dataset", help="a dataset name its task registers")
    parser.add_argument("--root", type=Path, help="the dataset as distributed")
    parser.add_argument("--out", type=Path, help="cache folder (created, or resumed)")
    parser.add_argument("--verify", type=Path, metavar="CACHE",
                        help="check a finished cache's checksums and name the shards and samples at fault")
    parser.add_argument("--size", type=int, default=224, help="output side in pixels (112, 224, 256)")
    parser.add_argument("--margin", type=float, default=AlignSettings.margin, help="context around the face")
    parser.add_argument("--align-mode", choices=("first", "median"), default="first",
                        help="one alignment per clip from its first frame or the median over probed frames")
    parser.add_argument("--detector", default="auto",
                        help="'auto' (dlib where the faces extra is installed, else cascade), 'dlib', 'cascade', "
                             "'none' (frames are face crops already: resize only) or 'module:factory'")
    parser.add_argument("--probe-frames", type=int, default=AlignSettings.probe_frames)
    parser.add_argument("--fallback", choices=("center", "error"), default="center",
                        help="where no face is found: centre crop, or fail the sample")
    parser.add_argument("--span", choices=("interval", "all"), default=None,
                        help="frames kept: the annotated interval, or all (default: all for spotting)")
    parser.add_argument("--context", type=int, default=0, help="extra frames kept around an interval")
    parser.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    parser.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--skip-failed", action="store_true", help="finish the index without failed samples")
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples (a trial run)")
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        help="module that registers more datasets or reader kinds (repeatable)")
    args = parser.parse_args(argv)
    missing = [f"--{name}" for name in ("task", "dataset", "root", "out") if getattr(args, name) is None]
    if args.verify is None and missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return args


def frame_settings_from(args: argparse.Namespace) -> FrameSettings:
    align = AlignSettings(size=args.size, margin=args.margin, mode=args.align_mode, detector=args.detector,
                          probe_frames=args.probe_frames, fallback=args.fallback)
    span = args.span or ("all" if args.task == "spotting" else "interval")
    return FrameSettings(align=align, span=span, context=args.context, stride=args.stride)


def task_data_module(task: str) -> list[str]:
    """`<task>.parsers` registers the task's parsers and reader kinds; worker processes must import it too."""
    if importlib.util.find_spec(task) is None:
        return []
    return [name for name in (f"{task}.parsers", f"{task}.data") if importlib.util.find_spec(name) is not None]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.verify is not None:
        return verify_command(args.verify)
    for module in args.imports:
        importlib.import_module(module)
    try:
        frames = frame_settings_from(args)
        samples = load_samples(args.dataset, args.root, args.task)[: args.limit]
        imports = [*task_data_module(args.task), *args.imports]
        report = prepare(samples, args.out, args.root, args.task, args.dataset, frames, args.workers,
                         args.skip_failed, imports=imports)
    except KeyboardInterrupt:
        print(f"\ninterrupted; rerun the same command to continue {args.out}", file=sys.stderr)
        return 130
    except (KeyError, ValueError, OSError, RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error  # no repr quotes
        print(f"prepare: {message}", file=sys.stderr)
        return 2
    return summarize(report, args.out)


def verify_command(cache: Path) -> int:
    try:
        problems = verify_cache(cache)
    except (OSError, RuntimeError, ValueError) as error:
        problems = [str(error)]
    for line in problems:
        print(f"prepare --verify: {line}", file=sys.stderr)
    if not problems:
        print(f"prepare --verify: {cache}: every shard matches its checksum", file=sys.stderr)
    return 1 if problems else 0


def summarize(report: PrepareReport, out: Path) -> int:
    print(f"prepare: {report.total} samples, {report.skipped} already cached, {report.written} written, "
          f"{len(report.failures)} failed -> {out}", file=sys.stderr)
    for failure in report.failures[:20]:
        print(f"  {failure['path']}: {failure['error']}", file=sys.stderr)
    if report.failures and not report.complete:
        print(f"index not written: fix or remove the failed samples (all in {out / FAILURES_FILE}), or rerun "
              f"with --skip-failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
