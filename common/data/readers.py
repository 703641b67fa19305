"""Readers: one interface for "the frames of a sample", whatever holds them.

A reader knows its frame numbers (`numbers`), reads by position (`read`), by frame number (`read_numbers`)
and by time (`read_times`), and always returns RGB uint8 [T, H, W, 3]. Every failure names the file.

    FrameFolder   numbered images; natural order by the last number in the name, gaps allowed and reported; a
                  frame that cannot be decoded is replaced by the nearest readable one (see FrameFolder)
    VideoFile     decord, or PyAV where decord cannot open the file (or is not installed)
    ImageFile     one image, frame number 0
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from common.data.records import Sample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


class ReadError(OSError):
    """A source that cannot be read; the message names the file or folder."""


class MissingSourceError(ReadError, FileNotFoundError):
    pass


class MissingFramesError(ReadError, LookupError):
    """Frame numbers asked for that a folder does not hold."""


class DamagedFrameWarning(UserWarning):
    """A frame of a folder could not be decoded; a neighbour stands in for it."""


class FrameSource:
    """Shared mechanics; subclasses fill `path`, `numbers`, `fps` and `_read_positions`."""

    path: Path
    numbers: np.ndarray
    fps: float | None = None

    def __len__(self) -> int:
        return len(self.numbers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        pass

    def read(self, positions: Sequence[int]) -> np.ndarray:
        """Frames at these positions (0..len-1), in the order asked, repeats allowed."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        bad = positions[(positions < 0) | (positions >= len(self))]
        if bad.size:
            raise IndexError(f"{self.path}: frame positions {bad.tolist()} outside 0..{len(self) - 1}")
        unique, inverse = np.unique(positions, return_inverse=True)
        return self._read_positions(unique)[inverse]

    def read_numbers(self, numbers: Sequence[int], missing: str = "error") -> np.ndarray:
        return self.read(self.positions_of(numbers, missing))

    def read_times(self, seconds: Sequence[float], missing: str = "nearest") -> np.ndarray:
        """Time 0 is the first frame; needs `fps` (from the container, or given for a folder)."""
        if not self.fps:
            raise ReadError(f"{self.path}: frame rate unknown, cannot read by time (pass fps=...)")
        offsets = np.rint(np.asarray(seconds, dtype=np.float64) * self.fps).astype(np.int64)
        return self.read_numbers(self.numbers[0] + offsets, missing)

    def positions_of(self, numbers: Sequence[int], missing: str = "error") -> np.ndarray:
        """Positions of frame numbers; `missing="nearest"` takes the closest existing frame for a gap."""
        return positions_in(self.numbers, numbers, missing, where=self.path)

    def _read_positions(self, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def positions_in(available: np.ndarray, numbers: Sequence[int], missing: str, where: object) -> np.ndarray:
    """Map frame numbers onto positions in the sorted `available` numbers."""
    if missing not in ("error", "nearest"):
        raise ValueError(f"missing must be 'error' or 'nearest', got {missing!r}")
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    right = np.clip(np.searchsorted(available, numbers), 0, len(available) - 1)
    exact = available[right] == numbers
    if exact.all():
        return right
    if missing == "error":
        absent = numbers[~exact].tolist()
        raise MissingFramesError(f"{where}: frame number(s) {compact_ranges(absent)} not present "
                                 f"(holds {available[0]}..{available[-1]} with {gap_count(available)} missing)")
    left = np.clip(right - 1, 0, len(available) - 1)
    closer_left = np.abs(available[left] - numbers) <= np.abs(available[right] - numbers)
    return np.where(exact, right, np.where(closer_left, left, right))


def gap_count(numbers: np.ndarray) -> int:
    return int(numbers[-1] - numbers[0] + 1 - len(numbers)) if len(numbers) else 0


def missing_numbers(numbers: np.ndarray) -> list[int]:
    """Frame numbers absent between the first and last present one."""
    if len(numbers) < 2:
        return []
    full = np.arange(numbers[0], numbers[-1] + 1)
    return np.setdiff1d(full, numbers, assume_unique=True).tolist()


def compact_ranges(values: Iterable[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9': gap reports stay one line for long runs."""
    values = sorted(values)
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


# ---------------------------------------------------------------- images

JPEG_TAIL = 1024  # bytes at a JPEG's end searched for its end-of-image marker


def decode_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]; grayscale and palette images are expanded, alpha dropped."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise MissingSourceError(f"{path}: image file not found") from None
    except OSError as error:
        raise ReadError(f"{path}: cannot read image file ({error})") from None
    if data.size == 0:
        raise ReadError(f"{path}: image file is empty")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ReadError(f"{path}: cannot decode image ({data.size} bytes)")
    if path.suffix.lower() in (".jpg", ".jpeg") and not _has_jpeg_end(data[-JPEG_TAIL:].tobytes()):
        raise ReadError(f"{path}: JPEG is truncated (no end-of-image marker)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_IMAGE_MAGIC = (b"\xff\xd8", b"\x89PNG", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def looks_readable(path: Path) -> bool:
    """A cheap look at an image file without decoding it: not empty, an image format's first bytes, and a JPEG's
    end-of-image marker. What `common.inspect` counts as damaged; decoding may still find more."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
            if not head.startswith(_IMAGE_MAGIC):
                return False
            if head.startswith(b"\xff\xd8"):
                handle.seek(0, 2)
                handle.seek(max(0, handle.tell() - JPEG_TAIL))
                return _has_jpeg_end(handle.read())
            return True
    except OSError:
        return False


def _has_jpeg_end(tail: bytes) -> bool:
    """Some OpenCV builds decode a truncated JPEG into a half-grey picture without complaint; the end marker
    tells. Some writers pad after the marker, hence the search over the tail, not the last two bytes."""
    return b"\xff\xd9" in tail[-JPEG_TAIL:]


class ImageFile(FrameSource):
    def __init__(self, path: Path | str, fps: float | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingSourceError(f"{self.path}: image file not found")
        self.numbers = np.zeros(1, dtype=np.int64)
        self.fps = fps
        self._image: np.ndarray | None = None

    def _read_positions(self, positions: np.ndarray) -> np.ndarray:
        """Decoded once: alignment looks at the image before it is warped."""
        if self._image is None:
            self._image = decode_image(self.path)
        return self._image[None]


# ---------------------------------------------------------------- frame folders


def frame_number(name: str) -> int | None:
    """The last number in a file's stem: img46 -> 46, reg_img46 -> 46, 006_05562 -> 5562."""
    match = _LAST_NUMBER.search(Path(name).stem)
    return None if match is None else int(match.group(1))


def list_frames(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[np.ndarray, list[Path]]:
    """Numbered image files of a folder in natural order; an unnumbered image or a repeated number is an error."""
    if not folder.exists():
        raise MissingSourceError(f"{folder}: frame folder not found")
    if not folder.is_dir():
        raise ReadError(f"{folder}: expected a folder of frames, found a file")
    found: dict[int, Path] = {}
    for entry in folder.iterdir():
        if entry.suffix.lower() not in extensions or not entry.is_file():
            continue
        number = frame_number(entry.name)
        if number is None:
            raise ReadError(f"{entry}: image in a frame folder has no frame number in its name")
        if number in found:
            raise ReadError(f"{folder}: frame number {number} appears twice ({found[number].name}, {entry.name})")
        found[number] = entry
    if not found:
        raise ReadError(f"{folder}: no image frames ({', '.join(extensions)}) in folder")
    numbers = np.array(sorted(found), dtype=np.int64)
    return numbers, [found[n] for n in numbers]


class FrameFolder(FrameSource):
    """A folder of numbered images. `gaps` lists the missing frame numbers between first and last.

    Damaged frames: a frame file that cannot be decoded (CAS(ME)³ Part A ships some; its `exception/` lists them)
    is replaced by the nearest frame of the folder that decodes, the earlier one of two as near, so a clip or a
    long video is still read whole. Each replacement is named once in a DamagedFrameWarning and kept in
    `stand_ins` ({damaged frame number: number read instead}); `damaged="error"` raises instead.
    """

    def __init__(self, path: Path | str, fps: float | None = None, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 damaged: str = "nearest"):
        if damaged not in ("nearest", "error"):
            raise ValueError(f"damaged must be 'nearest' or 'error', got {damaged!r}")
        self.path = Path(path)
        self.numbers, self.files = list_frames(self.path, tuple(e.lower() for e in extensions))
        self.fps, self.damaged = fps, damaged
        self.stand_ins: dict[int, int] = {}
        self._undecodable: set[int] = set()

    @property
    def gaps(self) -> list[int]:
        return missing_numbers(self.numbers)

    def describe_gaps(self) -> str:
        gaps = self.gaps
        return f"{self.path}: no gaps" if not gaps else f"{self.path}: frames {compact_ranges(gaps)} missing"

    def _read_positions(self, positions: np.ndarray) -> np.ndarray:
        return stack_frames([self._decode(int(p)) for p in positions], self.path)

    def _decode(self, position: int) -> np.ndarray:
        if position not in self._undecodable:
            try:
                return decode_image(self.files[position])
            except MissingSourceError:
                raise
            except ReadError:
                if self.damaged == "error":
                    raise
                self._undecodable.add(position)
        return self._stand_in(position)

    def _stand_in(self, position: int) -> np.ndarray:
        for candidate in sorted(range(len(self)), key=lambda p: (abs(p - position), p)):
            if candidate in self._undecodable:
                continue
            try:
                image = decode_image(self.files[candidate])
            except ReadError:
                self._undecodable.add(candidate)
                continue
            number, used = int(self.numbers[position]), int(self.numbers[candidate])
            if number not in self.stand_ins:
                warnings.warn(DamagedFrameWarning(f"{self.files[position]}: cannot be decoded; frame {used} stands "
                                                  f"in for it"), stacklevel=2)
            self.stand_ins[number] = used
            return image
        raise ReadError(f"{self.path}: no frame of the folder can be decoded")


def stack_frames(frames: list[np.ndarray], where: Path) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise ReadError(f"{where}: frames differ in size {sorted(shapes)}")
    return np.stack(frames)


# ---------------------------------------------------------------- videos


class VideoFile(FrameSource):
    """Frames numbered 0..N-1 in decode order. backend: 'auto' (decord, then PyAV), 'decord' or 'pyav'.
    Where decord opens a file but fails to decode it, the reader switches to PyAV for good."""

    def __init__(self, path: Path | str, fps: float | None = None, backend: str = "auto"):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingSourceError(f"{self.path}: video file not found")
        if self.path.stat().st_size == 0:
            raise ReadError(f"{self.path}: video file is empty")
        self._backend = _open_video(self.path, backend)
        self.backend, self._requested = self._backend.name, backend
        self.numbers = np.arange(self._backend.n_frames, dtype=np.int64)
        if len(self.numbers) == 0:
            raise ReadError(f"{self.path}: video has no frames")
        self.fps = fps or self._backend.fps

    def _read_positions(self, positions: np.ndarray) -> np.ndarray:
        try:
            return self._backend.read(positions)
        except Exception as error:  # decoders raise their own types; the caller needs the file name
            if self.backend != "decord" or self._requested == "decord":
                raise _decode_error(self.path, positions, error) from error
            first_error = error
        # decord opens some files it then cannot copy out (rows padded at widths like 48 px): PyAV can
        self._backend.close()
        self._backend, self.backend = _PyAVVideo(self.path), "pyav"
        try:
            return self._backend.read(positions)
        except Exception as error:
            raise _decode_error(self.path, positions, error, first_error) from error

    def close(self) -> None:
        self._backend.close()


def _decode_error(path: Path, positions: np.ndarray, *errors: Exception) -> ReadError:
    reasons = "; ".join(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}" for e in errors)
    return ReadError(f"{path}: cannot decode frames {compact_ranges(positions.tolist())} ({reasons})")


def _open_video(path: Path, backend: str):
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"video backend must be 'auto', 'decord' or 'pyav', got {backend!r}")
    errors = []
    if backend in ("auto", "decord"):
        try:
            return _DecordVideo(path)
        except Exception as error:  # decord raises DECORDError or RuntimeError; PyAV may still cope
            errors.append(f"decord: {error}".splitlines()[0])
            if backend == "decord":
                raise ReadError(f"{path}: cannot open video ({errors[0]})") from error
    try:
        return _PyAVVideo(path)
    except Exception as error:
        errors.append(f"pyav: {error}".splitlines()[0])
        raise ReadError(f"{path}: cannot open video ({'; '.join(errors)})") from error


class _DecordVideo:
    name = "decord"

    def __init__(self, path: Path):
        import decord

        self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        self.n_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps()) or None

    def read(self, positions: np.ndarray) -> np.ndarray:
        return self._reader.get_batch(positions.tolist()).asnumpy()

    def close(self) -> None:
        self._reader = None


class _PyAVVideo:
    """Random access by seeking to the keyframe before the first frame wanted, then decoding forward."""

    name = "pyav"

    def __init__(self, path: Path):
        import av

        self.path = path
        self._container = av.open(str(path))
        if not self._container.streams.video:
            raise ReadError(f"{path}: no video stream")
        stream = self._container.streams.video[0]
        self.fps = float(stream.average_rate) if stream.average_rate else None
        self._time_base = stream.time_base
        self._start = stream.start_time or 0
        self.n_frames = stream.frames or self._count_packets()

    def _count_packets(self) -> int:
        """Some containers leave the frame count empty; counting packets avoids decoding."""
        stream = self._container.streams.video[0]
        count = sum(1 for packet in self._container.demux(stream) if packet.size)
        self._container.seek(0)
        return count

    def _index_of(self, frame) -> int | None:
        if frame.pts is None or not self.fps:
            return None
        return int(round(float((frame.pts - self._start) * self._time_base) * self.fps))

    def read(self, positions: np.ndarray) -> np.ndarray:
        wanted = {int(p): None for p in positions}
        stream = self._container.streams.video[0]
        first = int(positions.min())
        self._seek_before(first)
        counter = None
        for frame in self._container.decode(stream):
            index = self._index_of(frame)
            if index is None:  # no timestamps: count from a decode that started at frame 0
                counter = 0 if counter is None else counter + 1
                index = counter
            if index in wanted:
                wanted[index] = frame.to_ndarray(format="rgb24")
            if index >= positions.max():
                break
        absent = [p for p, f in wanted.items() if f is None]
        if absent:
            raise ReadError(f"{self.path}: frames {compact_ranges(absent)} could not be decoded")
        return np.stack([wanted[int(p)] for p in positions])

    def _seek_before(self, position: int) -> None:
        stream = self._container.streams.video[0]
        if position == 0 or not self.fps:
            self._container.seek(0)
            return
        target = int(self._start + position / self.fps / self._time_base)
        self._container.seek(target, stream=stream, backward=True, any_frame=False)

    def close(self) -> None:
        self._container.close()


# ---------------------------------------------------------------- opening by kind

READERS: dict[str, Callable[..., FrameSource]] = {
    "frames": FrameFolder,
    "video": VideoFile,
    "image": ImageFile,
}


def register_reader(kind: str, factory: Callable[..., FrameSource]) -> None:
    """A new source kind (e.g. images packed in a CSV); factory(path, fps=None) -> FrameSource."""
    READERS[kind] = factory


def open_frames(kind: str, path: Path | str, fps: float | None = None) -> FrameSource:
    try:
        factory = READERS[kind]
    except KeyError:
        raise ValueError(f"{path}: unknown source kind {kind!r}; known: {', '.join(READERS)}") from None
    return factory(path, fps=fps)


def open_sample(sample: Sample) -> FrameSource:
    return open_frames(sample.source, sample.path, fps=sample.fps)
