"""Parsers of the real macro-expression datasets, registered for `common.prepare` and the data module.

Every dataset's codes map into the shared order of common/labels.yaml (neutral, happy, sad, surprise, fear,
disgust, anger, contempt); each sample is tagged with its official split in extra["split"]:

    fer2013        fer2013.csv (or fer2013/fer2013.csv as Kaggle unpacks it): Training -> train,
                   PublicTest -> val, PrivateTest -> test. Faces are read from the sheet's pixels by the reader
                   kind `fer2013_pixels`, which numbers the sheet's data rows like frames. Sample id: the line.
    ferplus        fer2013new.csv beside fer2013.csv, row for row; same splits. Labels keep the votes
                   (shared order, then unknown, NF); rows with an empty Image name or whose most voted column is
                   unknown or NF are left out, as FERPlus defines. Sample id: the Image name.
    rafdb          EmoLabel/list_patition_label.txt + Image/aligned/*_aligned.jpg; train_ -> train, test_ -> test.
    affectnet      Manually_Annotated_file_lists/{training,validation}.csv + Manually_Annotated_Images/;
                   training -> train, validation -> test (its de-facto test set); codes 8-10 left out; the
                   face box goes to extra["face_box"], so reading crops it.
    affectnet_npy  {train_set,val_set}/images/<i>.jpg + annotations/<i>_exp.npy; train_set -> train,
                   val_set -> test; codes 8-10 left out.

A row that cannot be read, a label code the dataset does not define or an image that is not there stops the
parser with the file and the line (as an editor numbers it); rows left out by a dataset's own rules are
counted in the log.
"""
from __future__ import annotations

import functools
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from common.data import register_dataset, report_left_out
from common.data.readers import FrameSource, ReadError, register_reader
from common.data.records import Interval, Sample
from common.data.sheets import AnnotationError, MissingImageError, csv_rows, find_file, integer, number, row_error
from common.labels import class_names, code_map, code_names, left_out_codes

EMOTION_CLASSES = tuple(class_names("emotion"))
SPLITS = ("train", "val", "test")

# dataset code -> shared label (common/labels.yaml)
FER2013_TO_SHARED = code_map("fer2013")
FER2013_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FER2013_FILES = ("fer2013.csv", "fer2013/fer2013.csv")
FER_SIDE = 48
FERPLUS_EMOTIONS = tuple(code_names("ferplus"))  # vote columns in file order
FERPLUS_TO_SHARED = tuple(code_map("ferplus")[column] for column in FERPLUS_EMOTIONS)
FERPLUS_COLUMNS = (*FERPLUS_EMOTIONS, "unknown", "NF")
RAFDB_TO_SHARED = code_map("rafdb")
RAFDB_LIST = "EmoLabel/list_patition_label.txt"
AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                     "expression", "valence", "arousal")
AFFECTNET_SHEETS = {"train": "training.csv", "test": "validation.csv"}
AFFECTNET_NPY_FOLDERS = {"train": "train_set", "test": "val_set"}
AFFECTNET_TO_SHARED = code_map("affectnet")
AFFECTNET_DROPPED = left_out_codes("affectnet")
FER_PIXELS_KIND = "fer2013_pixels"


def existing_image(path: Path, sheet: Path, line: int | None) -> Path:
    if not path.is_file():
        where = f"{sheet}, line {line}" if line is not None else f"{sheet}"
        raise MissingImageError(f"{where}: image {path} not found")
    return path


def split_of(value: str, table: dict[str, str], path: Path, line: int) -> str:
    if value.strip() not in table:
        raise row_error(path, line, f"Usage {value!r} is not one of {', '.join(table)}")
    return table[value.strip()]


# ---------------------------------------------------------------- FER2013 pixels as a frame source


def decode_pixels(text: str, path: Path, line: int) -> np.ndarray:
    with warnings.catch_warnings():  # numpy warns, and stops early, on a token that is not a number
        warnings.simplefilter("ignore", DeprecationWarning)
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    if values.size != FER_SIDE * FER_SIDE or values.min() < 0 or values.max() > 255:
        raise row_error(path, line, f"pixels must be {FER_SIDE * FER_SIDE} values 0-255 separated by spaces")
    return values.astype(np.uint8).reshape(FER_SIDE, FER_SIDE)


@functools.lru_cache(maxsize=2)
def _sheet_faces(path: str, stamp: tuple[int, int]) -> np.ndarray:
    """Every face of a sheet, decoded once per process (the stamp makes an edited file decode again)."""
    rows = csv_rows(Path(path), ("pixels",))
    faces = [decode_pixels(cells["pixels"], Path(path), line) for line, cells in rows]
    return np.stack(faces) if faces else np.zeros((0, FER_SIDE, FER_SIDE), np.uint8)


