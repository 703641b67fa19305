"""The preprocessed cache: aligned uint8 crops, memory-mapped, with an index of samples and labels.

Layout of a cache folder:

    settings.json       what made it (task, dataset, root, frame settings); a differing request is refused
    shards/<run>-<pid>.u8      raw uint8 frames [N, S, S, 3], appended by one prepare worker process
    shards/<run>-<pid>.jsonl   one line per finished sample (its frame range in the shard, record, alignment)
    index.jsonl         written when every sample is done: the done lines in dataset order
    index.csv           the same, flat, for a human with pandas
    checksums.json      CRC-32 of every shard's frames (each done line also holds its sample's CRC-32)
    verified.json       shard sizes and times when the checksums last matched

A cache is checked when it is opened: a shard shorter than its index says names the shard and the first
sample it lost; the checksums are verified the first time a cache is opened after it changed (and by
`python -m common.prepare --verify CACHE`), naming the samples whose bytes differ.

Resuming is free: a sample's line is written only after its frames are flushed, so a crash or Ctrl-C leaves
at most a tail of frames no line points to (ignored) and a torn last line (ignored); a rerun skips every key
that has a line. Each worker process appends to files of its own, so no locking is needed.

The same frames come from `RawFrames` (read and aligned on the fly, for a root that was never prepared) and
`FrameCache`; `open_source` picks one, so a DataModule accepts a raw root or a cache alike.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from common.data.align import AlignSettings, Alignment, FaceAligner
from common.data.clips import gather_clip
from common.data.readers import FrameSource, ReadError, open_sample, positions_in
from common.data.records import Sample, sample_from_dict, sample_key, sample_to_dict

CACHE_VERSION = 1
SETTINGS_FILE, INDEX_FILE, INDEX_CSV, SHARD_DIR = "settings.json", "index.jsonl", "index.csv", "shards"
CHECKSUMS_FILE, VERIFIED_FILE = "checksums.json", "verified.json"
CHECKSUM_CHUNK = 64 << 20
SPANS = ("interval", "all")


class CacheError(RuntimeError):
    pass


class CacheMismatchError(CacheError):
    """A cache made with other settings than the ones asked for."""


class CacheIncompleteError(CacheError):
    pass


class CacheCorruptError(CacheError):
    """Shard bytes that are missing or differ from what prepare wrote."""


@dataclass(frozen=True)
class FrameSettings:
    """Which frames of a sample are kept and how they are aligned.

    span: 'interval' keeps onset-context..offset+context of an annotated sample, 'all' keeps every frame
        (long videos for spotting; samples without an interval always keep all). stride: every n-th frame
        (SAMM long videos are 200 fps; spotting methods downsample them by 7-8).
    """

    align: AlignSettings = field(default_factory=AlignSettings)
    span: str = "interval"
    context: int = 0
    stride: int = 1

    def __post_init__(self):
        if self.span not in SPANS:
            raise ValueError(f"frame span must be one of {SPANS}, got {self.span!r}")
        if self.context < 0 or self.stride < 1:
            raise ValueError(f"context must be >= 0 and stride >= 1, got {self.context}, {self.stride}")

    def to_dict(self) -> dict:
        return {"align": self.align.to_dict(), "span": self.span, "context": self.context, "stride": self.stride}

    @classmethod
    def from_dict(cls, values: Mapping) -> "FrameSettings":
        values = dict(values)
        return cls(align=AlignSettings(**values.pop("align", {})), **values)


def span_numbers(sample: Sample, available: np.ndarray, settings: FrameSettings) -> np.ndarray:
    """The source frame numbers kept for a sample."""
    if sample.interval is None or settings.span == "all":
        chosen = available
    else:
        first = sample.interval.onset - settings.context
        last = sample.interval.offset + settings.context
        chosen = available[(available >= first) & (available <= last)]
        if len(chosen) == 0:
            raise ReadError(f"{sample.path}: no frames in the annotated range {first}..{last} "
                            f"(source holds {available[0]}..{available[-1]})")
    return chosen[:: settings.stride]


# ---------------------------------------------------------------- settings


def cache_settings(task: str, dataset: str, root: Path, frames: FrameSettings) -> dict:
    return {"version": CACHE_VERSION, "task": task, "dataset": dataset,
            "root": str(Path(root).resolve()), "frames": frames.to_dict()}


def settings_differences(saved: Mapping, wanted: Mapping, prefix: str = "") -> list[str]:
    """'frames.align.size: cache has 224, asked for 112' for every differing leaf."""
    lines = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines += settings_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: cache has {a!r}, asked for {b!r}")
    return lines


def read_settings(cache: Path) -> dict:
    path = Path(cache) / SETTINGS_FILE
    if not path.is_file():
        raise CacheError(f"{cache}: not a cache ({SETTINGS_FILE} missing)")
    with open(path) as handle:
        saved = json.load(handle)
    return {k: v for k, v in saved.items() if k != "info"}


def check_settings(cache: Path, wanted: Mapping, compare: Iterable[str] | None = None) -> None:
    """Refuse a cache whose recorded settings differ from `wanted` (only the keys in `compare`, if given)."""
    saved = read_settings(cache)
    if compare is not None:
        saved = {k: saved.get(k) for k in compare}
        wanted = {k: wanted.get(k) for k in compare}
    differences = settings_differences(saved, wanted)
    if differences:
        raise CacheMismatchError(f"{cache} was made with other settings:\n  " + "\n  ".join(differences)
                                 + "\nuse another --out folder, or delete this one to rebuild it")


def start_cache(cache: Path, settings: Mapping, info: Mapping | None = None) -> None:
    """Create the folder and record the settings, or check them against an existing cache."""
    cache = Path(cache)
    if (cache / SETTINGS_FILE).is_file():
        check_settings(cache, settings)
        return
    if cache.exists() and any(cache.iterdir()):
        raise CacheError(f"{cache}: folder is not empty and holds no {SETTINGS_FILE}; refusing to write into it")
    (cache / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache / SETTINGS_FILE, {**settings, "info": dict(info or {})})


def write_json_atomic(path: Path, value) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=True))
    os.replace(temporary, path)


# ---------------------------------------------------------------- writing


class ShardWriter:
    """Append-only frames and done-list of one writer process."""

    def __init__(self, cache: Path, name: str, size: int):
        directory = Path(cache) / SHARD_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.frame_shape = (size, size, 3)
        self._frames = open(directory / f"{name}.u8", "ab")
        self._done = open(directory / f"{name}.jsonl", "a")
        self.position = self._frames.tell() // int(np.prod(self.frame_shape))

    def append(self, frames: np.ndarray) -> None:
        if frames.shape[1:] != self.frame_shape or frames.dtype != np.uint8:
            raise ValueError(f"shard {self.name}: expected uint8 frames {self.frame_shape}, got "
                             f"{frames.dtype} {frames.shape[1:]}")
        self._frames.write(np.ascontiguousarray(frames).tobytes())
        self.position += len(frames)

    def commit(self, record: Mapping) -> None:
        """Frames first, then the line that points to them: a crash between the two loses only this sample.
        flush() is enough for a crashed or interrupted process (the kernel keeps the data); an fsync per
        sample would only guard against power loss and costs milliseconds each."""
        self._frames.flush()
        self._done.write(json.dumps(record, sort_keys=True) + "\n")
        self._done.flush()

    def close(self) -> None:
        for handle in (self._frames, self._done):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()


def cache_sample(sample: Sample, root: Path, reader: FrameSource, aligner: FaceAligner, settings: FrameSettings,
                 writer: ShardWriter, chunk: int = 128) -> dict:
    """Align one sample's frames into the shard, chunk by chunk so a long video never sits in memory."""
    numbers = span_numbers(sample, reader.numbers, settings)
    positions = reader.positions_of(numbers)
    alignment = aligner.choose(sample.extra, len(positions), lambda p: reader.read(positions[p]), sample.path)
    start, crc = writer.position, 0
    for first in range(0, len(positions), chunk):
        frames = np.ascontiguousarray(aligner.apply(reader.read(positions[first:first + chunk]), alignment))
        writer.append(frames)
        crc = zlib.crc32(frames.data, crc)
    record = {
        "key": sample_key(sample, root),
        "sample": sample_to_dict(sample, root),
        "shard": writer.name,
        "start": start,
        "count": len(positions),
        "numbers": numbers.tolist(),
        "alignment": alignment_record(alignment),
        "crc32": crc,
    }
    writer.commit(record)
    return record


