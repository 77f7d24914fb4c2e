"""Property-based tests of the CSV reader and the import behind it (Hypothesis; 200 examples per property, set in
conftest.py): whatever the bytes, dialect or encoding, the answer is a table or a DatasetError that says what is
wrong, never a traceback, and rows already stored never change.

The properties run as inner functions: each test's own temporary workspace is made once and shared by its examples
(a function-scoped fixture does not reset between Hypothesis examples)."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import assume, given, strategies as st

from headsmith.data.dataset import add_rows, import_dataset
from headsmith.data.ingest import infer_columns, read_table
from headsmith.errors import HeadsmithError

ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"]  # the last three: no BOM
WITH_BOM = {"utf-8", "utf-8-sig", "utf-16", "utf-32"}  # read without --encoding (UTF-8, or the BOM says)


def _stored_rows(workspace, name: str) -> list:
    with workspace.catalog() as db:
        return [tuple(r) for r in db.execute(
            "SELECT r.row, r.line, r.source, r.data, r.deleted FROM dataset_rows r JOIN datasets d ON d.id = "
            "r.dataset_id WHERE d.name = ? ORDER BY r.row", (name,))]


def test_any_bytes_are_a_table_or_a_clear_error_and_stored_rows_never_change(workspace, tmp_path):
    (tmp_path / "kept.csv").write_text("text,label\nA fine film.,pos\nA dull film.,neg\n")
    table = read_table(tmp_path / "kept.csv")
    import_dataset(workspace, "kept", table, infer_columns(table))
    before = _stored_rows(workspace, "kept")
    names = iter(range(10**6))

    @given(st.one_of(st.binary(max_size=400),
                     st.text(st.characters(blacklist_categories=("Cs",)), max_size=200).map(str.encode),
                     st.lists(st.sampled_from([b"text", b"label", b",", b";", b"\t", b"|", b'"', b"\n", b"\r\n",
                                               b"\r", b"\x00", b"\xff", b"\xef\xbb\xbf", b"\xff\xfe", b"pos",
                                               b"a b", b'""', b"http://x/1.png"]), max_size=40).map(b"".join)))
    def check(data: bytes):
        nonlocal before
        path = tmp_path / "input.csv"
        path.write_bytes(data)
        try:
            candidate = read_table(path)
            columns = infer_columns(candidate)
        except HeadsmithError as e:
            assert str(path) in str(e) or "--column" in str(e), e  # the error names the file (or the option)
            return
        assert all(len(cells) == len(candidate.columns) for _, cells in candidate.records())
        try:
            import_dataset(workspace, f"new{next(names)}", candidate, columns)
        except HeadsmithError:
            pass
        try:
            added, _ = add_rows(workspace, "kept", candidate)
        except HeadsmithError:
            added = 0
        after = _stored_rows(workspace, "kept")
        assert after[:len(before)] == before and len(after) == len(before) + added  # appended, never changed
        before = after
    check()


DELIMITERS = [",", ";", "\t", "|"]


def _cells():
    """Any text, with the characters that make CSV hard (delimiters, quotes, line breaks) drawn often."""
    return st.text(st.one_of(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufeff"),
                             st.sampled_from([*DELIMITERS, '"', "\n", "\r", " "])), max_size=30)


def _faithful(text: str, written: list[list[str]], dialect: dict) -> bool:
    """Python's csv writer leaves a lone carriage return unquoted when lines end in a line feed: a file that its
    own reader, told the dialect, cannot read back is not a CSV anyone can read."""
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=dialect["delimiter"])) == written


def _ambiguous(text: str, written: list[list[str]]) -> bool:
    """Another delimiter also splits every record into as many fields, or more, with other cells, or splits the
    header into more names than were written: no reader can tell which was meant (a one-column file of `a;b` cells
    written with commas reads as two columns; a one-column header `a;b` over a row `c` is as well a semicolon
    file with a short row)."""
    for delimiter in DELIMITERS:
        records = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
                   if any(c.strip() for c in r)]
        records[:1] = [[name.strip() for name in records[0]]] if records else []
        if len({len(r) for r in records}) == 1 and len(records[0]) >= len(written[0]) and records != written:
            return True
        header = records[0] if records else []
        if len(header) > len(written[0]) and all(header) and len(set(header)) == len(header):
            return True
    return False


@st.composite
def tables(draw):
    """A table as a person's spreadsheet writes it: unique header names, rows with something in them, any dialect
    and encoding."""
    names = draw(st.lists(_cells().map(str.strip).filter(bool), min_size=1, max_size=5, unique=True))
    rows = draw(st.lists(st.lists(_cells(), min_size=len(names), max_size=len(names))
                         .filter(lambda cells: any(c.strip() for c in cells)), min_size=1, max_size=8))
    dialect = {"delimiter": draw(st.sampled_from([",", ";", "\t", "|"])),
               "quoting": draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])),
               "lineterminator": draw(st.sampled_from(["\n", "\r\n"]))}
    return names, rows, dialect, draw(st.sampled_from(ENCODINGS))


def test_every_dialect_and_encoding_reads_back_the_cells_that_were_written(tmp_path):
    @given(tables())
    def check(case):
        names, rows, dialect, encoding = case
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, **dialect)
        writer.writerow(names)
        writer.writerows(rows)
        assume(_faithful(buffer.getvalue(), [names, *rows], dialect) and not _ambiguous(buffer.getvalue(),
                                                                                          [names, *rows]))
        path = tmp_path / "table.csv"
        path.write_bytes(buffer.getvalue().encode(encoding))
        table = read_table(path, encoding=None if encoding in WITH_BOM else encoding)
        assert table.columns == names, (json.dumps(names), dialect)
        assert [cells for _, cells in table.records()] == rows
    check()
