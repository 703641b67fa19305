"""Parsers of the micro-expression datasets as distributed, registered for `common.prepare` and the data module.

Each sample keeps the dataset's own emotion word (lower case) in labels["emotion"]; class schemes in
common/labels.yaml turn words into classes. Frame numbers are the numbers in the frame file names.

    casme2   CASME2-coding-*.xlsx (Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame, Estimated Emotion);
             frames CASME2_RAW_selected/sub01/EP02_01f/img46.jpg, or the Cropped/ release where the raw one is
             absent. Subject cells are numbers (1 -> sub01). An ApexFrame of "/" is no apex. 200 fps.
    samm     SAMM_Micro_FACS_Codes*.xlsx, free-text rows above the header (found by its columns); frames
             SAMM/006/006_1_2/006_05562.jpg. Subject cells are numbers (6 -> 006). An Apex Frame of -1 is no
             apex. 200 fps.
    smic     no sheet: HS/s1/micro/{negative,positive,surprise}/s1_ne_01/*.bmp; the label is the folder, the
             interval its first..last frame, no apex. Subjects as the folders spell them (s1); MEGC lists spell
             them s01 (extra["megc_subject"]). 100 fps.
    casme3   CAS(ME)³ Part A: cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx (sheet `label`, numbers stored as text),
             or v1's cas(me)3_part_A_ME_label_JpgIndex_v1.xls (sheet `Sheet1`) or an .xlsx re-save of either,
             found in the root, annotation/ or annotation/partA/ under any case; frames
             data/spNO.1/a/color/175.jpg, the subject folder matched case-insensitively (spNO and spNo both
             occur). A Filename repeats within a subject (several expressions in one video): each row is its own
             sample. Rows whose apex lies outside the interval, or whose offset precedes the onset (offset 0 =
             not coded), are left out and counted. 30 fps.

A sheet row that cannot be read (a non-numeric frame, a missing folder) stops the parser with the file, sheet and
row; rows left out by a rule above are counted in the log.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path


from common.data import register_dataset, report_left_out
from common.data.readers import list_frames
from common.data.records import Interval, Sample
from common.data.sheets import MissingImageError, excel_rows, find_named, sheet_error, sheet_names

CASME2_COLUMNS = ("Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion")
SAMM_COLUMNS = ("Subject", "Filename", "Onset Frame", "Apex Frame", "Offset Frame", "Estimated Emotion")
CASME3_COLUMNS = ("Subject", "Filename", "Onset", "Apex", "Offset", "emotion")
CASME3_SHEETS = ("cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", "cas(me)3_part_A_ME_label_JpgIndex_v2.xls",
                 "cas(me)3_part_A_ME_label_JpgIndex_v1.xlsx", "cas(me)3_part_A_ME_label_JpgIndex_v1.xls")
CASME3_FOLDERS = ("", "annotation", "annotation/partA")
SMIC_CLASSES = ("negative", "positive", "surprise")
FPS = {"casme2": 200.0, "samm": 200.0, "smic": 100.0, "casme3": 30.0}


def one_sheet(root: Path, pattern: str, what: str) -> Path:
    found = sorted(root.glob(pattern))
    if not found:
        raise FileNotFoundError(f"{root}: {what} not found (looked for {pattern})")
    return found[0]


def frame_value(value, path: Path, sheet: str, row: int, column: str, missing=()) -> int | None:
    """A frame cell as an int (numbers stored as text too); values in `missing` mean "not annotated"."""
    text = "" if value is None else str(value).strip()
    if text in missing:
        return None
    try:
        number = float(text)
    except ValueError:
        raise sheet_error(path, sheet, row, f"{column} {value!r} is not a frame number") from None
    if number != int(number):
        raise sheet_error(path, sheet, row, f"{column} {value!r} is not a whole frame number")
    return None if int(number) in missing else int(number)


def interval_of(onset: int, apex: int | None, offset: int, path: Path, sheet: str, row: int) -> Interval:
    try:
        return Interval(onset, apex, offset)
    except ValueError as error:
        raise sheet_error(path, sheet, row, str(error)) from None


def frame_folder(folder: Path, path: Path, sheet: str, row: int) -> Path:
    if not folder.is_dir():
        raise MissingImageError(f"{path}, sheet {sheet!r}, row {row}: frame folder {folder} not found")
    return folder


def subject_number(value, path: Path, sheet: str, row: int) -> int:
    text = str(value).strip().lower().removeprefix("sub")
    try:
        return int(float(text))
    except ValueError:
        raise sheet_error(path, sheet, row, f"Subject {value!r} is not a subject number") from None


def word(value) -> str:
    return "" if value is None else str(value).strip().lower()


# ---------------------------------------------------------------- CASME II and SAMM: coding sheets


@dataclass(frozen=True)
class CodingSheet:
    """How a FACS coding sheet names its columns, spells its subjects and marks a missing apex."""

    dataset: str
    columns: tuple[str, str, str, str, str, str]  # subject, filename, onset, apex, offset, emotion
    subject_format: str
    no_apex: tuple


CASME2 = CodingSheet("casme2", CASME2_COLUMNS, "sub{:02d}", ("/", ""))
SAMM = CodingSheet("samm", SAMM_COLUMNS, "{:03d}", (-1, "-1", ""))


def coded_samples(spec: CodingSheet, sheet: Path, frames: Path) -> list[Sample]:
    """One sample per sheet row; frames in <frames>/<subject>/<Filename>."""
    subject_column, file_column, onset_column, apex_column, offset_column, emotion_column = spec.columns
    name, rows = excel_rows(sheet, spec.columns)
    samples = []
    for row, cells in rows:
        subject = spec.subject_format.format(subject_number(cells[subject_column], sheet, name, row))
        video = str(cells[file_column]).strip()
        onset, offset = (frame_value(cells[c], sheet, name, row, c) for c in (onset_column, offset_column))
        apex = frame_value(cells[apex_column], sheet, name, row, apex_column, missing=spec.no_apex)
        folder = frame_folder(frames / subject / video, sheet, name, row)
        aus = cells.get("Action Units")
        samples.append(Sample(spec.dataset, subject, "frames", folder, interval_of(onset, apex, offset, sheet, name, row),
                              labels={"emotion": word(cells[emotion_column]), "aus": "" if aus is None else str(aus)},
                              extra={"fps": FPS[spec.dataset], "id": f"{subject}/{video}"}))
    return samples


@register_dataset("casme2", task="microexp")
def casme2(root: Path) -> list[Sample]:
    sheet = one_sheet(root, "CASME2-coding-*.xlsx", "CASME II coding sheet")
    frames = root / "CASME2_RAW_selected"
    if not frames.is_dir():
        frames = root / "Cropped"
    if not frames.is_dir():
        raise FileNotFoundError(f"{root}: neither CASME2_RAW_selected/ nor Cropped/ holds the frames")
    return coded_samples(CASME2, sheet, frames)


@register_dataset("samm", task="microexp")
def samm(root: Path) -> list[Sample]:
    sheet = one_sheet(root, "SAMM_Micro_FACS_Codes*.xlsx", "SAMM FACS codes sheet")
    return coded_samples(SAMM, sheet, root / "SAMM")


# ---------------------------------------------------------------- SMIC-HS


@register_dataset("smic", task="microexp")
def smic(root: Path) -> list[Sample]:
    base = root / "HS" if (root / "HS").is_dir() else root
    subjects = sorted((p for p in base.glob("s*") if p.is_dir() and p.name[1:].isdigit()), key=lambda p: int(p.name[1:]))
    if not subjects:
        raise FileNotFoundError(f"{root}: no SMIC-HS subject folders (HS/s1, HS/s2, ...)")
    samples = []
    for subject in subjects:
        for label in SMIC_CLASSES:
            for folder in sorted((subject / "micro" / label).glob("*")):
                if folder.is_dir():
                    samples.append(smic_sample(subject.name, label, folder))
    return samples


def smic_sample(subject: str, label: str, folder: Path) -> Sample:
    numbers, _ = list_frames(folder)
    megc_subject = f"s{int(subject[1:]):02d}"
    return Sample("smic", subject, "frames", folder, Interval(int(numbers[0]), None, int(numbers[-1])),
                  labels={"emotion": label},
                  extra={"fps": FPS["smic"], "id": f"{subject}/{folder.name}", "megc_subject": megc_subject,
                         "megc_video": folder.name.replace(subject + "_", megc_subject + "_", 1)})


# ---------------------------------------------------------------- CAS(ME)³ Part A


@register_dataset("casme3", task="microexp")
def casme3(root: Path) -> list[Sample]:
    sheet = find_named(root, CASME3_SHEETS, CASME3_FOLDERS, "CAS(ME)³ Part A micro-expression label sheet")
    folders = {p.name.lower(): p for p in (root / "data").glob("*") if p.is_dir()}
    samples, left_out = [], Counter()
    name, rows = excel_rows(sheet, CASME3_COLUMNS, sheet="label" if "label" in sheet_names(sheet) else None)
    for row, cells in rows:
        onset, apex, offset = (frame_value(cells[c], sheet, name, row, c) for c in ("Onset", "Apex", "Offset"))
        if offset < onset:
            left_out["offset before onset (0 = not coded)"] += 1
            continue
        if not onset <= apex <= offset:
            left_out["apex outside onset..offset"] += 1
            continue
        subject = str(cells["Subject"]).strip()
        subject_folder = folders.get(subject.lower())
        if subject_folder is None:
            raise MissingImageError(f"{sheet}, sheet {name!r}, row {row}: no folder data/{subject} (any casing)")
        folder = frame_folder(subject_folder / str(cells["Filename"]).strip() / "color", sheet, name, row)
        samples.append(Sample("casme3", subject, "frames", folder, Interval(onset, apex, offset),
                              labels={"emotion": word(cells["emotion"]), "aus": str(cells.get("AU"))},
                              extra={"fps": FPS["casme3"]}))
    report_left_out("casme3", sheet, left_out)
    return samples
