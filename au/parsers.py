"""Parsers of the action-unit datasets as distributed, registered for `common.prepare` and the data module.

Each sample is one labelled frame; labels keep the sheets' codes by AU number: labels["au_occ"] {AU: 0, 1 or 9}
(9 = not coded) and labels["au_int"] {AU: 0-5, or 9}. The data module turns them into vectors and masks.

    bp4d   AUCoding/AU_OCC/<subject>_<task>.csv: a header row whose first column (named "0") is the frame number
           and whose other columns are AU numbers; 0/1, 9 = unknown. Frames <subject>/<task>/<frame>.jpg under
           BP4D-training/ (or the root). Intensity, where given: AUCoding/AU_INT/AU06/<subject>_<task>_AU06.csv,
           lines `frame,intensity` without a header, 9 = unknown; a frame without an intensity line has none.
           Images without a label row are not samples.
    disfa  ActionUnit_Labels/SN001/SN001_au1.txt ... one file per AU, lines `frame,intensity` (0-5), frames
           counted from 1; the left-camera video Videos_LeftCamera/LeftVideoSN001_comp.avi holds label frame k at
           decode index k - 1. All of a subject's label files and its video must have the same number of frames.

A row that cannot be read, a missing image or a label file that disagrees with its video stops the parser with
the files and the line at fault.
"""
from __future__ import annotations

import csv
from pathlib import Path

from common.data import register_dataset
from common.data.readers import open_frames
from common.data.records import Interval, Sample
from common.data.sheets import AnnotationError, MissingImageError, integer, row_error

UNKNOWN = 9
DISFA_AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)


# ---------------------------------------------------------------- BP4D


@register_dataset("bp4d", task="au")
def bp4d(root: Path) -> list[Sample]:
    sheets = sorted((root / "AUCoding" / "AU_OCC").glob("*.csv"))
    if not sheets:
        raise FileNotFoundError(f"{root}: no occurrence sheets in AUCoding/AU_OCC/ (<subject>_<task>.csv)")
    images = root / "BP4D-training" if (root / "BP4D-training").is_dir() else root
    samples = []
    for sheet in sheets:
        subject, _, task = sheet.stem.partition("_")
        if not task:
            raise AnnotationError(f"{sheet}: name is not <subject>_<task>.csv")
        intensity = bp4d_intensity(root, subject, task)
        for line, frame, codes in bp4d_rows(sheet):
            image = images / subject / task / f"{frame}.jpg"
            if not image.is_file():
                raise MissingImageError(f"{sheet}, line {line}: image {image} not found")
            samples.append(Sample("bp4d", subject, "image", image,
                                  labels={"au_occ": codes, "au_int": {au: v[frame] for au, v in intensity.items()
                                                                      if frame in v}},
                                  extra={"sequence": task, "frame": frame, "id": f"{subject}/{task}/{frame}"}))
    return samples


def bp4d_rows(sheet: Path):
    """(line, frame number, {AU: code}) per data row of an occurrence sheet."""
    with open(sheet, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or header[0].strip() != "0":
            raise row_error(sheet, 1, "expected a header whose first column is '0' (the frame number)")
        aus = [integer(cell, sheet, 1, "AU column") for cell in header[1:]]
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            line = reader.line_num
            if len(cells) != len(header):
                raise row_error(sheet, line, f"{len(cells)} cells where the header has {len(header)}")
            values = [integer(c, sheet, line, f"AU{au}") for au, c in zip(aus, cells[1:])]
            bad = [au for au, v in zip(aus, values) if v not in (0, 1, UNKNOWN)]
            if bad:
                raise row_error(sheet, line, f"occurrence codes must be 0, 1 or 9 (AU {bad[0]})")
            yield line, integer(cells[0], sheet, line, "frame"), dict(zip(aus, values))


def bp4d_intensity(root: Path, subject: str, task: str) -> dict[int, dict[int, int]]:
    """{AU: {frame: intensity}} from AUCoding/AU_INT/AUxx/<subject>_<task>_AUxx.csv where present."""
    found = {}
    for path in sorted((root / "AUCoding" / "AU_INT").glob(f"AU*/{subject}_{task}_AU*.csv")):
        au = integer(path.stem.rsplit("_AU", 1)[1], path, 1, "AU in the file name")
        values = {}
        for line, (frame, value) in enumerate(pairs(path), start=1):
            if value not in range(6) and value != UNKNOWN:
                raise row_error(path, line, f"intensity {value} is not 0-5 or 9")
            values[frame] = value
        found[au] = values
    return found


def pairs(path: Path) -> list[tuple[int, int]]:
    """`a,b` integer lines (blank lines skipped)."""
    out = []
    for line, text in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not text.strip():
            continue
        cells = text.split(",")
        if len(cells) != 2:
            raise row_error(path, line, f"expected 'frame,intensity', got {text.strip()!r}")
        out.append((integer(cells[0], path, line, "frame"), integer(cells[1], path, line, "intensity")))
    return out


# ---------------------------------------------------------------- DISFA


@register_dataset("disfa", task="au")
def disfa(root: Path) -> list[Sample]:
    subjects = sorted(p for p in (root / "ActionUnit_Labels").glob("SN*") if p.is_dir())
    if not subjects:
        raise FileNotFoundError(f"{root}: no subject folders in ActionUnit_Labels/ (SN001, ...)")
    return [sample for folder in subjects for sample in disfa_subject(root, folder)]


def disfa_subject(root: Path, folder: Path) -> list[Sample]:
    subject = folder.name
    labels = {au: disfa_labels(folder / f"{subject}_au{au}.txt") for au in DISFA_AUS}
    lengths = {au: len(v) for au, v in labels.items()}
    if len(set(lengths.values())) != 1:
        raise AnnotationError(f"{folder}: label files of {subject} differ in length: "
                              + ", ".join(f"au{au} {n}" for au, n in lengths.items()))
    video = root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi"
    if not video.is_file():
        raise MissingImageError(f"{video}: left-camera video of {subject} not found")
    with open_frames("video", video) as source:
        frames, fps = len(source), source.fps
    count = lengths[DISFA_AUS[0]]
    if frames != count:
        raise AnnotationError(f"{folder / f'{subject}_au{DISFA_AUS[0]}.txt'} labels {count} frames but {video} "
                              f"holds {frames}")
    return [Sample("disfa", subject, "video", video, Interval(k - 1, k - 1, k - 1),
                   labels={"au_int": {au: labels[au][k] for au in DISFA_AUS}},
                   extra={"label_frame": k, "fps": fps, "id": f"{subject}/{k}"})
            for k in range(1, count + 1)]


def disfa_labels(path: Path) -> dict[int, int]:
    """{label frame: intensity} of one AU file; frames must run 1, 2, ... without gaps."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DISFA label file not found")
    values = {}
    for line, (frame, value) in enumerate(pairs(path), start=1):
        if frame != len(values) + 1:
            raise row_error(path, line, f"frame {frame} where {len(values) + 1} was expected (frames count from 1)")
        if value not in range(6):
            raise row_error(path, line, f"intensity {value} is not 0-5")
        values[frame] = value
    return values
