"""Reading a user's CSV and inferring what each column is: image, text, json, label or ignore, with the reason."""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from headsmith.errors import DatasetError

COLUMN_TYPES = ("image", "text", "json", "label", "ignore")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
MAX_LABEL_CLASSES = 50
MAX_CELL_CHARS = 1_000_000

csv.field_size_limit(sys.maxsize)  # cells are measured below, with a message that names the row and column


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CsvTable:
    path: Path
    columns: list[str]
    rows: list[tuple[int, list[str]]]  # (line where the row starts, cells)

    def values(self, column: str) -> list[str]:
        i = self.columns.index(column)
        return [cells[i] for _, cells in self.rows]


# Byte-order marks, longest first (UTF-32 LE's begins with UTF-16 LE's): the mark says the encoding.
BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16")]


def _decode(path: Path, raw: bytes, encoding: str | None) -> str:
    if encoding is None:
        encoding = next((name for mark, name in BOMS if raw.startswith(mark)), None)
    try:
        text = raw.decode(encoding or "utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        if encoding:
            raise DatasetError(f"{path}: line {line} is not valid {encoding} (byte {raw[e.start:e.start + 1]!r} at "
                               f"offset {e.start}); pass the file's real encoding with --encoding") from None
        raise DatasetError(f"{path}: not UTF-8: line {line} has byte {raw[e.start:e.start + 1]!r} (offset {e.start}). "
                           "Re-save the file as UTF-8, or pass its encoding, e.g. --encoding cp1252 (Excel on Windows) "
                           "or --encoding latin-1") from None
    except LookupError:
        raise DatasetError(f"--encoding {encoding}: Python knows no such encoding") from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the first column's name


DELIMITERS = (",", ";", "\t", "|")  # in order of preference when two split a file equally well


def _delimiter(text: str, sample: int = 200) -> str:
    """The delimiter of a CSV, read from its first records with quotes and quoted line breaks honoured: the one
    that splits them into the most fields, the same number in each; else the one that splits the header (the rows
    that do not fit are then named); else, one column, any that leaves every record whole. csv.Sniffer guesses
    wrong on real text columns too often to be trusted."""
    records = {}
    for delimiter in DELIMITERS:
        try:
            records[delimiter] = [r for r in itertools.islice(csv.reader(io.StringIO(text, newline=""),
                                                                         delimiter=delimiter), sample)
                                  if any(cell.strip() for cell in r)]
        except csv.Error:
            continue
    consistent = [d for d, rows in records.items() if rows and len({len(r) for r in rows}) == 1]
    best = max(consistent, key=lambda d: len(records[d][0]), default=None)  # on a tie, the first in DELIMITERS
    if best and len(records[best][0]) > 1:
        return best
    named = [d for d, rows in records.items()  # a header it splits into two or more names, each given once
             if rows and len(rows[0]) > 1 and all(n.strip() for n in rows[0]) and len(set(rows[0])) == len(rows[0])]
    if named:
        return max(named, key=lambda d: len(records[d][0]))
    return best or ","


def read_table(path: Path | str, encoding: str | None = None, max_cell_chars: int = MAX_CELL_CHARS) -> CsvTable:
    """Parse a CSV of any common dialect (delimiter sniffed; quoted newlines kept) or say exactly what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    text = _decode(path, path.read_bytes(), encoding)
    if not text.strip():
        raise DatasetError(f"{path}: the file is empty; it needs a header row and at least one data row")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    try:
        header = [name.strip() for name in next(reader)]
        empty = [i + 1 for i, name in enumerate(header) if not name]
        if empty:
            raise DatasetError(f"{path}: header column {empty[0]} has no name; name every column")
        repeated = sorted(name for name, n in Counter(header).items() if n > 1)
        if repeated:
            raise DatasetError(f"{path}: the header names {', '.join(repr(r) for r in repeated)} more than once; "
                               "column names must be unique")
        rows, start = [], reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue  # blank line
            if len(cells) != len(header):
                raise DatasetError(f"{path}:{line}: this row has {len(cells)} fields but the header has {len(header)}"
                                   "; quote fields that contain the delimiter, or fix the row")
            for name, cell in zip(header, cells):
                if len(cell) > max_cell_chars:
                    raise DatasetError(f"{path}:{line}: column '{name}' holds {len(cell):,} characters, more than "
                                       f"{max_cell_chars:,}; shorten or remove that row")
            rows.append((line, cells))
    except csv.Error as e:
        raise DatasetError(f"{path}:{reader.line_num}: cannot parse as CSV: {e}") from None
    if not rows:
        raise DatasetError(f"{path}: has a header but no data rows")
    return CsvTable(path, header, rows)


def is_media_ref(value: str) -> bool:
    """A URL (http, https, file, or another fsspec scheme) or a local path to an image file."""
    parsed = urlparse(value)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return True
    if parsed.scheme and len(parsed.scheme) > 1 and parsed.scheme != "file" and "://" in value:
        return parsed.path.lower().endswith(IMAGE_EXTENSIONS)
    return value.lower().endswith(IMAGE_EXTENSIONS) and " " not in value.strip()


def _ref_kind(value: str) -> str:
    scheme = urlparse(value).scheme
    if scheme in ("http", "https"):
        return "http(s) URLs"
    return "local paths" if not scheme or len(scheme) == 1 else f"{scheme}:// URLs"


def infer_column(name: str, values: list[str]) -> Column:
    filled = [v.strip() for v in values if v.strip()]
    if not filled:
        return Column(name, "ignore", "empty in every row")
    n = len(filled)
    refs = [v for v in filled if is_media_ref(v)]
    if len(refs) >= 0.9 * n:
        kinds = Counter(_ref_kind(v) for v in refs)
        kind, count = kinds.most_common(1)[0]
        endings = Counter(Path(urlparse(v).path).suffix.lower() for v in refs if _ref_kind(v) == kind)
        ext, with_ext = endings.most_common(1)[0]
        ending = "" if not ext else f" ending in {ext}" if with_ext == count else f" mostly ending in {ext}"
        return Column(name, "image", f"{count / n:.0%} of values are {kind}{ending}")
    parsed = sum(1 for v in filled if v[0] in "[{" and _is_json(v))
    if parsed >= 0.9 * n:
        return Column(name, "json", f"{parsed / n:.0%} of values are JSON objects or arrays")
    distinct = Counter(v.casefold() for v in filled)  # case variants are one class (merged at import)
    if len(distinct) <= MAX_LABEL_CLASSES and len(distinct) <= max(0.2 * n, n ** 0.5):
        top = ", ".join(f"{v} {c}" for v, c in distinct.most_common(3))
        return Column(name, "label", f"{len(distinct)} distinct value{'s' if len(distinct) > 1 else ''} over {n} "
                                     f"rows ({top}{', ...' if len(distinct) > 3 else ''})")
    mean = sum(len(v) for v in filled) / n
    if len(distinct) == n and mean < 40 and not any(" " in v for v in filled):
        return Column(name, "ignore", "a different short value in every row: an identifier")
    return Column(name, "text", f"free text: {len(distinct)} distinct values, {mean:.0f} characters on average")


def _is_json(value: str) -> bool:
    try:
        return isinstance(json.loads(value), (dict, list))
    except ValueError:
        return False


def infer_columns(table: CsvTable, overrides: dict[str, str] | None = None) -> list[Column]:
    """Each column's inferred type; `overrides` (column -> type, from --column) win and are marked as such."""
    overrides = overrides or {}
    unknown = [c for c in overrides if c not in table.columns]
    if unknown:
        raise DatasetError(f"--column {unknown[0]}=...: {table.path.name} has no column '{unknown[0]}' "
                           f"(columns: {', '.join(table.columns)})")
    for column, kind in overrides.items():
        if kind not in COLUMN_TYPES:
            raise DatasetError(f"--column {column}={kind}: the type must be one of {', '.join(COLUMN_TYPES)}")
    return [Column(c, overrides[c], "set with --column") if c in overrides else infer_column(c, table.values(c))
            for c in table.columns]


def normalize_labels(values: list[str]) -> tuple[list[str | None], list[str]]:
    """Strip stray whitespace, make empty cells unlabelled, and merge spellings that differ only in case into the
    most common one. Returns the values and what was changed, for the import report."""
    stripped = [v.strip() or None for v in values]
    counts = Counter(v for v in stripped if v is not None)
    canonical: dict[str, str] = {}
    for value, _ in counts.most_common():
        canonical.setdefault(value.casefold(), value)
    notes = []
    merged = Counter((v, canonical[v.casefold()]) for v in stripped if v is not None and v != canonical[v.casefold()])
    for (variant, into), n in sorted(merged.items()):
        notes.append(f"'{variant}' ({n} rows) merged into '{into}' (they differ only in case)")
    spaced = sum(1 for raw, v in zip(values, stripped) if v is not None and raw != v)
    if spaced:
        notes.append(f"{spaced} labels had stray whitespace, removed")
    empty = sum(1 for v in stripped if v is None)
    if empty:
        notes.append(f"{empty} rows have no label (they leave this head unlabelled)")
    return [canonical[v.casefold()] if v is not None else None for v in stripped], notes
