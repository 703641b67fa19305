"""Parsers of the long-video spotting datasets as distributed, registered for the data module and `common.inspect`.

One sample per video (source 'frames'): labels["events"] lists its annotated expressions as dicts {interval
(Interval, the frame numbers of the file names), type ('macro' | 'micro'), emotion, aus, row (the sheet row as
Excel shows it)}; extra: fps, `vid` (the video's name in submission files) and `id`. The parsers read sheets
only: a video folder that is missing is found by the data module (and by `common.inspect` without --no-media).

    casme_sq   CAS(ME)²: CAS(ME)^2code_final.xlsx, or CASME_sq_gt.xlsx as the MEGC ground truth names it. Sheet
               CASFEcode_final has no header: subject, clip (anger1_1), onset, apex, offset, AU, objective class,
               type (macro-expression / micro-expression), emotion; offset 0 = not coded: the expression ends at
               its apex. Sheet `naming rule1` gives each row's folder subject (15, s15); `naming rule2` each clip
               name's code (0401 anger1). Frames rawpic/s15/15_0401girlcrashing/img1.jpg: the folder is matched by
               its `15_0401` prefix. vid `15_0401`. 30 fps.
    samm_lv    SAMM long videos: SAMM_LongVideos_V3_Release.xlsx (or SAMMLV_gt.xlsx), sheet FACS_Movement_Only:
               free-text rows, then the header (Subject, Filename, Inducement Code, Onset, Apex, Offset, Duration,
               Type, Action Units, Notes); Filename 006_1_3 is the third expression of video 006_1. Fractional
               frame numbers are rounded half up; an apex of -1 is not annotated. Frames
               SAMM_longvideos/006_1/006_1_0001.jpg. vid `006_1`. 200 fps.
    casme3_lv  CAS(ME)³ Part A long videos: CAS(ME)3_part_A_v2.xls (v1: _v1.xls; or either saved as .xlsx) in the
               root, annotation/ or annotation/partA/, any case; sheet AU+Emotion (Subject, Filename, Onset,
               Apex, Offset, AU, Expression type, Objective class; numbers stored as text). Frames
               data/spNO.1/a/color/1.jpg, the subject folder matched case-insensitively. vid `spNO.1/a`. 30 fps.

Spotting needs onset and offset: an apex outside onset..offset (CAS(ME)² has four, one of them 0) is dropped and
the interval kept; a row whose offset precedes its onset is left out and counted in the log. A cell that is not a
frame number stops the parser with the file, sheet and row.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from common.data import register_dataset, report_left_out
from common.data.records import Interval, Sample
from common.data.sheets import AnnotationError, excel_rows, find_file, find_named, sheet_error, sheet_names, sheet_values

FPS = {"casme_sq": 30.0, "samm_lv": 200.0, "casme3_lv": 30.0}
CASME_SQ_SHEETS = ("CAS(ME)^2code_final.xlsx", "CASME_sq_gt.xlsx")
CASME_SQ_MAIN = "CASFEcode_final"
SAMM_LV_SHEETS = ("SAMM_LongVideos_V3_Release.xlsx", "SAMMLV_gt.xlsx")
SAMM_LV_MAIN = "FACS_Movement_Only"
SAMM_LV_COLUMNS = ("Subject", "Filename", "Onset", "Apex", "Offset", "Type")
CASME3_LV_SHEETS = ("CAS(ME)3_part_A_v2.xls", "CAS(ME)3_part_A_v2.xlsx", "CAS(ME)3_part_A_v1.xls",
                    "CAS(ME)3_part_A_v1.xlsx")
CASME3_LV_FOLDERS = ("", "annotation", "annotation/partA")
CASME3_LV_MAIN = "AU+Emotion"
CASME3_LV_COLUMNS = ("Subject", "Filename", "Onset", "Apex", "Offset", "Expression type")


def video_events(sample: Sample) -> list[dict]:
    return list(sample.labels.get("events", ()))


def frame_number(value, path: Path, sheet: str, row: int, column: str) -> float:
    text = "" if value is None else str(value).strip()
    try:
        number = float(text)
    except ValueError:
        raise sheet_error(path, sheet, row, f"{column} {value!r} is not a frame number") from None
    if not math.isfinite(number):
        raise sheet_error(path, sheet, row, f"{column} {value!r} is not a frame number")
    return number


def half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def expression_type(value, path: Path, sheet: str, row: int) -> str:
    text = "" if value is None else str(value).strip().lower()
    if text.startswith("micro"):
        return "micro"
    if text.startswith("macro"):
        return "macro"
    raise sheet_error(path, sheet, row, f"type {value!r} is neither macro nor micro")


def ordered(onset: int, apex: int | None, offset: int) -> Interval | None:
    """The interval, without an apex that lies outside it; None when the offset precedes the onset."""
    if offset < onset:
        return None
    return Interval(onset, apex if apex is not None and onset <= apex <= offset else None, offset)


def event(interval: Interval, kind: str, emotion, aus, row: int) -> dict:
    return {"interval": interval, "type": kind, "emotion": "" if emotion is None else str(emotion).strip().lower(),
            "aus": "" if aus is None else str(aus).strip(), "row": row}


def videos_to_samples(dataset: str, videos: dict, left_out: Counter, where: Path) -> list[Sample]:
    report_left_out(dataset, where, left_out)
    return [Sample(dataset, v["subject"], "frames", v["path"], labels={"events": v["events"]},
                   extra={"fps": FPS[dataset], "vid": vid, "id": vid, **v.get("extra", {})})
            for vid, v in videos.items()]


# ---------------------------------------------------------------- CAS(ME)²


@register_dataset("casme_sq", task="spotting")
def casme_sq(root: Path) -> list[Sample]:
    sheet = find_file(root, CASME_SQ_SHEETS, "CAS(ME)² spotting sheet")
    _, main = sheet_values(sheet, CASME_SQ_MAIN)
    _, rule1 = sheet_values(sheet, "naming rule1")
    _, rule2 = sheet_values(sheet, "naming rule2")
    main = [r for r in main if any(c is not None for c in r)]
    rule1 = [r for r in rule1 if any(c is not None for c in r)]
    if len(rule1) != len(main):
        raise AnnotationError(f"{sheet}: sheet 'naming rule1' has {len(rule1)} rows, {CASME_SQ_MAIN} {len(main)}: "
                              f"they must pair row for row")
    codes = {str(name).strip(): f"{int(float(code)):04d}" for code, name, *_ in rule2 if name is not None}
    folders = casme_sq_folders(root)
    videos, left_out = {}, Counter()
    for number, (cells, naming) in enumerate(zip(main, rule1), start=1):
        cells = list(cells) + [None] * (9 - len(cells))
        clip = str(cells[1]).strip().rsplit("_", 1)[0]
        if clip not in codes:
            raise sheet_error(sheet, CASME_SQ_MAIN, number, f"clip {cells[1]!r}: {clip!r} is not in 'naming rule2'")
        folder_number = int(frame_number(naming[0], sheet, "naming rule1", number, "folder subject"))
        vid = f"{folder_number}_{codes[clip]}"
        onset, apex, offset = (int(frame_number(cells[k], sheet, CASME_SQ_MAIN, number, column))
                               for k, column in ((2, "onset"), (3, "apex"), (4, "offset")))
        interval = ordered(onset, apex, apex if offset == 0 else offset)
        if interval is None:
            left_out["offset before onset"] += 1
            continue
        subject = str(naming[1]).strip()
        path = folders.get(vid, root / "rawpic" / subject / vid)
        video = videos.setdefault(vid, {"subject": subject, "path": path, "events": [],
                                        "extra": {"clip": clip, "sheet_subject": cells[0]}})
        video["events"].append(event(interval, expression_type(cells[7], sheet, CASME_SQ_MAIN, number), cells[8],
                                     cells[5], number))
    return videos_to_samples("casme_sq", videos, left_out, sheet)


def casme_sq_folders(root: Path) -> dict[str, Path]:
    """rawpic/s15/15_0401girlcrashing by its `15_0401` prefix."""
    found = {}
    for folder in (root / "rawpic").glob("*/*"):
        prefix = "_".join(folder.name.split("_")[:2])[:7]
        if folder.is_dir():
            found[prefix] = folder
    return found


# ---------------------------------------------------------------- SAMM long videos


@register_dataset("samm_lv", task="spotting")
def samm_lv(root: Path) -> list[Sample]:
    sheet = find_file(root, SAMM_LV_SHEETS, "SAMM long-video FACS sheet")
    name, rows = excel_rows(sheet, SAMM_LV_COLUMNS, sheet=SAMM_LV_MAIN if SAMM_LV_MAIN in sheet_names(sheet) else None)
    videos, left_out = {}, Counter()
    for row, cells in rows:
        filename = str(cells["Filename"]).strip()
        vid = filename.rsplit("_", 1)[0]
        onset, offset = (half_up(frame_number(cells[c], sheet, name, row, c)) for c in ("Onset", "Offset"))
        apex_value = frame_number(cells["Apex"], sheet, name, row, "Apex")
        interval = ordered(onset, None if apex_value < 0 else half_up(apex_value), offset)
        if interval is None:
            left_out["offset before onset"] += 1
            continue
        subject = f"{int(frame_number(cells['Subject'], sheet, name, row, 'Subject')):03d}"
        video = videos.setdefault(vid, {"subject": subject, "path": root / "SAMM_longvideos" / vid, "events": []})
        video["events"].append(event(interval, expression_type(cells["Type"], sheet, name, row), None,
                                     cells.get("Action Units"), row))
    return videos_to_samples("samm_lv", videos, left_out, sheet)


# ---------------------------------------------------------------- CAS(ME)³ Part A long videos


@register_dataset("casme3_lv", task="spotting")
def casme3_lv(root: Path) -> list[Sample]:
    sheet = find_named(root, CASME3_LV_SHEETS, CASME3_LV_FOLDERS, "CAS(ME)³ Part A expression sheet (AU+Emotion)")
    name, rows = excel_rows(sheet, CASME3_LV_COLUMNS, sheet=CASME3_LV_MAIN)
    subject_folders = {p.name.lower(): p for p in (root / "data").glob("*") if p.is_dir()}
    videos, left_out = {}, Counter()
    for row, cells in rows:
        subject, filename = str(cells["Subject"]).strip(), str(cells["Filename"]).strip()
        onset, apex, offset = (int(frame_number(cells[c], sheet, name, row, c)) for c in ("Onset", "Apex", "Offset"))
        interval = ordered(onset, apex, offset)
        if interval is None:
            left_out["offset before onset"] += 1
            continue
        vid = f"{subject}/{filename}"
        base = subject_folders.get(subject.lower(), root / "data" / subject)
        video = videos.setdefault(vid, {"subject": subject, "path": base / filename / "color", "events": []})
        video["events"].append(event(interval, expression_type(cells["Expression type"], sheet, name, row),
                                     cells.get("Objective class"), cells.get("AU"), row))
    return videos_to_samples("casme3_lv", videos, left_out, sheet)
