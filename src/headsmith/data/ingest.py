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
from typing import Iterator
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


SAMPLE_ROWS = 10_000  # type inference reads the first rows; past them its reasons say "in a sample of N rows"
MAX_SPELLINGS = 10_000  # distinct values counted per column while checking; past that a label column is counted again
MAX_LABEL_CHARS = 200  # a longer value is no class name: its column is not counted while checking


@dataclass(frozen=True)
class CsvTable:
    """A checked CSV: dialect, header, row count, the first rows (for type inference and previews) and the count of
    each short value per column (label spellings). The rows themselves are read again, a chunk at a time, so no
    size of file is ever held in memory."""

    path: Path
    encoding: str
    delimiter: str
    columns: list[str]
    count: int  # data rows
    sample: list[tuple[int, list[str]]]  # the first SAMPLE_ROWS (line where the row starts, cells)
    spellings: dict[str, Counter | None]  # column -> raw value -> rows; None: too many or too long to count here
    max_cell_chars: int = MAX_CELL_CHARS

    def values(self, column: str) -> list[str]:
        """The column's values in the sample."""
        i = self.columns.index(column)
        return [cells[i] for _, cells in self.sample]

    def records(self) -> Iterator[tuple[int, list[str]]]:
        """Every data row again, in file order: (line where it starts, cells)."""
        rows = _records(self.path, self.encoding, self.delimiter, self.max_cell_chars)
        next(rows)  # the header, checked when the table was read
        return rows

    def chunks(self, size: int = 10_000) -> Iterator[list[tuple[int, list[str]]]]:
        records = self.records()
        while chunk := list(itertools.islice(records, size)):
            yield chunk

    def label_counts(self, column: str) -> Counter:
        """Each raw value of the column with its rows, over the whole file (counted again if it was not counted)."""
        if self.spellings[column] is not None:
            return self.spellings[column]
        i = self.columns.index(column)
        return Counter(cells[i] for _, cells in self.records())


# Byte-order marks, longest first (UTF-32 LE's begins with UTF-16 LE's): the mark says the encoding.
BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16")]


def _encoding(path: Path, encoding: str | None) -> str:
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DatasetError(f"--encoding {encoding}: Python knows no such encoding") from None
        return encoding
    with open(path, "rb") as f:
        start = f.read(4)
    return next((name for mark, name in BOMS if start.startswith(mark)), "utf-8")


def _not_decodable(path: Path, encoding: str, explicit: bool) -> DatasetError:
    """Where the file first stops being `encoding`: found by decoding it again block by block (only on this error)."""
    decoder, offset, newlines = codecs.getincrementaldecoder(encoding)(), 0, 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            pending = decoder.getstate()[0]
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                at = offset - len(pending) + e.start
                bad = e.object[e.start:e.start + 1]
                line = newlines - pending.count(b"\n") + e.object[:e.start].count(b"\n") + 1
                break
            offset, newlines = offset + len(block), newlines + block.count(b"\n")
        else:
            return DatasetError(f"{path}: not valid {encoding}")
    if explicit:
        return DatasetError(f"{path}: line {line} is not valid {encoding} (byte {bad!r} at offset {at}); pass the "
                            "file's real encoding with --encoding")
    return DatasetError(f"{path}: not UTF-8: line {line} has byte {bad!r} (offset {at}). Re-save the file as UTF-8, or "
                        "pass its encoding, e.g. --encoding cp1252 (Excel on Windows) or --encoding latin-1")


def _lines(path: Path, encoding: str, explicit: bool = True) -> Iterator[str]:
    """The file's lines, decoded, endings kept (\\n, \\r\\n or \\r, as csv wants), without a byte-order mark."""
    try:
        with open(path, encoding=encoding, newline="") as f:
            first = next(f, "")
            yield first.removeprefix("\ufeff")  # a byte-order mark is not part of the first column's name
            yield from f
    except UnicodeDecodeError:
        raise _not_decodable(path, encoding, explicit) from None


DELIMITERS = (",", ";", "\t", "|")  # in order of preference when two split a file equally well


def _delimiter(text: str, complete: bool = True, sample: int = 200) -> str:
    """The delimiter of a CSV, read from its first records with quotes and quoted line breaks honoured: the one
    that splits them into the most fields, the same number in each; else the one that splits the header (the rows
    that do not fit are then named); else, one column, any that leaves every record whole. csv.Sniffer guesses
    wrong on real text columns too often to be trusted. `complete`: the text is the whole file (else its last
    record may be cut, and is left out)."""
    records = {}
    for delimiter in DELIMITERS:
        try:
            parsed = [r for r in itertools.islice(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter),
                                                  sample) if any(cell.strip() for cell in r)]
        except csv.Error:
            continue
        records[delimiter] = parsed if complete or len(parsed) < 2 else parsed[:-1]
    consistent = [d for d, rows in records.items() if rows and len({len(r) for r in rows}) == 1]
    best = max(consistent, key=lambda d: len(records[d][0]), default=None)  # on a tie, the first in DELIMITERS
    if best and len(records[best][0]) > 1:
        return best
    named = [d for d, rows in records.items()  # a header it splits into two or more names, each given once
             if rows and len(rows[0]) > 1 and all(n.strip() for n in rows[0]) and len(set(rows[0])) == len(rows[0])]
    if named:
        return max(named, key=lambda d: len(records[d][0]))
    return best or ","


