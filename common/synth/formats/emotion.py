"""Macro-expression datasets as distributed: FER2013, FERPlus, RAF-DB basic, AffectNet (classic and npy).

Layouts written (root = the folder a user passes as --data.root):

    FER2013        fer2013.csv, header emotion,pixels,Usage; 48x48 gray faces as 2304 space-separated values;
                   Usage Training / PublicTest / PrivateTest; codes 0 Angry .. 6 Neutral.
    FERPlus        fer2013.csv as above plus fer2013new.csv, row for row: Usage, Image name, ten taggers' votes
                   over neutral..contempt, unknown, NF. The rows cycle through FERPLUS_PATTERNS: a clear majority,
                   a plurality without majority (kept by the soft mode only), a tie, unknown or NF winning, an
                   empty Image name, contempt.
    RAF-DB basic   EmoLabel/list_patition_label.txt (sic), lines `train_00001.jpg 5`, 1-based codes; images
                   Image/aligned/train_00001_aligned.jpg. Test names have four digits (test_0001), as released.
    AffectNet      Manually_Annotated_file_lists/training.csv and validation.csv with the real header; images
                   Manually_Annotated_Images/<dir>/<hash>.jpg, larger than the face, which sits at the row's
                   box; 68 landmarks as `x;y;x;y;...`; rows with codes 8-10 (None, Uncertain, No-Face), whose
                   valence and arousal are -2 as in the release.
    AffectNet npy  {train_set,val_set}/images/<idx>.jpg and annotations/<idx>_{exp,val,aro,lnd}.npy; indices
                   skip numbers (so text order differs from number order); some expression files hold the code
                   as a string, as some copies of the release do; codes 8-10 appear too.

Every `Expected` has labels {"emotion": shared-order label (EMOTIONS) or None where the sample is left out,
"code": the dataset's own code} and extra {"split": "train" | "val" | "test", "identity": the synthetic face}.
Rows a loader must leave out by the dataset's own rules carry the reason in `problems`. FERPlus records add
"votes" (shared order, then unknown, NF), "majority" (shared label or None) and "soft" (eight probabilities).
The real datasets have no subject ids (`subject` is empty); the writer still draws each split's faces from
identities of its own, so no face repeats across splits.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from common.data.records import Interval
from common.synth import EMOTIONS, emotion_sample
from common.synth.formats import Expected, Written, rng_of, write_image

# The datasets' own code lists, as their documentation gives them; mapped to EMOTIONS by name below.
FER2013_NAMES = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
FER2013_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                   "unknown", "NF")
RAFDB_NAMES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")  # code = index + 1
AFFECTNET_NAMES = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
                   "None", "Uncertain", "No-Face")
AFFECTNET_HEADER = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal")
AFFECTNET_SHEETS = {"train": "training.csv", "test": "validation.csv"}
AFFECTNET_NPY_FOLDERS = {"train": "train_set", "test": "val_set"}
FER_SIZE = 48

_SYNONYMS = {"angry": "anger", "happiness": "happy", "sadness": "sad"}
_SPLIT_IDENTITIES = {"train": 0, "val": 100, "test": 200}
_IDENTITIES_PER_SPLIT = 5


def shared_label(name: str) -> int:
    """A dataset's class name -> its index in EMOTIONS."""
    word = name.strip().lower()
    return EMOTIONS.index(_SYNONYMS.get(word, word))


def identity_of(split: str, k: int) -> int:
    return _SPLIT_IDENTITIES[split] + k % _IDENTITIES_PER_SPLIT


def face(split: str, k: int, label: int, seed: int, size: int) -> np.ndarray:
    return emotion_sample(identity_of(split, k), label, seed=seed * 10_000 + k, size=size)[0]


