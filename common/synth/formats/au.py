"""Action-unit datasets as distributed: BP4D and DISFA.

    BP4D   AUCoding/AU_OCC/F001_T1.csv: header row, first column named "0" = frame number, then one column
           per AU number; 0/1, and 9 = unknown (whole frames and whole AUs of 9 occur). Images
           BP4D-training/F001/T1/<frame>.jpg, plus an image with no label row (labels cover a segment).
           Intensity: AUCoding/AU_INT/AU06/F001_T1_AU06.csv, lines `frame,intensity` without header, 9 =
           unknown (this layout is uncertain in the public descriptions).
    DISFA  ActionUnit_Labels/SN001/SN001_au1.txt, lines `frame,intensity` (0-5), frames counted from 1;
           Videos_LeftCamera/LeftVideoSN001_comp.avi holds frame k at decode index k-1.

Expected records: one per labelled frame. BP4D: source 'image'. DISFA: source 'video' with the one-frame
interval (k-1, k-1, k-1) in decode indices, and the label file's frame number in extra['label_frame'].
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from common.data.records import Interval
from common.synth import render_face
from common.synth.formats import Expected, Written, rng_of, write_avi, write_image

BP4D_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 27, 28)
BP4D_NEVER_CODED = (11, 13, 16, 18, 19, 22, 27, 28)  # present as columns, all 9
BP4D_INTENSITY_AUS = (6, 10, 12, 14, 17)
DISFA_AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
UNKNOWN = 9


def write_bp4d(root: Path | str, subjects: Sequence[str] = ("F001", "M001"), tasks: Sequence[str] = ("T1", "T2"),
               frames: int = 5, seed: int = 0, size: int = 48) -> Written:
    root = Path(root)
    records = []
    for s, subject in enumerate(subjects):
        for t, task in enumerate(tasks):
            rng = rng_of(seed, s, t, 7)
            first = int(rng.integers(1, 3000))
            numbers = list(range(first, first + frames))
            codes = _bp4d_codes(rng, frames)
            _write_bp4d_occurrence(root, subject, task, numbers, codes)
            intensities = _write_bp4d_intensity(root, subject, task, numbers, codes, rng)
            folder = root / "BP4D-training" / subject / task
            for k, number in enumerate(numbers + [numbers[-1] + 1]):
                aus = {au: 0.8 for au, c in zip(BP4D_AUS, codes[min(k, frames - 1)]) if c == 1}
                write_image(folder / f"{number}.jpg", render_face(aus, s + 1, size=size, seed=seed * 100 + s * 10 + t))
            for k, number in enumerate(numbers):
                records.append(Expected(
                    "bp4d", subject, "image", folder / f"{number}.jpg", None,
                    {"au_occ": dict(zip(BP4D_AUS, codes[k].tolist())),
                     "au_int": {au: intensities[au][k] for au in BP4D_INTENSITY_AUS}},
                    {"sequence": task, "frame": number}, row=k))
    return Written(root, records, root / "AUCoding" / "AU_OCC",
                   notes=["the last image of each sequence has no label row and is not a sample"])


def _bp4d_codes(rng: np.random.Generator, frames: int) -> np.ndarray:
    """[frames, AUs] of 0/1/9: never-coded AUs all 9, one frame entirely 9, a few scattered 9s."""
    codes = (rng.random((frames, len(BP4D_AUS))) < 0.35).astype(np.int64)
    codes[:, [BP4D_AUS.index(au) for au in BP4D_NEVER_CODED]] = UNKNOWN
    codes[rng.integers(frames)] = UNKNOWN
    codes[rng.random(codes.shape) < 0.05] = UNKNOWN
    return codes


def _write_bp4d_occurrence(root: Path, subject: str, task: str, numbers: list[int], codes: np.ndarray) -> None:
    path = root / "AUCoding" / "AU_OCC" / f"{subject}_{task}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(["0"] + [str(au) for au in BP4D_AUS])]
    lines += [",".join([str(n)] + [str(c) for c in row]) for n, row in zip(numbers, codes.tolist())]
    path.write_text("\n".join(lines) + "\n")


def _write_bp4d_intensity(root: Path, subject: str, task: str, numbers: list[int], codes: np.ndarray,
                          rng: np.random.Generator) -> dict[int, list[int]]:
    """Intensity agrees with occurrence: 0 where absent, 1-5 where present, 9 where unknown."""
    out = {}
    for au in BP4D_INTENSITY_AUS:
        column = codes[:, BP4D_AUS.index(au)]
        values = [UNKNOWN if c == UNKNOWN else (int(rng.integers(1, 6)) if c == 1 else 0) for c in column]
        path = root / "AUCoding" / "AU_INT" / f"AU{au:02d}" / f"{subject}_{task}_AU{au:02d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{n},{v}\n" for n, v in zip(numbers, values)))
        out[au] = values
    return out


def write_disfa(root: Path | str, subjects: Sequence[str] = ("SN001", "SN002"), frames: int = 12, seed: int = 0,
                size: int = 48, fps: float = 20.0) -> Written:
    root = Path(root)
    records = []
    for s, subject in enumerate(subjects):
        rng = rng_of(seed, s, 8)
        intensity = _disfa_intensities(rng, frames)
        label_dir = root / "ActionUnit_Labels" / subject
        label_dir.mkdir(parents=True, exist_ok=True)
        for a, au in enumerate(DISFA_AUS):
            lines = "".join(f"{k + 1},{intensity[k, a]}\n" for k in range(frames))
            (label_dir / f"{subject}_au{au}.txt").write_text(lines)
        video = root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi"
        pixels = [render_face({au: v / 5 for au, v in zip(DISFA_AUS, intensity[k]) if v}, s + 1, size=size,
                              seed=seed * 100 + s) for k in range(frames)]
        write_avi(video, np.stack(pixels), fps)
        for k in range(frames):
            records.append(Expected("disfa", subject, "video", video, Interval(k, k, k),
                                    {"au_int": dict(zip(DISFA_AUS, intensity[k].tolist()))},
                                    {"label_frame": k + 1, "fps": fps}, row=k))
    return Written(root, records, root / "ActionUnit_Labels",
                   notes=["label frame k is video decode index k-1"])


def _disfa_intensities(rng: np.random.Generator, frames: int) -> np.ndarray:
    """[frames, 12] integer intensities 0-5 in short runs, as coders mark them."""
    out = np.zeros((frames, len(DISFA_AUS)), dtype=np.int64)
    for a in range(len(DISFA_AUS)):
        if rng.random() < 0.5:
            start = int(rng.integers(0, frames))
            stop = min(frames, start + int(rng.integers(2, 6)))
            out[start:stop, a] = int(rng.integers(1, 6))
    return out