class PixelSheet(FrameSource):
    """The faces of a FER2013 sheet as gray-to-RGB frames numbered by data row (0 = the row after the header)."""

    def __init__(self, path: Path | str, fps: float | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ReadError(f"{self.path}: FER2013 sheet not found")
        status = self.path.stat()
        self.faces = _sheet_faces(str(self.path.resolve()), (status.st_mtime_ns, status.st_size))
        self.numbers = np.arange(len(self.faces), dtype=np.int64)
        self.fps = fps

    def _read_positions(self, positions: np.ndarray) -> np.ndarray:
        return np.repeat(self.faces[positions][..., None], 3, axis=-1)


register_reader(FER_PIXELS_KIND, PixelSheet)


def fer_sample(dataset: str, sheet: Path, row: int, labels: dict, extra: dict) -> Sample:
    """A face of the pixel sheet; its id is the sheet line (as an editor numbers it) unless `extra` names one."""
    extra = {"id": f"{sheet.name}:{row + 2}", **extra}
    return Sample(dataset, "", FER_PIXELS_KIND, sheet, Interval(row, row, row), labels=labels, extra=extra)


# ---------------------------------------------------------------- parsers


@register_dataset("fer2013", task="emotion")
def fer2013(root: Path) -> list[Sample]:
    sheet = find_file(root, FER2013_FILES, "FER2013 sheet")
    samples = []
    for row, (line, cells) in enumerate(csv_rows(sheet, ("emotion", "pixels", "Usage"))):
        code = integer(cells["emotion"], sheet, line, "emotion")
        if code not in FER2013_TO_SHARED:
            raise row_error(sheet, line, f"emotion code {code} is not a FER2013 code (0-6)")
        if len(cells["pixels"].split()) != FER_SIDE * FER_SIDE:
            raise row_error(sheet, line, f"pixels must hold {FER_SIDE * FER_SIDE} values")
        split = split_of(cells["Usage"], FER2013_USAGE, sheet, line)
        samples.append(fer_sample("fer2013", sheet, row, {"emotion": FER2013_TO_SHARED[code]}, {"split": split}))
    return samples


@register_dataset("ferplus", task="emotion")
def ferplus(root: Path) -> list[Sample]:
    votes_sheet = find_file(root, ("fer2013new.csv",), "FERPlus votes")
    pixel_sheet = find_file(root, FER2013_FILES, "FER2013 sheet (FERPlus labels its rows)")
    usages = [(line, cells["Usage"].strip()) for line, cells in csv_rows(pixel_sheet, ("Usage",))]
    samples, left_out, count = [], Counter(), 0
    for row, (line, cells) in enumerate(csv_rows(votes_sheet, ("Usage", "Image name", *FERPLUS_COLUMNS))):
        count += 1
        check_aligned(votes_sheet, line, cells["Usage"], pixel_sheet, usages, row)
        votes = shared_votes(cells, votes_sheet, line)
        reason = ferplus_rule(cells["Image name"], votes)
        if reason:
            left_out[reason] += 1
            continue
        split = split_of(cells["Usage"], FER2013_USAGE, votes_sheet, line)
        samples.append(fer_sample("ferplus", pixel_sheet, row, {"emotion": int(np.argmax(votes[:8])), "votes": votes},
                                  {"split": split, "id": cells["Image name"].strip()}))
    if count != len(usages):
        raise AnnotationError(f"{votes_sheet} has {count} rows but {pixel_sheet} has {len(usages)}; "
                              f"FERPlus labels FER2013 row for row, so both must be complete")
    report_left_out("ferplus", votes_sheet, left_out)
    return samples


def check_aligned(votes_sheet: Path, line: int, usage: str, pixel_sheet: Path, usages: list, row: int) -> None:
    if row >= len(usages):
        raise row_error(votes_sheet, line, f"no row {row + 1} in {pixel_sheet} (it has {len(usages)} rows)")
    pixel_line, pixel_usage = usages[row]
    if usage.strip() != pixel_usage:
        raise row_error(votes_sheet, line, f"Usage {usage.strip()!r} differs from {pixel_usage!r} at {pixel_sheet}, "
                                           f"line {pixel_line}; the two sheets must be aligned row for row")


def shared_votes(cells: dict[str, str], path: Path, line: int) -> np.ndarray:
    """Votes in the shared order, then unknown and NF."""
    raw = [integer(cells[c], path, line, c) for c in FERPLUS_COLUMNS]
    if min(raw) < 0 or sum(raw) == 0:
        raise row_error(path, line, f"votes must be counts >= 0 with at least one vote, got {raw}")
    votes = np.zeros(len(FERPLUS_COLUMNS), dtype=np.int64)
    votes[list(FERPLUS_TO_SHARED)] = raw[:8]
    votes[8:] = raw[8:]
    return votes


def ferplus_rule(image_name: str, votes: np.ndarray) -> str | None:
    """Why FERPlus itself discards a row, or None. A tie between an emotion and unknown/NF keeps the row:
    the emotion columns come first, so the reference's argmax picks the emotion."""
    if not image_name.strip():
        return "empty Image name"
    if votes[8:].max() > votes[:8].max():
        return "argmax unknown" if votes[8] >= votes[9] else "argmax NF"
    return None


@register_dataset("rafdb", task="emotion")
def rafdb(root: Path) -> list[Sample]:
    listing = root / RAFDB_LIST
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: RAF-DB label list not found (expected {RAFDB_LIST} under {root})")
    samples = []
    for line, text in enumerate(listing.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if text.strip():
            samples.append(rafdb_sample(root, listing, line, text))
    return samples


def rafdb_sample(root: Path, listing: Path, line: int, text: str) -> Sample:
    parts = text.split()
    if len(parts) != 2:
        raise row_error(listing, line, f"expected '<image name> <label>', got {text.strip()!r}")
    name, code = parts[0], integer(parts[1], listing, line, "label")
    if code not in RAFDB_TO_SHARED:
        raise row_error(listing, line, f"label {code} is not a RAF-DB basic code (1-7)")
    split = name.split("_")[0]
    if split not in ("train", "test"):
        raise row_error(listing, line, f"image name {name!r} starts with neither train_ nor test_")
    image = existing_image(root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg", listing, line)
    return Sample("rafdb", "", "image", image, labels={"emotion": RAFDB_TO_SHARED[code]}, extra={"split": split})


@register_dataset("affectnet", task="emotion")
def affectnet(root: Path) -> list[Sample]:
    samples = []
    for split, name in AFFECTNET_SHEETS.items():
        samples += affectnet_sheet(root, root / "Manually_Annotated_file_lists" / name, split)
    return samples


def affectnet_sheet(root: Path, sheet: Path, split: str) -> list[Sample]:
    samples, left_out = [], Counter()
    for line, cells in csv_rows(sheet, AFFECTNET_COLUMNS, default_header=AFFECTNET_COLUMNS):
        code = affectnet_code(cells["expression"], sheet, line)
        if code in AFFECTNET_DROPPED:
            left_out[f"expression {code} ({AFFECTNET_DROPPED[code]})"] += 1
            continue
        samples.append(affectnet_sample(root, sheet, line, cells, code, split))
    report_left_out("affectnet", sheet, left_out)
    return samples


def affectnet_code(cell: str, path: Path, line: int) -> int:
    code = integer(cell, path, line, "expression")
    if code not in AFFECTNET_TO_SHARED and code not in AFFECTNET_DROPPED:
        raise row_error(path, line, f"expression {code} is not an AffectNet code (0-10)")
    return code


def affectnet_sample(root: Path, sheet: Path, line: int, cells: dict[str, str], code: int, split: str) -> Sample:
    box = [number(cells[c], sheet, line, c) for c in ("face_x", "face_y", "face_width", "face_height")]
    if box[2] <= 0 or box[3] <= 0:
        raise row_error(sheet, line, f"face box {box} has no area")
    image = existing_image(root / "Manually_Annotated_Images" / cells["subDirectory_filePath"].strip(), sheet, line)
    labels = {"emotion": AFFECTNET_TO_SHARED[code], "valence": number(cells["valence"], sheet, line, "valence"),
              "arousal": number(cells["arousal"], sheet, line, "arousal")}
    return Sample("affectnet", "", "image", image, labels=labels, extra={"split": split, "face_box": box})


@register_dataset("affectnet_npy", task="emotion")
def affectnet_npy(root: Path) -> list[Sample]:
    samples = []
    for split, folder in AFFECTNET_NPY_FOLDERS.items():
        samples += affectnet_npy_folder(root / folder, split)
    return samples


def affectnet_npy_folder(folder: Path, split: str) -> list[Sample]:
    annotations = folder / "annotations"
    files = sorted(annotations.glob("*_exp.npy"), key=lambda p: _natural(p.name)) if annotations.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{annotations}: no <index>_exp.npy files (AffectNet npy release layout expected)")
    samples, left_out = [], Counter()
    for path in files:
        code = npy_code(path)
        if code in AFFECTNET_DROPPED:
            left_out[f"expression {code} ({AFFECTNET_DROPPED[code]})"] += 1
            continue
        image = existing_image(folder / "images" / f"{path.name[: -len('_exp.npy')]}.jpg", path, None)
        samples.append(Sample("affectnet_npy", "", "image", image, labels={"emotion": AFFECTNET_TO_SHARED[code]},
                              extra={"split": split}))
    report_left_out("affectnet_npy", annotations, left_out)
    return samples


def npy_code(path: Path) -> int:
    """Copies of the release store the code as an integer or as its text."""
    try:
        value = np.load(path, allow_pickle=False)
        code = int(str(value.item()).strip())
    except (ValueError, OSError, TypeError) as error:
        raise AnnotationError(f"{path}: expression is not an integer code ({error})") from None
    if code not in AFFECTNET_TO_SHARED and code not in AFFECTNET_DROPPED:
        raise AnnotationError(f"{path}: expression {code} is not an AffectNet code (0-10)")
    return code


def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
