"""What the dataset page drives: filtered pages with their totals (against pandas on the same rows), edits refused
when the rows changed since they were shown, a selection relabelled at once, and undo."""

import pandas as pd
import pytest

from headsmith.data.dataset import (RowFilter, delete_rows, history, rows_frame, rows_page, set_cells, set_value,
                                    summary, undo)
from headsmith.errors import DatasetError, StaleEdit

from conftest import import_csv, run_cli


@pytest.fixture
def reviews(workspace, reviews_csv, tmp_path):
    frame = pd.read_csv(reviews_csv)
    frame.loc[3, "text"] = 'a 100% "quoted" snake_case \\ back\\slash, été'  # what LIKE and JSON escape
    frame.to_csv(tmp_path / "edited.csv", index=False)
    import_csv(workspace, tmp_path / "edited.csv", "reviews", text="text", sentiment="label", long="label",
               movie="ignore")
    return "reviews"


def test_filtered_pages_and_totals_match_the_rows(workspace, reviews):
    delete_rows(workspace, reviews, [2, 7, 8])  # pages skip deleted rows, at every offset
    rows = rows_frame(workspace, reviews)
    cases = [
        (RowFilter(), rows),
        (RowFilter(classes={"sentiment": "negative"}), rows[rows.sentiment == "negative"]),
        (RowFilter(classes={"long": ""}), rows[rows.long.isna()]),
        (RowFilter(classes={"long": "yes", "sentiment": "positive"}), rows[(rows.long == "yes")
                                                                           & (rows.sentiment == "positive")]),
        (RowFilter(text="THE"), rows[rows.text.str.contains("the", case=False)]),
        (RowFilter(text="sentiment"), rows[rows.text.str.contains("sentiment", case=False)]),  # a column's name
        (RowFilter(text='100% "quoted" snake_case \\ back'), rows[rows.row == 4]),
        (RowFilter(text="été"), rows[rows.row == 4]),
        (RowFilter(text="%"), rows[rows.text.str.contains("%", regex=False)]),
        (RowFilter(text="_"), rows[rows.text.str.contains("_", regex=False)]),
        (RowFilter(classes={"sentiment": "positive"}, text="film"), rows[(rows.sentiment == "positive")
                                                                         & rows.text.str.contains("film", case=False)]),
    ]
    for where, expected in cases:
        for offset in (0, 7, len(expected) - 1, len(expected) + 5):
            total, page = rows_page(workspace, reviews, 10, max(offset, 0), where)
            assert total == len(expected), where
            assert page.row.tolist() == expected.row.tolist()[max(offset, 0):max(offset, 0) + 10], (where, offset)
    assert len(set(rows_page(workspace, reviews, 300)[1].version)) == len(rows)  # one version per row
    with pytest.raises(DatasetError, match="column 'text' of dataset 'reviews' is not a label column"):
        rows_page(workspace, reviews, 10, where=RowFilter(classes={"text": "x"}))


def test_an_edit_on_a_stale_view_is_refused_with_the_current_value(workspace, reviews):
    _, shown = rows_page(workspace, reviews, 10)
    seen = dict(zip(shown.row, shown.version))
    assert run_cli("dataset", "set", reviews, "5", "sentiment", "positive").returncode == 0  # another writer
    before = (history(workspace, reviews), summary(workspace, reviews))
    with pytest.raises(StaleEdit, match="row 5: .*sentiment='positive'") as refused:
        set_cells(workspace, reviews, [4, 5, 6], "sentiment", "negative", seen)
    assert refused.value.current[5]["sentiment"] == "positive" and list(refused.value.current) == [5]
    assert (history(workspace, reviews), summary(workspace, reviews)) == before  # nothing changed, row 4 neither
    delete_rows(workspace, reviews, [6])
    with pytest.raises(StaleEdit, match="row 6: deleted"):
        set_cells(workspace, reviews, [6], "sentiment", "negative", {6: seen[6]})
    _, fresh = rows_page(workspace, reviews, 10)
    change, old, new = set_cells(workspace, reviews, [4, 5], "sentiment", "negative",
                                 dict(zip(fresh.row, fresh.version)))
    assert old == {4: fresh.set_index("row").sentiment[4], 5: "positive"} and new == "negative"
    assert history(workspace, reviews)[-1] == {**history(workspace, reviews)[-1], "id": change, "action": "relabel"}


def test_a_relabel_and_a_deletion_undone(workspace, reviews):
    start = (rows_frame(workspace, reviews), summary(workspace, reviews))
    change, old, _ = set_cells(workspace, reviews, [1, 2, 3, 10], "long", "yes")
    assert summary(workspace, reviews)["classes"]["long"]["yes"] == start[1]["classes"]["long"]["yes"] + sum(
        v != "yes" for v in old.values())
    deleted = delete_rows(workspace, reviews, [20, 21])
    assert summary(workspace, reviews)["rows"] == start[1]["rows"] - 2
    undo(workspace, reviews, deleted)
    undo(workspace, reviews, change)
    assert rows_frame(workspace, reviews).equals(start[0]) and summary(workspace, reviews) == start[1]
    with pytest.raises(DatasetError, match=f"change {change} of dataset 'reviews' was undone already"):
        undo(workspace, reviews, change)
    assert [e["action"] for e in history(workspace, reviews)][-4:] == ["relabel", "delete_rows", "undo", "undo"]

    again, _, _ = set_cells(workspace, reviews, [1, 2], "long", "no")
    set_value(workspace, reviews, 2, "long", "yes")  # changed after: undoing `again` would lose this
    with pytest.raises(StaleEdit, match="row 2: .*long='yes'"):
        undo(workspace, reviews, again)
    assert rows_frame(workspace, reviews).set_index("row").long[[1, 2]].tolist() == ["no", "yes"]
    with pytest.raises(DatasetError, match="has no change 1 that can be undone"):
        undo(workspace, reviews, 1)  # the import
