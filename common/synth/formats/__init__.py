"""Writers of tiny dataset trees in the real on-disk formats, with synthetic faces for pixels.

Each writer takes an output root and a small spec (subjects, samples per subject, seed, frame size), writes
files named and laid out as the real dataset, annotation sheets with the real quirks, and returns a `Written`
whose `records` are what a correct loader must find: one `Expected` per sample, with the quirks resolved by
the rule stated in the writer (an apex of "/" or -1 is None, a CAS(ME)² offset of 0 is the apex, fractional
SAMM frames round half up). The loaders of the task issues are tested against these trees end to end.

Where the real public sheet exists (CAS(ME)³ Part A, CAS(ME)², SAMM long videos) the writer can take it:
the chosen rows are copied cell for cell (types, text numbers, formulas, free-text rows included) and frames
are generated for exactly those rows. `real_annotations()` finds the folder of public sheets.

    emotion:   write_fer2013, write_ferplus, write_rafdb, write_affectnet, write_affectnet_npy
    microexp:  write_casme2, write_samm, write_smic, write_casme3
    au:        write_bp4d, write_disfa
    spotting:  write_casme2_lv, write_samm_lv, write_casme3_lv
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np

from common.data.records import Interval
from common.synth import AUS, emotion_aus, render_face

ANNOTATIONS_ENV = "FACEX_ANNOTATIONS"
_REPO = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Expected:
    """What a loader should produce for one sample.

    subject: as the dataset's files spell it (sheet value or folder name, e.g. 'sub01', '006', 's1', 'spNO.1').
    path: the frame folder, video or image the sample reads. interval: in the reader's frame numbers (number
    in the file name; 0-based index for a video), None where the sample has none or the sheet row is unusable
    (then `problems` says why). labels: the sheet's raw values ('emotion': 'happiness', 'aus': '4+7', ...).
    row: 0-based data row in the sheet (first row after the header), for messages that name the row.
    """

    dataset: str
    subject: str
    source: str
    path: Path
    interval: Interval | None = None
    labels: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    row: int | None = None
    problems: tuple[str, ...] = ()


@dataclass
class Written:
    root: Path
    records: list[Expected]
    sheet: Path | None = None
    notes: list[str] = field(default_factory=list)

    def by_subject(self) -> dict[str, list[Expected]]:
        out: dict[str, list[Expected]] = {}
        for record in self.records:
            out.setdefault(record.subject, []).append(record)
        return out


def real_annotations() -> Path | None:
    """The folder of public annotation sheets: $FACEX_ANNOTATIONS, else ../shared/data/annotations beside
    the repository (where the project keeps them); None where neither exists."""
    for candidate in (os.environ.get(ANNOTATIONS_ENV), _REPO.parent / "shared" / "data" / "annotations"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


# ---------------------------------------------------------------- pixels


def rng_of(*keys: int) -> np.random.Generator:
    return np.random.default_rng([abs(int(k)) for k in keys])


def encode(rgb: np.ndarray, ext: str = ".jpg", gray: bool = False) -> bytes:
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if gray else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(ext, image, params)
    if not ok:
        raise RuntimeError(f"cannot encode a {ext} image")
    return data.tobytes()


def write_image(path: Path, rgb: np.ndarray, gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(rgb, path.suffix.lower(), gray))


def parse_aus(text: Any) -> list[int]:
    """AU numbers in a FACS code string: '4(B/C)+R7C+ref(10)' -> [4, 7, 10]; keeps only AUs the face renders."""
    numbers = [int(n) for n in re.findall(r"\d+", str(text))]
    return [n for n in dict.fromkeys(numbers) if n in AUS]


_EMOTION_NAMES = {"happy": 1, "happiness": 1, "positive": 1, "sad": 2, "sadness": 2, "surprise": 3, "fear": 4,
                  "disgust": 5, "repression": 5, "negative": 5, "anger": 6, "contempt": 7}


def expression_aus(aus_text: Any, emotion: Any, seed: int, peak: float) -> dict[int, float]:
    """Activations at the apex: the coded AUs where the renderer has them, else the emotion's prototype."""
    coded = parse_aus(aus_text)
    if coded:
        return {au: peak for au in coded}
    label = _EMOTION_NAMES.get(str(emotion).strip().lower(), 1)
    return emotion_aus(label, peak, rng_of(seed))


