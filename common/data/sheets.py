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


def find_named(root: Path, names: Sequence[str], folders: Sequence[str], what: str) -> Path:
    """The first of `names` (compared case-insensitively) found in one of `folders` under root, tried name by name:
    releases move their sheets between folders and change the case of their names."""
    listings = {}
    for folder in folders:
        base = root / folder
        listings[folder] = {p.name.lower(): p for p in base.iterdir() if p.is_file()} if base.is_dir() else {}
    for name in names:
        for folder in folders:
            found = listings[folder].get(name.lower())
            if found is not None:
                return found
    where = ", ".join(f"{f}/" if f else "the root" for f in folders)
    raise FileNotFoundError(f"{root}: {what} not found (looked for {', '.join(names)} in {where}, any case)")


def find_file(root: Path, candidates: Sequence[str], what: str) -> Path:
    for candidate in candidates:
        if (root / candidate).is_file():
            return root / candidate
    raise FileNotFoundError(f"{root}: {what} not found (looked for {', '.join(candidates)})")


def sheet_error(path: Path, sheet: str, row: int, reason: str) -> AnnotationError:
    return AnnotationError(f"{path}, sheet {sheet!r}, row {row}: {reason}")


def excel_rows(path: Path, required: Sequence[str], sheet: str | None = None, header_search: int = 40
               ) -> tuple[str, list[tuple[int, dict]]]:
    """The sheet's name and, for each data row of an .xlsx or .xls sheet, (row number as Excel shows it, cells by
    column name).

    The header is the first of the first `header_search` rows that holds every `required` column (compared
    case-insensitively, spaces stripped), so free text above it (SAMM) is passed over; cells keep their types
    (numbers, text, None). Blank rows are not rows. `sheet` None means the first sheet.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation sheet not found")
    name, rows = sheet_values(path, sheet)
    wanted = {_column_key(c): c for c in required}
    for number, row in enumerate(rows[:header_search], start=1):
        keys = [_column_key(cell) for cell in row]
        if all(key in keys for key in wanted):
            columns = [wanted.get(key, "" if cell is None else str(cell).strip()) for key, cell in zip(keys, row)]
            data = [(offset, dict(zip(columns, list(cells) + [None] * (len(columns) - len(cells)))))
                    for offset, cells in enumerate(rows[number:], start=number + 1)
                    if any(cell is not None and str(cell).strip() for cell in cells)]
            return name, data
    raise AnnotationError(f"{path}, sheet {name!r}: no header row with the columns {', '.join(required)} in its "
                          f"first {header_search} rows")


def _column_key(cell) -> str:
    return "" if cell is None else "".join(str(cell).split()).lower()


def sheet_names(path: Path) -> list[str]:
    """The sheet names of an .xlsx or .xls workbook, in order."""
    if path.suffix.lower() == ".xls":
        import xlrd

        return list(xlrd.open_workbook(str(path), on_demand=True).sheet_names())
    from openpyxl import load_workbook

    book = load_workbook(path, read_only=True)
    try:
        return list(book.sheetnames)
    finally:
        book.close()


def sheet_values(path: Path, sheet: str | None) -> tuple[str, list[list]]:
    """(sheet name, every row's cell values) of an .xlsx or .xls sheet, for sheets without a header row; `sheet`
    None means the first sheet."""
    if path.suffix.lower() == ".xls":
        import xlrd

        book = xlrd.open_workbook(str(path))
        names = book.sheet_names()
        chosen = names[0] if sheet is None else sheet
        if chosen not in names:
            raise AnnotationError(f"{path}: no sheet {chosen!r} (sheets: {names})")
        table = book.sheet_by_name(chosen)
        return chosen, [[None if c.ctype == xlrd.XL_CELL_EMPTY else c.value for c in table.row(r)]
                        for r in range(table.nrows)]
    from openpyxl import load_workbook

    book = load_workbook(path, read_only=True, data_only=True)
    try:
        chosen = book.sheetnames[0] if sheet is None else sheet
        if chosen not in book.sheetnames:
            raise AnnotationError(f"{path}: no sheet {chosen!r} (sheets: {book.sheetnames})")
        return chosen, [list(row) for row in book[chosen].iter_rows(values_only=True)]
    finally:
        book.close()