def _records(path: Path, encoding: str, delimiter: str, max_cell_chars: int, explicit: bool = True) -> Iterator:
    """The header (checked), then each data row as (line where it starts, cells), checked; blank lines skipped."""
    reader = csv.reader(_lines(path, encoding, explicit), delimiter=delimiter)
    try:
        header = [name.strip() for name in next(reader, [])]
        empty = [i + 1 for i, name in enumerate(header) if not name]
        if empty:
            raise DatasetError(f"{path}: header column {empty[0]} has no name; name every column")
        repeated = sorted(name for name, n in Counter(header).items() if n > 1)
        if repeated:
            raise DatasetError(f"{path}: the header names {', '.join(repr(r) for r in repeated)} more than once; "
                               "column names must be unique")
        yield header
        start = reader.line_num + 1
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
            yield line, cells
    except csv.Error as e:
        raise DatasetError(f"{path}:{reader.line_num}: cannot parse as CSV: {e}") from None


def read_table(path: Path | str, encoding: str | None = None, max_cell_chars: int = MAX_CELL_CHARS) -> CsvTable:
    """Check a CSV of any common dialect (delimiter sniffed; quoted newlines kept) from end to end, or say exactly
    what is wrong; memory stays bounded whatever the file's size."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    explicit, encoding = encoding is not None, _encoding(path, encoding)
    head, size = [], 0
    for line in _lines(path, encoding, explicit):  # the first megabyte or so tells the delimiter
        head.append(line)
        size += len(line)
        if size > 1 << 20:
            break
    text = "".join(head)
    if not text.strip():
        raise DatasetError(f"{path}: the file is empty; it needs a header row and at least one data row")
    delimiter = _delimiter(text, complete=size <= 1 << 20)
    records = _records(path, encoding, delimiter, max_cell_chars, explicit)
    header = next(records)
    spellings: dict[str, Counter | None] = {name: Counter() for name in header}
    sample, count = [], 0
    for line, cells in records:
        count += 1
        if len(sample) < SAMPLE_ROWS:
            sample.append((line, cells))
        for name, cell in zip(header, cells):
            counts = spellings[name]
            if counts is not None:
                counts[cell] += 1
                if len(counts) > MAX_SPELLINGS or len(cell) > MAX_LABEL_CHARS:
                    spellings[name] = None
    if not count:
        raise DatasetError(f"{path}: has a header but no data rows")
    return CsvTable(path, encoding, delimiter, header, count, sample, spellings, max_cell_chars)


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


def infer_columns(table: CsvTable, overrides: dict[str, str] | None = None,
                  set_by: str = "set with --column") -> list[Column]:
    """Each column's inferred type; `overrides` (column -> type, from --column) win, their reason `set_by`."""
    overrides = overrides or {}
    unknown = [c for c in overrides if c not in table.columns]
    if unknown:
        raise DatasetError(f"--column {unknown[0]}=...: {table.path.name} has no column '{unknown[0]}' "
                           f"(columns: {', '.join(table.columns)})")
    for column, kind in overrides.items():
        if kind not in COLUMN_TYPES:
            raise DatasetError(f"--column {column}={kind}: the type must be one of {', '.join(COLUMN_TYPES)}")
    sampled = f", in a sample of the first {len(table.sample):,} rows" if table.count > len(table.sample) else ""
    return [Column(c, overrides[c], set_by) if c in overrides
            else _sampled(infer_column(c, table.values(c)), sampled) for c in table.columns]


def _sampled(column: Column, note: str) -> Column:
    return Column(column.name, column.type, column.reason + note) if note else column


def stored_classes(counts: Counter) -> Counter:
    """Rows per class as a label column's raw value counts are stored (see `label_mapping`), unlabelled left out."""
    classes: Counter = Counter()
    for raw, stored in label_mapping(counts)[0].items():
        if stored is not None:
            classes[stored] += counts[raw]
    return classes


def label_mapping(counts: Counter) -> tuple[dict[str, str | None], list[str]]:
    """From a label column's raw values and their counts: what each raw value is stored as (stray whitespace
    stripped, empty = unlabelled, spellings that differ only in case merged into the most common one), and notes
    on what was changed, for the import report."""
    stripped: Counter = Counter()
    for raw, n in counts.items():  # in first-seen order, so ties between spellings go to the first seen
        if raw.strip():
            stripped[raw.strip()] += n
    canonical: dict[str, str] = {}
    for value, _ in stripped.most_common():
        canonical.setdefault(value.casefold(), value)
    mapping = {raw: canonical[raw.strip().casefold()] if raw.strip() else None for raw in counts}
    notes = [f"'{variant}' ({n} rows) merged into '{canonical[variant.casefold()]}' (they differ only in case)"
             for variant, n in sorted(stripped.items()) if variant != canonical[variant.casefold()]]
    spaced = sum(n for raw, n in counts.items() if raw.strip() and raw != raw.strip())
    if spaced:
        notes.append(f"{spaced} labels had stray whitespace, removed")
    empty = sum(n for raw, n in counts.items() if not raw.strip())
    if empty:
        notes.append(f"{empty} rows have no label (they leave this head unlabelled)")
    return mapping, notes