def pulse(number: float, interval: Interval) -> float:
    """Activation at a frame: 0 outside, rising to 1 at the apex (the middle where none) and falling back."""
    onset, offset = interval.onset, interval.offset
    if not onset <= number <= offset:
        return 0.0
    apex = interval.apex_or_middle
    if number <= apex:
        t = (number - onset) / max(apex - onset, 1)
    else:
        t = (offset - number) / max(offset - apex, 1)
    return float(math.sin(0.5 * math.pi * min(max(t, 0.0), 1.0)) ** 2)


class FrameRenderer:
    """Frames of one recording: fixed camera, activations from the events covering a frame. Renders are cached
    by quantised activation, so a long video of mostly neutral frames costs a handful of renders."""

    def __init__(self, subject: int, seed: int, size: int, events: Sequence[tuple[Interval, Mapping[int, float]]],
                 ext: str = ".jpg", gray: bool = False, levels: int = 24):
        self.subject, self.seed, self.size = subject, seed, size
        self.events, self.ext, self.gray, self.levels = list(events), ext, gray, levels
        self._cache: dict[tuple[int, int], bytes] = {}

    def activation(self, number: int) -> tuple[int, int]:
        """(event index, quantised level) of the strongest event at a frame; (-1, 0) when neutral."""
        best = (-1, 0)
        for i, (interval, _) in enumerate(self.events):
            level = round(pulse(number, interval) * self.levels)
            if level > best[1]:
                best = (i, level)
        return best

    def image(self, number: int) -> np.ndarray:
        event, level = self.activation(number)
        aus = {} if event < 0 else {au: v * level / self.levels for au, v in self.events[event][1].items()}
        return render_face(aus, self.subject, size=self.size, seed=self.seed)

    def encoded(self, number: int) -> bytes:
        key = self.activation(number)
        if key not in self._cache:
            self._cache[key] = encode(self.image(number), self.ext, self.gray)
        return self._cache[key]

    def write(self, folder: Path, numbers: Iterable[int], name: Callable[[int], str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for number in numbers:
            (folder / name(number)).write_bytes(self.encoded(number))


def write_clip_frames(folder: Path, frames: np.ndarray, numbers: Sequence[int], name: Callable[[int], str],
                      gray: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for frame, number in zip(frames, numbers):
        write_image(folder / name(number), frame, gray)


def write_avi(path: Path, frames: np.ndarray, fps: float) -> None:
    """Motion-JPEG AVI: OpenCV writes it without FFmpeg, and decord and PyAV both read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot open an MJPG writer")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


# ---------------------------------------------------------------- sheets


def write_xlsx(path: Path, sheets: Mapping[str, Sequence[Sequence[Any]]]) -> None:
    """Cells exactly as given: None stays empty, '=...' strings become formulas, text numbers stay text."""
    from openpyxl import Workbook

    path.parent.mkdir(parents=True, exist_ok=True)
    book = Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(list(row))
    book.save(path)


def read_sheet_rows(path: Path, sheet: str) -> list[list[Any]]:
    """Cell values of a real sheet as pandas sees them (a formula gives its saved result), trailing empty rows
    dropped. The saved result rather than the formula: a copied formula would point at the wrong row and
    have no cached value, which pandas reads as NaN."""
    from openpyxl import load_workbook

    book = load_workbook(path, read_only=True, data_only=True)
    if sheet not in book.sheetnames:
        raise ValueError(f"{path}: no sheet {sheet!r} (sheets: {book.sheetnames})")
    rows = [list(row) for row in book[sheet].iter_rows(values_only=True)]
    book.close()
    while rows and all(v is None for v in rows[-1]):
        rows.pop()
    return rows


def frame_cell(value: Any) -> float | None:
    """A frame-number cell as a number: text digits and floats accepted, blanks and '/' are None."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        return None


def round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def subject_ids(count: int, first: int = 1) -> list[int]:
    if count < 1:
        raise ValueError(f"need at least one subject, got {count}")
    return list(range(first, first + count))


def check_rows(rows: Sequence[int], available: int, sheet: Path) -> list[int]:
    bad = [r for r in rows if not 0 <= r < available]
    if bad:
        raise ValueError(f"{sheet}: rows {bad} do not exist (data rows 0..{available - 1})")
    return list(rows)