def noise_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A picture without a face (AffectNet's No-Face rows, FERPlus rows the taggers called NF)."""
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def split_plan(per_split: Sequence[int], splits: Sequence[str]) -> list[tuple[str, int, int]]:
    """(split, index within the split, running index over all splits) for every sample to write."""
    if len(per_split) != len(splits):
        raise ValueError(f"per_split needs one count for each of {list(splits)}, got {list(per_split)}")
    plan, k = [], 0
    for split, count in zip(splits, per_split):
        for j in range(count):
            plan.append((split, j, k))
            k += 1
    return plan


# ---------------------------------------------------------------- FER2013


def write_fer2013(root: Path | str, per_split: Sequence[int] = (14, 7, 7), seed: int = 0) -> Written:
    """Emotions cycle through the seven FER2013 classes; rows are ordered Training, PublicTest, PrivateTest."""
    root = Path(root)
    sheet = root / "fer2013.csv"
    rows, records = [], []
    for split, j, k in split_plan(per_split, tuple(FER2013_USAGE)):
        code = k % len(FER2013_NAMES)
        label = shared_label(FER2013_NAMES[code])
        rows.append((code, gray(face(split, k, label, seed, FER_SIZE)), FER2013_USAGE[split]))
        records.append(_fer_record("fer2013", sheet, k, {"emotion": label, "code": code},
                                   {"split": split, "identity": identity_of(split, k)}))
    write_fer_sheet(sheet, rows)
    return Written(root, records, sheet, notes=["Training -> train, PublicTest -> val, PrivateTest -> test"])


def _fer_record(dataset: str, sheet: Path, row: int, labels: dict, extra: dict, problems=()) -> Expected:
    """A FER2013 face is data row `row` of the sheet: the reader numbers the sheet's rows like frames."""
    return Expected(dataset, "", "fer2013_pixels", sheet, Interval(row, row, row), labels, extra, row=row,
                    problems=tuple(problems))


def write_fer_sheet(path: Path, rows: Sequence[tuple[int, np.ndarray, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["emotion", "pixels", "Usage"])
        for code, pixels, usage in rows:
            writer.writerow([code, " ".join(map(str, pixels.reshape(-1).tolist())), usage])


# ---------------------------------------------------------------- FERPlus

# (name, votes by column for face emotion e and a second emotion f, shared label the face shows)
# f is another emotion than e; "e"/"f" are placeholders the writer fills in per row.
FERPLUS_PATTERNS = (
    ("clear majority", {"e": 8, "f": 2}),
    ("plurality without majority", {"e": 5, "f": 3, "unknown": 2}),
    ("majority with unknown votes", {"e": 6, "f": 2, "unknown": 2}),
    ("tie", {"e": 4, "f": 4, "NF": 2}),
    ("unknown wins", {"unknown": 6, "e": 4}),
    ("NF wins", {"NF": 7, "e": 3}),
    ("empty Image name", {"NF": 10}),
    ("contempt majority", {"contempt": 7, "neutral": 3}),
)
_FERPLUS_DROPPED = {"unknown wins": "argmax unknown", "NF wins": "argmax NF", "empty Image name": "empty Image name"}
_FER_CODE_FOR_CONTEMPT = FER2013_NAMES.index("Disgust")  # FER2013 has no contempt; any code does for its sheet


def write_ferplus(root: Path | str, per_split: Sequence[int] = (16, 8, 8), seed: int = 0) -> Written:
    """fer2013.csv and fer2013new.csv side by side in `root`; row k of one is row k of the other."""
    root = Path(root)
    sheet, votes_sheet = root / "fer2013.csv", root / "fer2013new.csv"
    fer_rows, vote_rows, records = [], [], []
    for split, j, k in split_plan(per_split, tuple(FER2013_USAGE)):
        pattern, template = FERPLUS_PATTERNS[k % len(FERPLUS_PATTERNS)]
        votes, shown = _ferplus_votes(template, k)
        image = (noise_image(rng_of(seed, k, 11), FER_SIZE, FER_SIZE) if pattern == "NF wins"
                 else face(split, k, shown, seed, FER_SIZE))
        fer_code = _fer_code(shown)
        fer_rows.append((fer_code, gray(image), FER2013_USAGE[split]))
        name = "" if pattern == "empty Image name" else f"fer{k:07d}.png"
        vote_rows.append([FER2013_USAGE[split], name, *[votes[c] for c in FERPLUS_COLUMNS]])
        records.append(_ferplus_record(votes_sheet, sheet, k, votes, pattern, fer_code,
                                       {"split": split, "identity": identity_of(split, k), "image_name": name}))
    write_fer_sheet(sheet, fer_rows)
    _write_rows(votes_sheet, ["Usage", "Image name", *FERPLUS_COLUMNS], vote_rows)
    return Written(root, records, votes_sheet, notes=["fer2013.csv holds the pixels, fer2013new.csv the votes"])


def _ferplus_votes(template: dict, k: int) -> tuple[dict[str, int], int]:
    """Votes by FERPlus column and the shared label of the face to draw."""
    e = k % 7  # the seven emotions besides contempt, in the shared order
    f = (e + 3) % 7
    column_of = {shared_label(c): c for c in FERPLUS_COLUMNS[:8]}
    votes = dict.fromkeys(FERPLUS_COLUMNS, 0)
    for key, count in template.items():
        votes[column_of[e] if key == "e" else column_of[f] if key == "f" else key] += count
    shown = EMOTIONS.index("contempt") if votes["contempt"] else e
    return votes, shown


def _fer_code(label: int) -> int:
    names = [shared_label(n) for n in FER2013_NAMES]
    return names.index(label) if label in names else _FER_CODE_FOR_CONTEMPT


def _ferplus_record(votes_sheet: Path, sheet: Path, k: int, votes: dict, pattern: str, fer_code: int,
                    extra: dict) -> Expected:
    shared = np.zeros(10, dtype=np.int64)
    for column, count in votes.items():
        shared[shared_label(column) if column in FERPLUS_COLUMNS[:8] else FERPLUS_COLUMNS.index(column)] += count
    emotions = shared[:8]
    dropped = _FERPLUS_DROPPED.get(pattern)
    top = int(np.argmax(emotions))
    labels = {
        "emotion": None if dropped else top,
        "code": fer_code,
        "votes": shared,
        "majority": top if not dropped and emotions[top] * 2 > shared.sum() else None,
        "soft": None if dropped else emotions / emotions.sum(),
        "pattern": pattern,
    }
    return _fer_record("ferplus", sheet, k, labels, {**extra, "votes_sheet": votes_sheet},
                       problems=(dropped,) if dropped else ())


def _write_rows(path: Path, header: Sequence[str] | None, rows: Sequence[Sequence]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)


# ---------------------------------------------------------------- RAF-DB


def write_rafdb(root: Path | str, per_split: Sequence[int] = (14, 7), seed: int = 0, size: int = 100) -> Written:
    """Seven classes, train_ then test_ lines as in the released list; `size` is 100 in the real aligned set."""
    root = Path(root)
    listing = root / "EmoLabel" / "list_patition_label.txt"
    lines, records = [], []
    for split, j, k in split_plan(per_split, ("train", "test")):
        code = k % len(RAFDB_NAMES) + 1
        label = shared_label(RAFDB_NAMES[code - 1])
        name = f"train_{j + 1:05d}.jpg" if split == "train" else f"test_{j + 1:04d}.jpg"
        image = root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg"
        write_image(image, face(split, k, label, seed, size))
        lines.append(f"{name} {code}")
        records.append(Expected("rafdb", "", "image", image, None, {"emotion": label, "code": code},
                                {"split": split, "identity": identity_of(split, k), "name": name}, row=len(lines) - 1))
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(lines) + "\n")
    return Written(root, records, listing, notes=["codes are 1-based; split by name prefix"])


# ---------------------------------------------------------------- AffectNet (classic)


def write_affectnet(root: Path | str, per_split: Sequence[int] = (22, 11), seed: int = 0,
                    face_size: int = 48) -> Written:
    """Codes cycle through 0..10, so every split holds None, Uncertain and No-Face rows (left out by loaders)."""
    root = Path(root)
    records = []
    for split, count in zip(AFFECTNET_SHEETS, _two(per_split)):
        sheet = root / "Manually_Annotated_file_lists" / AFFECTNET_SHEETS[split]
        rows = []
        for j in range(count):
            k = j + (0 if split == "train" else 1000)
            row, record = _affectnet_row(root, split, j, k, seed, face_size)
            rows.append(row)
            records.append(record)
        _write_rows(sheet, AFFECTNET_HEADER, rows)
    return Written(root, records, root / "Manually_Annotated_file_lists",
                   notes=["training.csv -> train, validation.csv -> test; codes 8-10 are not samples"])


def _two(per_split: Sequence[int]) -> Sequence[int]:
    if len(per_split) != 2:
        raise ValueError(f"per_split needs (train, test) counts, got {list(per_split)}")
    return per_split


def _affectnet_row(root: Path, split: str, j: int, k: int, seed: int, face_size: int):
    rng = rng_of(seed, k, 13)
    code = j % len(AFFECTNET_NAMES)
    label = code if code < 8 else int(rng.integers(0, 8))  # None/Uncertain rows still show some face
    height, width = (int(face_size * rng.uniform(1.3, 2.0)) for _ in range(2))
    x, y = int(rng.integers(0, width - face_size + 1)), int(rng.integers(0, height - face_size + 1))
    canvas = noise_image(rng, height, width)
    if code != 10:
        canvas[y:y + face_size, x:x + face_size] = face(split, k, label, seed, face_size)
    relative = f"{int(rng.integers(1, 1000))}/{rng.bytes(28).hex()}.jpg"
    image = root / "Manually_Annotated_Images" / relative
    write_image(image, canvas)
    box = (x, y, face_size, face_size)
    valence, arousal = (-2.0, -2.0) if code >= 9 else (round(float(v), 6) for v in rng.uniform(-1, 1, 2))
    row = [relative, *box, landmark_text(box, rng), code, valence, arousal]
    dropped = (f"expression {code} ({AFFECTNET_NAMES[code]})",) if code >= 8 else ()
    record = Expected("affectnet", "", "image", image, None, {"emotion": None if dropped else code, "code": code},
                      {"split": split, "identity": identity_of(split, k), "face_box": box}, row=j, problems=dropped)
    return row, record


def landmark_text(box: Sequence[int], rng: np.random.Generator) -> str:
    """68 iBUG points inside the box, written as the release does: x;y;x;y;... with two decimals."""
    x, y, w, h = box
    points = LANDMARKS_68 * [w, h] + [x, y] + rng.normal(0, 0.01 * w, LANDMARKS_68.shape)
    return ";".join(f"{v:.2f}" for v in points.reshape(-1))


def _ibug_mean_shape() -> np.ndarray:
    """A rough iBUG-68 layout in a unit face box: jaw, brows, nose, eyes, mouth, in the standard order."""
    t = np.linspace(np.pi, 0, 17)
    jaw = np.stack([0.5 + 0.48 * np.cos(t), 0.45 + 0.5 * np.sin(t)], 1)
    brow = lambda x0: np.stack([np.linspace(x0, x0 + 0.3, 5), 0.3 - 0.04 * np.sin(np.linspace(0, np.pi, 5))], 1)
    nose = np.concatenate([np.stack([np.full(4, 0.5), np.linspace(0.38, 0.58, 4)], 1),
                           np.stack([np.linspace(0.42, 0.58, 5), np.full(5, 0.64)], 1)])
    eye = lambda cx: np.stack([cx + 0.08 * np.cos(np.linspace(np.pi, -np.pi, 7)[:6]),
                               0.4 + 0.03 * np.sin(np.linspace(np.pi, -np.pi, 7)[:6])], 1)
    outer = np.stack([0.5 + 0.17 * np.cos(np.linspace(np.pi, -np.pi, 13)[:12]),
                      0.78 + 0.07 * np.sin(np.linspace(np.pi, -np.pi, 13)[:12])], 1)
    inner = np.stack([0.5 + 0.12 * np.cos(np.linspace(np.pi, -np.pi, 9)[:8]),
                      0.78 + 0.03 * np.sin(np.linspace(np.pi, -np.pi, 9)[:8])], 1)
    return np.concatenate([jaw, brow(0.15), brow(0.55), nose, eye(0.32), eye(0.68), outer, inner])


LANDMARKS_68 = _ibug_mean_shape()


# ---------------------------------------------------------------- AffectNet (npy release)


def write_affectnet_npy(root: Path | str, per_split: Sequence[int] = (18, 9), seed: int = 0,
                        size: int = 64) -> Written:
    """Codes cycle 0..7 with every ninth sample a code 8-10; the image index steps by 7 from 3."""
    root = Path(root)
    records = []
    for split, count in zip(AFFECTNET_NPY_FOLDERS, _two(per_split)):
        folder = root / AFFECTNET_NPY_FOLDERS[split]
        for j in range(count):
            records.append(_affectnet_npy_sample(folder, split, j, j + (0 if split == "train" else 1000), seed, size))
    return Written(root, records, None, notes=["train_set -> train, val_set -> test; codes 8-10 are not samples"])


def _affectnet_npy_sample(folder: Path, split: str, j: int, k: int, seed: int, size: int) -> Expected:
    rng = rng_of(seed, k, 17)
    code = j % 9 if j % 9 < 8 else 8 + (j // 9) % 3
    index = 3 + 7 * j
    image = folder / "images" / f"{index}.jpg"
    write_image(image, noise_image(rng, size, size) if code == 10
                else face(split, k, code if code < 8 else int(rng.integers(0, 8)), seed, size))
    annotations = folder / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    np.save(annotations / f"{index}_exp.npy", np.array(str(code)) if j % 2 else np.array(code))
    np.save(annotations / f"{index}_val.npy", np.array(str(round(float(rng.uniform(-1, 1)), 6))))
    np.save(annotations / f"{index}_aro.npy", np.array(str(round(float(rng.uniform(-1, 1)), 6))))
    np.save(annotations / f"{index}_lnd.npy", (LANDMARKS_68 * size).reshape(-1).astype(np.float64))
    dropped = (f"expression {code} ({AFFECTNET_NAMES[code]})",) if code >= 8 else ()
    return Expected("affectnet_npy", "", "image", image, None, {"emotion": None if dropped else code, "code": code},
                    {"split": split, "identity": identity_of(split, k), "annotation": annotations / f"{index}_exp.npy"},
                    problems=dropped)
