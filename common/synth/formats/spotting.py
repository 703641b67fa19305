"""Long-video spotting datasets as distributed: CAS(ME)² and SAMM long videos.

    CAS(ME)²   CAS(ME)^2code_final.xlsx: sheet CASFEcode_final with no header (subject, clip, onset, apex,
               offset, AU, objective class, type, emotion), offset 0 = not coded (expected: the apex);
               sheets `naming rule1` (one row per coded row: folder number, folder name, sheet subject) and
               `naming rule2` (clip code, clip name). Frames rawpic/s15/15_0502funnyerrors/img1.jpg, from 1.
               Folder words after the code follow the public release as far as known: match by prefix.
    SAMM-LV    SAMM_LongVideos_V3_Release.xlsx, sheet FACS_Movement_Only: nine free-text rows, the header on
               row 10 (pandas header=9), apex -1 = not annotated, some frame numbers fractional (expected:
               rounded half up). Frames SAMM_longvideos/006_1/006_1_0001.jpg, grayscale, from 1.

With `sheet=` (the real CASME_sq_gt.xlsx / SAMMLV_gt.xlsx) the chosen rows are copied and every frame of
their videos up to the last annotated one (plus a little) is written; neutral frames are one cached image,
so a 4,000-frame video costs a few renders. Expected records: one per video (source 'frames'), its events
in labels['events'] as dicts {interval, type ('micro'|'macro'), emotion, aus, row}; an unusable row keeps
interval None and says why in 'problems'.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from common.data.records import Interval
from common.synth import EMOTIONS, long_video
from common.synth.formats import (Expected, FrameRenderer, Written, check_rows, expression_aus, frame_cell,
                                  read_sheet_rows, rng_of, round_half_up, subject_ids, write_xlsx)

CASME_SQ_SHEET = "CAS(ME)^2code_final.xlsx"
CASME_SQ_MAIN = "CASFEcode_final"
CASME_SQ_DEFAULT_ROWS = (12, 13, 38, 39, 40)
# clip code -> (clip name used in the sheet, word in the folder name)
CASME_SQ_CLIPS = {101: ("disgust1", "disgustingteeth"), 102: ("disgust2", "eatingworms"),
                  401: ("anger1", "girlcrashing"), 402: ("anger2", "beatingpregnantwoman"),
                  502: ("happy1", "funnyerrors"), 503: ("happy2", "unnyfarting"),
                  505: ("happy3", "funnyinnovations"), 507: ("happy4", "climbingthewall"),
                  508: ("happy5", "funnydunkey")}
CASME_SQ_FOLDER_SUBJECTS = (15, 16, 19, 20, 21, 22, 23, 24, 25, 26, 27, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 40)

SAMM_LV_SHEET = "SAMM_LongVideos_V3_Release.xlsx"
SAMM_LV_MAIN = "FACS_Movement_Only"
SAMM_LV_HEADER = ["Subject", "Filename", "Inducement Code", "Onset", "Apex", "Offset", "Duration", "Type",
                  "Action Units", "Notes"]
SAMM_LV_DEFAULT_ROWS = (34, 63, 65)
PAD_FRAMES = 10


def _event(interval: Interval | None, kind: str, emotion: Any, aus: Any, row: int, problems=()) -> dict:
    return {"interval": interval, "type": kind, "emotion": emotion, "aus": aus, "row": row,
            "problems": tuple(problems)}


def _write_video(folder: Path, events: list[dict], last: int, subject: int, seed: int, size: int, name,
                 gray: bool = False) -> None:
    """Every frame 1..last (+padding); only frames inside events are rendered individually."""
    drawn = [(e["interval"], expression_aus(e["aus"], e["emotion"], seed + i, 0.6 if e["type"] == "macro" else 0.3))
             for i, e in enumerate(events) if e["interval"] is not None]
    FrameRenderer(subject, seed, size, drawn, gray=gray).write(folder, range(1, last + PAD_FRAMES + 1), name)


# ---------------------------------------------------------------- CAS(ME)²


def casme_sq_interval(onset, apex, offset) -> tuple[Interval | None, tuple[str, ...]]:
    """Offset 0 means not coded: the expression ends at its apex."""
    onset, apex, offset = (int(frame_cell(v)) for v in (onset, apex, offset))
    problems = ("offset 0: ends at apex",) if offset == 0 else ()
    offset = apex if offset == 0 else offset
    if not onset <= apex <= offset:
        return None, problems + (f"apex {apex} outside {onset}..{offset}",)
    return Interval(onset, apex, offset), problems


def write_casme2_lv(root: Path | str, sheet: Path | str | None = None, rows: Sequence[int] | None = None,
                    subjects: int = 2, seed: int = 0, size: int = 32, seconds: float = 12.0) -> Written:
    """With `sheet` (the real CASME_sq_gt.xlsx), `rows` index its main sheet (default CASME_SQ_DEFAULT_ROWS)."""
    root = Path(root)
    main, rule1, rule2 = (_real_casme_sq(Path(sheet), rows) if sheet is not None
                          else _synthetic_casme_sq(subjects, seed, seconds))
    target = root / CASME_SQ_SHEET
    write_xlsx(target, {CASME_SQ_MAIN: main, "naming rule1": rule1, "naming rule2": rule2})
    codes = {str(name): int(code) for code, name in rule2}
    videos: dict[Path, dict] = {}
    for number, (row, naming) in enumerate(zip(main, rule1)):
        clip = str(row[1]).rsplit("_", 1)[0]
        code = codes[clip]
        folder = root / "rawpic" / str(naming[1]) / f"{naming[0]}_{code:04d}{CASME_SQ_CLIPS[code][1]}"
        interval, problems = casme_sq_interval(*row[2:5])
        kind = "micro" if str(row[7]).startswith("micro") else "macro"
        video = videos.setdefault(folder, {"subject": str(naming[1]), "events": [], "last": 0,
                                           "extra": {"fps": 30.0, "sheet_subject": row[0], "clip": clip, "code": code}})
        video["events"].append(_event(interval, kind, row[8], row[5], number, problems))
        video["last"] = max(video["last"], *(int(frame_cell(v)) for v in row[2:5]))
    records = []
    for v, (folder, video) in enumerate(videos.items()):
        _write_video(folder, video["events"], video["last"], int(video["subject"][1:]), seed + v, size,
                     lambda n: f"img{n}.jpg")
        records.append(Expected("casme_sq", video["subject"], "frames", folder, None,
                                {"events": video["events"]}, video["extra"]))
    return Written(root, records, target, notes=["sheet has no header; offset 0 = ends at apex"])


def _real_casme_sq(sheet: Path, rows: Sequence[int] | None):
    main = read_sheet_rows(sheet, CASME_SQ_MAIN)
    rule1 = read_sheet_rows(sheet, "naming rule1")
    chosen = check_rows(rows if rows is not None else CASME_SQ_DEFAULT_ROWS, len(main), sheet)
    return [main[r] for r in chosen], [rule1[r] for r in chosen], read_sheet_rows(sheet, "naming rule2")


def _synthetic_casme_sq(subjects: int, seed: int, seconds: float):
    main, rule1 = [], []
    codes = list(CASME_SQ_CLIPS)
    for subject in subject_ids(subjects):
        folder_subject = CASME_SQ_FOLDER_SUBJECTS[(subject - 1) % len(CASME_SQ_FOLDER_SUBJECTS)]
        code = codes[(subject + seed) % len(codes)]
        video = long_video(subject, seed, fps=30.0, seconds=seconds, size=32)
        for k, event in enumerate(video.events):
            onset, apex, offset = event.onset + 1, event.apex + 1, event.offset + 1  # sheet counts from 1
            main.append([subject, f"{CASME_SQ_CLIPS[code][0]}_{k + 1}", onset, apex, 0 if k == 1 else offset,
                         "+".join(str(au) for au in sorted(event.aus)) or "4", "others",
                         f"{event.kind}-expression", EMOTIONS[event.emotion]])
            rule1.append([folder_subject, f"s{folder_subject}", subject])
    rule2 = [[code, name] for code, (name, _) in CASME_SQ_CLIPS.items()]
    return main, rule1, rule2


# ---------------------------------------------------------------- SAMM long videos


def samm_lv_interval(onset, apex, offset) -> tuple[Interval | None, tuple[str, ...]]:
    """Fractional frames round half up; apex -1 means not annotated."""
    values = [frame_cell(v) for v in (onset, apex, offset)]
    problems = tuple(f"fractional frame {v}" for v in values if v is not None and v != int(v))
    onset, offset = round_half_up(values[0]), round_half_up(values[2])
    apex = None if values[1] is None or values[1] < 0 else round_half_up(values[1])
    if apex is None:
        problems += ("apex -1",)
    if offset < onset or (apex is not None and not onset <= apex <= offset):
        return None, problems + (f"frames out of order {onset}, {apex}, {offset}",)
    return Interval(onset, apex, offset), problems


def samm_lv_preamble() -> list[list]:
    text = ["SAMM Long Videos Dataset - FACS Codes", None, "Symbol Key:", '"/" = or', None, "AU Help:",
            '"L2 or R2" = Unilateral AU 2 on left side of face / right side of face',
            '"A2" = Asymmetric AU 2. Occurs on both sides of face but stronger on one side', None]
    return [[value] for value in text]


def write_samm_lv(root: Path | str, sheet: Path | str | None = None, rows: Sequence[int] | None = None,
                  subjects: int = 2, seed: int = 0, size: int = 32, seconds: float = 4.0,
                  fps: float = 200.0) -> Written:
    """With `sheet` (the real SAMMLV_gt.xlsx), `rows` are 0-based data rows after its header."""
    root = Path(root)
    if sheet is not None:
        preamble, header, body = _real_samm_lv(Path(sheet), rows)
    else:
        preamble, header, body = samm_lv_preamble(), SAMM_LV_HEADER, _synthetic_samm_lv(subjects, seed, seconds, fps)
    target = root / SAMM_LV_SHEET
    write_xlsx(target, {SAMM_LV_MAIN: preamble + [header] + body})
    videos: dict[Path, dict] = {}
    for number, row in enumerate(body):
        subject, name = f"{int(frame_cell(row[0])):03d}", str(row[1]).rsplit("_", 1)[0]
        folder = root / "SAMM_longvideos" / name
        interval, problems = samm_lv_interval(*row[3:6])
        kind = "micro" if str(row[7]).lower().startswith("micro") else "macro"
        video = videos.setdefault(folder, {"subject": subject, "events": [], "last": 0})
        video["events"].append(_event(interval, kind, None, row[8], number, problems))
        video["last"] = max(video["last"], round_half_up(max(frame_cell(v) for v in row[3:6])))
    records = []
    for v, (folder, video) in enumerate(videos.items()):
        _write_video(folder, video["events"], video["last"], int(video["subject"]), seed + v, size,
                     lambda n, stem=folder.name: f"{stem}_{n:04d}.jpg", gray=True)
        records.append(Expected("samm_lv", video["subject"], "frames", folder, None, {"events": video["events"]},
                                {"fps": fps}))
    return Written(root, records, target, notes=["header on row 10: pd.read_excel(sheet, header=9)"])


def _real_samm_lv(sheet: Path, rows: Sequence[int] | None):
    table = read_sheet_rows(sheet, SAMM_LV_MAIN)
    at = next((i for i, row in enumerate(table) if row and row[0] == "Subject"), None)
    if at is None:
        raise ValueError(f"{sheet}: no header row starting with 'Subject' in sheet {SAMM_LV_MAIN}")
    body = table[at + 1:]
    chosen = check_rows(rows if rows is not None else SAMM_LV_DEFAULT_ROWS, len(body), sheet)
    return table[:at], table[at], [body[r] for r in chosen]


def _synthetic_samm_lv(subjects: int, seed: int, seconds: float, fps: float) -> list[list]:
    """Rows for generated long videos: one fractional row and one apex -1 among them."""
    body = []
    for subject in subject_ids(subjects, first=6):
        video = long_video(subject, seed, fps=fps, seconds=seconds, size=32)
        rng = rng_of(seed, subject, 9)
        for k, event in enumerate(video.events):
            onset, apex, offset = event.onset + 1, event.apex + 1, event.offset + 1
            if not body:
                onset, offset = onset + 0.4, offset - 0.2  # rounds back to the event's frames
            apex_cell = -1 if len(body) == 1 else apex
            kind = "Micro - 1/2" if event.kind == "micro" else "Macro"
            body.append([f"{subject:03d}", f"{subject:03d}_1_{k + 1}", int(rng.integers(1, 8)), onset, apex_cell,
                         offset, round(offset - onset + 1, 1), kind,
                         "+".join(str(au) for au in sorted(event.aus)) or "4", None])
    return body


# ---------------------------------------------------------------- CAS(ME)³ Part A long videos

CASME3_LV_SHEET = "annotation/CAS(ME)3_part_A_v2.xlsx"
CASME3_LV_MAIN = "AU+Emotion"
CASME3_LV_HEADER = ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Expression type", "Objective class"]
CASME3_LV_DEFAULT_ROWS = (0, 1, 2, 3)


def write_casme3_lv(root: Path | str, sheet: Path | str | None = None, rows: Sequence[int] | None = None,
                    subjects: int = 2, seed: int = 0, size: int = 32, seconds: float = 12.0) -> Written:
    """Sheet AU+Emotion (numbers stored as text, as in the release) saved as .xlsx (the release's .xls is read by the
    parser too); frames data/spNO.1/a/color/1.jpg. With `sheet` (the real CAS(ME)3_part_A_v2.xls), `rows` are 0-based
    data rows of its AU+Emotion sheet."""
    root = Path(root)
    body = _real_casme3_lv(Path(sheet), rows) if sheet is not None else _synthetic_casme3_lv(subjects, seed, seconds)
    target = root / CASME3_LV_SHEET
    write_xlsx(target, {CASME3_LV_MAIN: [CASME3_LV_HEADER] + body, "eye blink": [["Subject", "Filename", "Onset", "Offset"]]})
    videos: dict[Path, dict] = {}
    for number, row in enumerate(body):
        folder = root / "data" / str(row[0]) / str(row[1]) / "color"
        onset, apex, offset = (int(frame_cell(v)) for v in row[2:5])
        interval = Interval(onset, apex if onset <= apex <= offset else None, offset) if offset >= onset else None
        kind = "micro" if str(row[6]).lower().startswith("micro") else "macro"
        video = videos.setdefault(folder, {"subject": str(row[0]), "events": [], "last": 0})
        video["events"].append(_event(interval, kind, row[7], row[5], number))
        video["last"] = max(video["last"], onset, apex, offset)
    records = []
    for v, (folder, video) in enumerate(videos.items()):
        _write_video(folder, video["events"], video["last"], v + 1, seed + v, size, lambda n: f"{n}.jpg")
        records.append(Expected("casme3_lv", video["subject"], "frames", folder, None, {"events": video["events"]},
                                {"fps": 30.0}))
    return Written(root, records, target, notes=["sheet AU+Emotion, numbers stored as text"])


def _real_casme3_lv(sheet: Path, rows: Sequence[int] | None) -> list[list]:
    from common.data.sheets import sheet_values

    _, table = sheet_values(sheet, CASME3_LV_MAIN)
    body = table[1:]
    return [list(body[r]) for r in check_rows(rows if rows is not None else CASME3_LV_DEFAULT_ROWS, len(body), sheet)]


def _synthetic_casme3_lv(subjects: int, seed: int, seconds: float) -> list[list]:
    body = []
    for subject in subject_ids(subjects):
        video = long_video(subject, seed, fps=30.0, seconds=seconds, size=32)
        for event in video.events:
            kind = "Micro-expression" if event.kind == "micro" else "Macro-expression"
            body.append([f"spNO.{subject}", "a", str(event.onset + 1), str(event.apex + 1), str(event.offset + 1),
                         "+".join(str(au) for au in sorted(event.aus)) or "4", kind, "III"])
    return body
