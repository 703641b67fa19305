"""Reading annotation sheets so that every problem names the file and the line a user sees in an editor."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterator, Sequence


class AnnotationError(ValueError):
    """A row of an annotation file that cannot be used; the message names the file and the line."""


class MissingImageError(FileNotFoundError):
    pass


def row_error(path: Path, line: int, reason: str) -> AnnotationError:
    return AnnotationError(f"{path}, line {line}: {reason}")


def csv_rows(path: Path, required: Sequence[str], default_header: Sequence[str] | None = None
             ) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, cells by stripped column name) for each data row; blank lines are not rows.

    `default_header` reads a sheet whose header row is missing (some copies of AffectNet's validation.csv):
    a first row without the required columns but with the right number of cells is then data.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        columns, first = _header(path, next(reader, None), required, default_header)
        rows = reader if first is None else _prepend(first, reader)
        for cells in rows:
            line = 1 if cells is first else reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(columns):
                raise row_error(path, line, f"{len(cells)} cells where the header has {len(columns)}")
            yield line, dict(zip(columns, cells))


def _header(path: Path, row: list[str] | None, required: Sequence[str], default_header: Sequence[str] | None):
    """The column names, and the first row when it turns out to be data."""
    if row is None:
        raise AnnotationError(f"{path}: file is empty")
    columns = [cell.strip() for cell in row]
    if all(name in columns for name in required):
        return columns, None
    if default_header is not None and len(row) == len(default_header):
        return list(default_header), row
    raise row_error(path, 1, f"expected columns {', '.join(required)}; found {', '.join(columns)}")


def _prepend(first: list[str], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rest


def integer(cell: str, path: Path, line: int, column: str) -> int:
    try:
        return int(cell.strip())
    except ValueError:
        raise row_error(path, line, f"{column} {cell!r} is not an integer") from None


def number(cell: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(cell.strip())
    except ValueError:
        raise row_error(path, line, f"{column} {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise row_error(path, line, f"{column} {cell!r} is not a finite number")
    return value


def find_file(root: Path, candidates: Sequence[str], what: str) -> Path:
    for candidate in candidates:
        if (root / candidate).is_file():
            return root / candidate
    raise FileNotFoundError(f"{root}: {what} not found (looked for {', '.join(candidates)})")