def alignment_record(alignment: Alignment) -> dict:
    return {"source": alignment.source, "matrix": np.round(alignment.matrix, 6).tolist(),
            "points": None if alignment.points is None else np.round(alignment.points, 3).tolist()}


# ---------------------------------------------------------------- done lists and the index


def read_done(cache: Path, size: int) -> dict[str, dict]:
    """Every finished sample by key; a torn last line and lines pointing past their shard are ignored."""
    done: dict[str, dict] = {}
    frame_bytes = size * size * 3
    for listing in sorted((Path(cache) / SHARD_DIR).glob("*.jsonl")):
        shard_frames = (listing.with_suffix(".u8").stat().st_size // frame_bytes
                        if listing.with_suffix(".u8").exists() else 0)
        for record in read_done_lines(listing):
            if record["start"] + record["count"] <= shard_frames:
                done.setdefault(record["key"], record)
    return done


def read_done_lines(listing: Path) -> list[dict]:
    lines = listing.read_text().split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):  # only the unterminated last line may be torn
                raise CacheError(f"{listing}, line {number}: not a JSON record") from None
    return records


def write_index(cache: Path, records: Sequence[Mapping]) -> None:
    cache = Path(cache)
    temporary = cache / (INDEX_FILE + ".tmp")
    with open(temporary, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    os.replace(temporary, cache / INDEX_FILE)
    write_index_csv(cache / INDEX_CSV, records)
    write_json_atomic(cache / CHECKSUMS_FILE, shard_checksums(cache, records))


# ---------------------------------------------------------------- checksums


def shard_extents(records: Sequence[Mapping]) -> dict[str, int]:
    """Frames of each shard the index uses (a crashed run may have left unused frames at a shard's end)."""
    extents: dict[str, int] = {}
    for record in records:
        extents[record["shard"]] = max(extents.get(record["shard"], 0), record["start"] + record["count"])
    return extents


def frame_bytes_of(cache: Path) -> int:
    size = FrameSettings.from_dict(read_settings(cache)["frames"]).align.size
    return size * size * 3


def shard_checksums(cache: Path, records: Sequence[Mapping]) -> dict[str, dict]:
    per_frame = frame_bytes_of(cache)
    return {name: {"bytes": frames * per_frame, "crc32": file_crc32(Path(cache) / SHARD_DIR / f"{name}.u8",
                                                                     frames * per_frame)}
            for name, frames in sorted(shard_extents(records).items())}


def file_crc32(path: Path, length: int) -> int:
    crc, left = 0, length
    with open(path, "rb") as handle:
        while left > 0:
            block = handle.read(min(CHECKSUM_CHUNK, left))
            if not block:
                break
            crc, left = zlib.crc32(block, crc), left - len(block)
    return crc


def shard_stamp(cache: Path, shards: Iterable[str]) -> dict[str, list[int]]:
    """Size and modification time of each shard: what a verification is valid for."""
    stamp = {}
    for name in sorted(shards):
        status = (Path(cache) / SHARD_DIR / f"{name}.u8").stat()
        stamp[name] = [status.st_size, status.st_mtime_ns]
    return stamp


def verify_cache(cache: Path | str) -> list[str]:
    """Every problem found, one line each naming the shard and the samples at fault; [] for a sound cache."""
    cache = Path(cache)
    entries = FrameCache(cache, verify=False).entries
    if not (cache / CHECKSUMS_FILE).is_file():
        return [f"{cache}: no {CHECKSUMS_FILE} (made by an older version); checksums cannot be verified"]
    expected = json.loads((cache / CHECKSUMS_FILE).read_text())
    problems = []
    for name, want in expected.items():
        path = cache / SHARD_DIR / f"{name}.u8"
        if file_crc32(path, want["bytes"]) != want["crc32"]:
            problems.append(f"{path}: checksum differs; samples at fault: "
                            f"{', '.join(damaged_samples(cache, entries, name)) or 'none found'}")
    return problems


def damaged_samples(cache: Path, entries: Sequence[Mapping], shard: str) -> list[str]:
    frames = FrameCache(cache, verify=False)
    return [entry["key"] for i, entry in enumerate(entries)
            if entry["shard"] == shard and "crc32" in entry
            and zlib.crc32(np.ascontiguousarray(frames.frames(i)).data) != entry["crc32"]]


def write_index_csv(path: Path, records: Sequence[Mapping]) -> None:
    columns = ["key", "dataset", "subject", "source", "path", "onset", "apex", "offset", "frames", "shard",
               "start", "alignment", "labels"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in records:
            s = r["sample"]
            onset, apex, offset = s["interval"] or (None, None, None)
            writer.writerow([r["key"], s["dataset"], s["subject"], s["source"], s["path"], onset, apex, offset,
                             r["count"], r["shard"], r["start"], r["alignment"]["source"],
                             json.dumps(s["labels"], sort_keys=True)])


# ---------------------------------------------------------------- reading: cache and raw alike


class AlignedFrames:
    """Aligned frames of samples: `frame_numbers(i)` says which source frames sample i has, `read(i, positions)`
    returns uint8 [T, S, S, 3] for positions into them, `clip(i, frame_positions)` samples by frame number."""

    samples: list[Sample]
    size: int

    def __len__(self) -> int:
        return len(self.samples)

    def frame_numbers(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, i: int, positions: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def read_numbers(self, i: int, numbers: Sequence[int], missing: str = "nearest") -> np.ndarray:
        return self.read(i, positions_in(self.frame_numbers(i), numbers, missing, self.samples[i].path))

    def clip(self, i: int, frame_positions: np.ndarray) -> np.ndarray:
        """Frames at (fractional) frame-number positions, e.g. from `clips.clip_positions`."""
        return gather_clip(lambda p: self.read(i, p), frame_positions, self.frame_numbers(i), self.samples[i].path)


class FrameCache(AlignedFrames):
    """A finished cache. `expect` (a settings dict, or part of one) refuses a cache made differently; `verify`
    checks the checksums when the shards changed since they were last verified."""

    def __init__(self, path: Path | str, expect: Mapping | None = None, verify: bool = True):
        self.path = Path(path)
        self.settings = read_settings(self.path)
        if expect:
            check_settings(self.path, {**self.settings, **expect}, compare=expect.keys())
        if not (self.path / INDEX_FILE).is_file():
            raise CacheIncompleteError(f"{self.path}: prepare has not finished this cache (no {INDEX_FILE}); "
                                       f"rerun `python -m common.prepare` with the same arguments to complete it")
        with open(self.path / INDEX_FILE) as handle:
            self.entries = [json.loads(line) for line in handle if line.strip()]
        root = Path(self.settings["root"])
        self.samples = [sample_from_dict(e["sample"], root) for e in self.entries]
        self.frames_settings = FrameSettings.from_dict(self.settings["frames"])
        self.size = self.frames_settings.align.size
        self._shards: dict[str, np.ndarray] = {}
        self.check_sizes()
        if verify:
            self.verify_once()

    def check_sizes(self) -> None:
        """A shard cut short (a full disk, an interrupted copy) names itself and the first sample it lost."""
        per_frame = self.size * self.size * 3
        for name, frames in shard_extents(self.entries).items():
            path = self.path / SHARD_DIR / f"{name}.u8"
            have = path.stat().st_size // per_frame if path.is_file() else 0
            if have < frames:
                lost = next(e["key"] for e in self.entries if e["shard"] == name and e["start"] + e["count"] > have)
                raise CacheCorruptError(f"{path}: holds {have} frames where the index needs {frames}; the shard is "
                                        f"cut short (first sample lost: {lost}). Copy the cache again, or rebuild "
                                        f"it with python -m common.prepare into a new folder")

    def verify_once(self) -> None:
        if not (self.path / CHECKSUMS_FILE).is_file():
            return
        stamp = shard_stamp(self.path, shard_extents(self.entries))
        marker = self.path / VERIFIED_FILE
        if marker.is_file() and json.loads(marker.read_text()) == stamp:
            return
        gigabytes = sum(size for size, _ in stamp.values()) / 1e9
        print(f"{self.path}: verifying the checksums of {len(stamp)} shards ({gigabytes:.2f} GB), once after every "
              f"change", file=sys.stderr, flush=True)
        problems = verify_cache(self.path)
        if problems:
            raise CacheCorruptError("cache checksums differ from what prepare wrote:\n  " + "\n  ".join(problems)
                                    + "\nrebuild the cache (python -m common.prepare into a new folder)")
        try:
            write_json_atomic(marker, stamp)
        except OSError:
            pass  # a read-only cache is verified on every open instead

    def __getstate__(self):
        """Loader workers re-open the memory maps; pickling a memmap would copy the whole shard."""
        return {**self.__dict__, "_shards": {}}

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            path = self.path / SHARD_DIR / f"{name}.u8"
            flat = np.memmap(path, dtype=np.uint8, mode="r")
            whole = len(flat) // (self.size * self.size * 3)
            self._shards[name] = flat[: whole * self.size * self.size * 3].reshape(whole, self.size, self.size, 3)
        return self._shards[name]

    def frame_numbers(self, i: int) -> np.ndarray:
        return np.asarray(self.entries[i]["numbers"], dtype=np.int64)

    def frames(self, i: int) -> np.ndarray:
        """All frames of sample i as a read-only memory-mapped view (no copy)."""
        entry = self.entries[i]
        return self._shard(entry["shard"])[entry["start"]: entry["start"] + entry["count"]]

    def read(self, i: int, positions: Sequence[int]) -> np.ndarray:
        return np.asarray(self.frames(i)[np.asarray(positions, dtype=np.int64)])


class RawFrames(AlignedFrames):
    """Reads and aligns on the fly with the same rules as the cache (slow: for data never prepared)."""

    def __init__(self, samples: Sequence[Sample], settings: FrameSettings = FrameSettings()):
        self.samples = list(samples)
        self.settings = settings
        self.size = settings.align.size
        self.aligner = FaceAligner(settings.align)
        self._spans: dict[int, np.ndarray] = {}
        self._alignments: dict[int, Alignment] = {}
        self._reader: tuple[Path, FrameSource] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_reader": None, "aligner": FaceAligner(self.settings.align)}

    def _open(self, i: int) -> FrameSource:
        """The last reader stays open: consecutive reads of one video are the common case."""
        sample = self.samples[i]
        if self._reader is None or self._reader[0] != sample.path:
            if self._reader is not None:
                self._reader[1].close()
            self._reader = (sample.path, open_sample(sample))
        return self._reader[1]

    def frame_numbers(self, i: int) -> np.ndarray:
        if i not in self._spans:
            self._spans[i] = span_numbers(self.samples[i], self._open(i).numbers, self.settings)
        return self._spans[i]

    def read(self, i: int, positions: Sequence[int]) -> np.ndarray:
        reader = self._open(i)
        source_positions = reader.positions_of(self.frame_numbers(i))
        if i not in self._alignments:
            self._alignments[i] = self.aligner.choose(self.samples[i].extra, len(source_positions),
                                                      lambda p: reader.read(source_positions[p]),
                                                      self.samples[i].path)
        frames = reader.read(source_positions[np.asarray(positions, dtype=np.int64)])
        return self.aligner.apply(frames, self._alignments[i])


def source_root(frames: AlignedFrames, source: Path | str) -> Path:
    """The dataset root behind `frames`: recorded by a cache, else the folder it was opened from."""
    return Path(frames.settings["root"]) if isinstance(frames, FrameCache) else Path(source)


def is_cache(path: Path | str) -> bool:
    return (Path(path) / SETTINGS_FILE).is_file()


def open_source(path: Path | str, dataset: str, task: str | None = None,
                settings: FrameSettings | None = None) -> AlignedFrames:
    """A cache folder (checked against `settings` where given) or a raw dataset root read through its parser."""
    path = Path(path)
    if is_cache(path):
        expect = {"dataset": dataset, **({"task": task} if task else {})}
        if settings is not None:
            expect["frames"] = settings.to_dict()
        return FrameCache(path, expect=expect)
    from common.data import load_samples

    return RawFrames(load_samples(dataset, path, task), settings or FrameSettings())

