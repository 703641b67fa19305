"""Micro-expression datasets as distributed: CASME II, SAMM, SMIC-HS, CAS(ME)³ Part A.

Layouts written (root = the dataset folder a user would pass as --data.root):

    CASME II   CASME2-coding-20140508.xlsx; CASME2_RAW_selected/sub01/EP02_01f/img46.jpg (onset..offset);
               Cropped/sub01/EP02_01f/reg_img46.jpg. Subject cells are ints (1 -> sub01); at least one
               ApexFrame is "/" (expected apex None).
    SAMM       SAMM_Micro_FACS_Codes_v2.xlsx, twelve free-text rows above the header (pandas header=12);
               SAMM/006/006_1_2/006_05562.jpg, grayscale; Subject cells are ints (6 -> 006); at least one
               Apex Frame is -1 (expected None).
    SMIC-HS    HS/s1/micro/{negative,positive,surprise}/s1_ne_01/image012345.bmp, labels are folder names, no
               apex, interval = first..last frame of the folder; a non_micro folder that is not a sample.
    CAS(ME)³   annotation/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx (sheet `label`, numbers stored as text);
               data/spNo.1/b/color/175.jpg with gaps in the numbering and a depth/ folder beside color/.
               The folder casing (spNo) differs from the sheet's (spNO) on purpose. With `sheet=` the rows
               of the real sheet are used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from common.data.records import Interval
from common.synth import expression_clip
from common.synth.formats import (Expected, FrameRenderer, Written, check_rows, expression_aus, frame_cell,
                                  read_sheet_rows, rng_of, subject_ids, write_clip_frames, write_xlsx)

CASME2_SHEET = "CASME2-coding-20140508.xlsx"
CASME2_EMOTIONS = ("happiness", "disgust", "repression", "surprise", "others", "fear", "sadness")
SAMM_SHEET = "SAMM_Micro_FACS_Codes_v2.xlsx"
SAMM_EMOTIONS = ("Happiness", "Anger", "Contempt", "Disgust", "Fear", "Sadness", "Surprise", "Other")
SMIC_CLASSES = {"negative": "ne", "positive": "po", "surprise": "sur"}
CASME3_SHEET = "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"
CASME3_EMOTIONS = ("happy", "disgust", "surprise", "fear", "anger", "sad", "others", "Others")
CASME3_DEFAULT_ROWS = (0, 1, 2, 3, 10, 11)
# generator emotion index for a sheet's emotion word; 'others' and unknown words draw a random expression
_GENERATOR_EMOTION = {"happiness": 1, "sadness": 2, "surprise": 3, "fear": 4, "disgust": 5, "repression": 5,
                      "anger": 6, "contempt": 7}


def _micro_clip(subject: int, seed: int, size: int, emotion: str, n_frames: int, fps: float = 200.0):
    label = _GENERATOR_EMOTION.get(emotion.lower())
    return expression_clip(subject, seed, kind="micro", fps=fps, n_frames=n_frames, size=size, emotion=label)


def _au_code(aus) -> str:
    return "+".join(str(au) for au in sorted(aus)) or "0"


# ---------------------------------------------------------------- CASME II


def write_casme2(root: Path | str, subjects: int = 2, per_subject: int = 2, seed: int = 0, size: int = 48,
                 cropped: bool = True) -> Written:
    root = Path(root)
    header = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
              "Estimated Emotion"]
    rows, records = [header], []
    for k, (subject, j) in enumerate((s, j) for s in subject_ids(subjects) for j in range(per_subject)):
        rng = rng_of(seed, subject, j, 2)
        emotion = CASME2_EMOTIONS[k % len(CASME2_EMOTIONS)]
        clip = _micro_clip(subject, seed * 1000 + k, size, emotion, int(rng.integers(10, 16)))
        first = int(rng.integers(1, 150))
        onset, apex, offset = first, first + clip.apex - clip.onset, first + clip.offset - clip.onset
        no_apex = k == min(1, subjects * per_subject - 1)  # one row with the '/' apex
        episode = f"EP{int(rng.integers(1, 20)):02d}_{j + 1:02d}{'f' if j % 2 == 0 else ''}"
        folder = root / "CASME2_RAW_selected" / f"sub{subject:02d}" / episode
        frames = clip.frames[clip.onset: clip.offset + 1]
        numbers = range(onset, offset + 1)
        write_clip_frames(folder, frames, numbers, lambda n: f"img{n}.jpg")
        if cropped:
            write_clip_frames(root / "Cropped" / f"sub{subject:02d}" / episode, _face_crops(frames), numbers,
                              lambda n: f"reg_img{n}.jpg")
        rows.append([subject, episode, k + 1, onset, "/" if no_apex else apex, offset, None,
                     _au_code(clip.aus), emotion])
        records.append(Expected("casme2", f"sub{subject:02d}", "frames", folder,
                                Interval(onset, None if no_apex else apex, offset),
                                {"emotion": emotion, "aus": _au_code(clip.aus)}, {"fps": 200.0, "episode": episode},
                                row=k, problems=('apex "/"',) if no_apex else ()))
    sheet = root / CASME2_SHEET
    write_xlsx(sheet, {"Sheet1": rows})
    return Written(root, records, sheet)


def _face_crops(frames: np.ndarray) -> np.ndarray:
    """The 'Cropped' release: a tighter face crop, resized back (real ones are about 170x140)."""
    size = frames.shape[1]
    lo, hi = size // 8, size - size // 8
    return np.stack([cv2.resize(f[lo:hi, lo:hi], (size, size), interpolation=cv2.INTER_AREA) for f in frames])


# ---------------------------------------------------------------- SAMM


def samm_preamble() -> list[list]:
    """Twelve rows above the header, as in the release: a title, a key, notes and blank rows."""
    text = ["SAMM Micro-Movement FACS Codes", None, "Inducement Code: stimulus number shown to the participant",
            None, "AU Help:", '"L2 or R2" = Unilateral AU on left / right side of face',
            '"A2" = Asymmetric AU', None, "Apex Frame -1 = apex not annotated", None,
            "Objective Classes after Davison et al.", None]
    return [[value] for value in text]


def write_samm(root: Path | str, subjects: int = 2, per_subject: int = 2, seed: int = 0, size: int = 48) -> Written:
    root = Path(root)
    header = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
              "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes"]
    rows, records = samm_preamble() + [header], []
    for k, (subject, j) in enumerate((s, j) for s in subject_ids(subjects, first=6) for j in range(per_subject)):
        rng = rng_of(seed, subject, j, 3)
        emotion = SAMM_EMOTIONS[k % len(SAMM_EMOTIONS)]
        clip = _micro_clip(subject, seed * 1000 + k, size, emotion, int(rng.integers(10, 16)))
        first = int(rng.integers(1000, 8000))
        onset, apex, offset = first, first + clip.apex - clip.onset, first + clip.offset - clip.onset
        no_apex = k == 0
        inducement = int(rng.integers(1, 8))
        name = f"{subject:03d}_{inducement}_{j + 1}"
        folder = root / "SAMM" / f"{subject:03d}" / name
        write_clip_frames(folder, clip.frames[clip.onset: clip.offset + 1], range(onset, offset + 1),
                          lambda n, s=subject: f"{s:03d}_{n:05d}.jpg", gray=True)
        rows.append([subject, name, inducement, onset, -1 if no_apex else apex, offset, offset - onset + 1,
                     "Micro", _au_code(clip.aus), emotion, int(rng.integers(1, 8)), None])
        records.append(Expected("samm", f"{subject:03d}", "frames", folder,
                                Interval(onset, None if no_apex else apex, offset),
                                {"emotion": emotion, "aus": _au_code(clip.aus)}, {"fps": 200.0, "name": name},
                                row=k, problems=("apex -1",) if no_apex else ()))
    sheet = root / SAMM_SHEET
    write_xlsx(sheet, {"FACS_Movement_Only": rows})
    return Written(root, records, sheet, notes=["header at pandas row 12: pd.read_excel(sheet, header=12)"])


# ---------------------------------------------------------------- SMIC


def write_smic(root: Path | str, subjects: int = 2, per_subject: int = 2, seed: int = 0, size: int = 48) -> Written:
    root = Path(root)
    records = []
    classes = list(SMIC_CLASSES)
    for subject in subject_ids(subjects):
        counters = dict.fromkeys(classes, 0)
        for j in range(per_subject):
            label = classes[(subject + j) % len(classes)]
            counters[label] += 1
            rng = rng_of(seed, subject, j, 4)
            emotion = {"negative": "disgust", "positive": "happiness", "surprise": "surprise"}[label]
            clip = _micro_clip(subject, seed * 1000 + subject * 10 + j, size, emotion,
                               int(rng.integers(8, 13)), fps=100.0)
            name = f"s{subject}_{SMIC_CLASSES[label]}_{counters[label]:02d}"
            folder = root / "HS" / f"s{subject}" / "micro" / label / name
            first = int(rng.integers(10000, 900000))
            frames = clip.frames[clip.onset: clip.offset + 1]
            write_clip_frames(folder, frames, range(first, first + len(frames)), lambda n: f"image{n:06d}.bmp")
            records.append(Expected("smic", f"s{subject}", "frames", folder,
                                    Interval(first, None, first + len(frames) - 1), {"emotion": label},
                                    {"fps": 100.0, "megc_subject": f"s{subject:02d}"}))
        distractor = root / "HS" / f"s{subject}" / "non_micro" / f"s{subject}_non_01"
        write_clip_frames(distractor, clip.frames[:3], range(1, 4), lambda n: f"image{n:06d}.bmp")
    return Written(root, records, None, notes=["labels are folder names; non_micro/ holds no samples"])


# ---------------------------------------------------------------- CAS(ME)³ Part A


def casme3_interval(onset, apex, offset) -> tuple[Interval | None, tuple[str, ...]]:
    """The rule for a sheet row: numbers as given (stored as text); an unusable row gets None and a reason."""
    values = [frame_cell(v) for v in (onset, apex, offset)]
    if any(v is None for v in values):
        return None, (f"non-numeric frame cell in {onset!r}, {apex!r}, {offset!r}",)
    onset, apex, offset = (int(v) for v in values)
    if offset < onset:
        return None, (f"offset {offset} before onset {onset}",)
    if not onset <= apex <= offset:
        return None, (f"apex {apex} outside {onset}..{offset}",)
    return Interval(onset, apex, offset), ()


def write_casme3(root: Path | str, sheet: Path | str | None = None, rows: Sequence[int] | None = None,
                 subjects: int = 2, per_subject: int = 3, seed: int = 0, size: int = 48,
                 folder_case: str = "spNo") -> Written:
    """With `sheet` (the real label xlsx), `rows` are 0-based data rows of its `label` sheet (default
    CASME3_DEFAULT_ROWS); without, rows are generated: text numbers, a repeated Filename, an 'Others'."""
    root = Path(root)
    header, data = (_real_casme3_rows(Path(sheet), rows) if sheet is not None
                    else _synthetic_casme3_rows(subjects, per_subject, seed))
    target = root / "annotation" / CASME3_SHEET
    write_xlsx(target, {"label": [header] + [row for _, row in data]})
    records = []
    for number, (row_index, row) in enumerate(data):
        subject, filename, onset, apex, offset, aus, _objective, emotion = row[:8]
        interval, problems = casme3_interval(onset, apex, offset)
        folder = root / "data" / _recase(str(subject), folder_case) / str(filename) / "color"
        records.append(Expected("casme3", str(subject), "frames", folder, interval,
                                {"emotion": emotion, "aus": aus, "objective_class": _objective},
                                {"fps": 30.0, "sheet_row": row_index}, row=number, problems=problems))
    _write_casme3_frames(records, [row for _, row in data], seed, size)
    return Written(root, records, target, notes=[f"folders spelled {folder_case}.N, sheet spNO.N"])


def _recase(subject: str, folder_case: str) -> str:
    prefix, dot, number = subject.partition(".")
    return f"{folder_case}{dot}{number}" if prefix.lower() == folder_case.lower() else subject


def _real_casme3_rows(sheet: Path, rows: Sequence[int] | None):
    table = read_sheet_rows(sheet, "label")
    header, body = table[0], table[1:]
    chosen = check_rows(rows if rows is not None else CASME3_DEFAULT_ROWS, len(body), sheet)
    return header, [(r, body[r]) for r in chosen]


def _synthetic_casme3_rows(subjects: int, per_subject: int, seed: int):
    header = ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]
    data = []
    for subject in subject_ids(subjects):
        rng = rng_of(seed, subject, 5)
        cursor = int(rng.integers(20, 300))
        for j in range(per_subject):
            filename = "abcdefghijklm"[j // 2]  # pairs of rows share a video: the repeated-Filename quirk
            if j % 2 == 0:
                cursor = int(rng.integers(20, 300))
            length = int(rng.integers(5, 14))
            onset, offset = cursor, cursor + length - 1
            apex = onset + int(rng.integers(1, length - 1))
            cursor = offset + int(rng.integers(3, 20))
            emotion = CASME3_EMOTIONS[(subject * 3 + j) % len(CASME3_EMOTIONS)]
            row = [f"spNO.{subject}", filename, str(onset), str(apex), str(offset),
                   str(int(rng.choice([4, 12, 14, 1, 2]))), "VII", emotion]
            data.append((len(data), row))
    return header, data


def _write_casme3_frames(records: Sequence[Expected], rows: Sequence[list], seed: int, size: int) -> None:
    """Per video: frames around all its rows, a few numbers left out inside (the gaps real folders have)."""
    videos: dict[Path, list[tuple[Expected, list]]] = {}
    for record, row in zip(records, rows):
        videos.setdefault(record.path, []).append((record, row))
    for v, (folder, entries) in enumerate(videos.items()):
        numbers = [int(frame_cell(x)) for _, row in entries for x in row[2:5] if frame_cell(x)]
        first, last = max(1, min(numbers) - 2), max(numbers) + 2
        events = [(r.interval, expression_aus(row[5], row[7], seed + v, 0.35)) for r, row in entries if r.interval]
        renderer = FrameRenderer(_subject_number(entries[0][0].subject), seed + v, size, events)
        keep = _with_gaps(range(first, last + 1), {n for n in numbers}, rng_of(seed, v, 6))
        renderer.write(folder, keep, lambda n: f"{n}.jpg")
        depth = folder.parent / "depth"
        depth.mkdir(parents=True, exist_ok=True)
        for n in keep[:3]:
            cv2.imwrite(str(depth / f"{n}.png"), np.full((size, size), 1200 + n, np.uint16))


def _subject_number(subject: str) -> int:
    digits = "".join(ch for ch in subject if ch.isdigit())
    return int(digits) if digits else 0


def _with_gaps(numbers: range, annotated: set[int], rng: np.random.Generator) -> list[int]:
    """Drop up to two frame numbers that no row names, so readers meet gaps inside annotated ranges."""
    candidates = [n for n in numbers if n not in annotated and numbers.start < n < numbers.stop - 1]
    dropped = set(rng.choice(candidates, size=min(2, len(candidates)), replace=False).tolist()) if candidates else set()
    return [n for n in numbers if n not in dropped]


# ---------------------------------------------------------------- the MEGC2019 composite


MEGC2019_WORDS = {  # the composite's label -> emotion words a sheet may give it, used in turn
    "casme2": {0: ("disgust", "repression"), 1: ("happiness",), 2: ("surprise",)},
    "samm": {0: ("Anger", "Contempt", "Disgust", "Fear", "Sadness"), 1: ("Happiness",), 2: ("Surprise",)},
    "smic": {0: ("negative",), 1: ("positive",), 2: ("surprise",)},
}
MEGC2019_LEFT_OUT = {"casme2": ("others", "fear", "sadness"), "samm": ("Other",)}


def write_megc2019(root: Path | str, gt_csv: Path | str, size: int = 24, frames: int = 3) -> Written:
    """CASME II, SAMM and SMIC-HS trees under root/casme2, root/samm, root/smic holding exactly the clips of the
    composite's ground-truth list (`db,subject,video,label` rows), each with an emotion word of its class, plus
    clips of emotions the composite leaves out (recorded with a problem, so a loader must drop them)."""
    root = Path(root)
    rows = [line.split(",") for line in Path(gt_csv).read_text().split() if line.strip()]
    records, sheets = [], {"casme2": [], "samm": []}
    for k, (db, subject, video, label) in enumerate(rows):
        word = MEGC2019_WORDS[db][int(label)][k % len(MEGC2019_WORDS[db][int(label)])]
        records.append(_megc_clip(root, db, subject, video, word, size, frames, sheets, ()))
    for db, words in MEGC2019_LEFT_OUT.items():
        subject = next(r[1] for r in rows if r[0] == db)
        for j, word in enumerate(words):
            video = f"EP90_{j:02d}" if db == "casme2" else f"{int(subject):03d}_9_{j + 1}"
            records.append(_megc_clip(root, db, subject, video, word, size, frames, sheets, ("not in the composite",)))
    _megc_sheets(root, sheets)
    return Written(root, records, Path(gt_csv), notes=["SMIC folders s1, MEGC list s01"])


def _megc_clip(root: Path, db: str, subject: str, video: str, word: str, size: int, count: int, sheets: dict,
               problems: tuple[str, ...]) -> Expected:
    number = int("".join(ch for ch in subject if ch.isdigit()))
    face = np.repeat(render_face_cached(number, size)[None], count, axis=0)
    if db == "casme2":
        folder = root / "casme2" / "CASME2_RAW_selected" / subject / video
        write_clip_frames(folder, face, range(10, 10 + count), lambda n: f"img{n}.jpg")
        sheets["casme2"].append([number, video, None, 10, 11, 9 + count, None, "4", word])
        found_subject = subject
    elif db == "samm":
        found_subject = f"{number:03d}"
        folder = root / "samm" / "SAMM" / found_subject / video
        write_clip_frames(folder, face, range(100, 100 + count), lambda n, s=number: f"{s:03d}_{n:05d}.jpg", gray=True)
        sheets["samm"].append([number, video, 1, 100, -1, 99 + count, count, "Micro", "4", word, 1, None])
    else:
        found_subject = f"s{number}"
        name = video.replace(subject + "_", found_subject + "_", 1)
        folder = root / "smic" / "HS" / found_subject / "micro" / word / name
        write_clip_frames(folder, face, range(500, 500 + count), lambda n: f"image{n:06d}.bmp")
    return Expected(db, found_subject, "frames", folder, None, {"emotion": word.lower()},
                    {"megc_subject": subject, "megc_video": video}, problems=problems)


def render_face_cached(subject: int, size: int, _cache: dict = {}) -> np.ndarray:  # noqa: B006 -- a render cache
    from common.synth import render_face

    if (subject, size) not in _cache:
        _cache[(subject, size)] = render_face({}, subject, size=size, seed=subject)
    return _cache[(subject, size)]


def _megc_sheets(root: Path, sheets: dict) -> None:
    casme2_header = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
                     "Estimated Emotion"]
    write_xlsx(root / "casme2" / CASME2_SHEET, {"Sheet1": [casme2_header] + sheets["casme2"]})
    samm_header = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame", "Duration",
                   "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes"]
    write_xlsx(root / "samm" / SAMM_SHEET, {"FACS_Movement_Only": samm_preamble() + [samm_header] + sheets["samm"]})
