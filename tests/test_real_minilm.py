"""One real run: the pretrained MiniLM (offline, from its PyPI package) on a sample of real movie reviews."""

import json
from pathlib import Path

import pytest

from headsmith import load_model
from headsmith.training.train import train

from conftest import snapshot_csv


@pytest.mark.slow
def test_sentiment_recipe_on_real_reviews(compose, workspace, reviews, tmp_path):
    sample = reviews.groupby("sentiment").sample(500, random_state=0)
    path = tmp_path / "sample.csv"
    sample.to_csv(path, index=False)
    snapshot_csv(workspace, path, "rotten-tomatoes", "text", {"sentiment": "sentiment"})
    metrics, _ = train(compose("recipe=sentiment", "trainer.max_epochs=8", fast=False))
    sentiment = metrics["test"]["sentiment"]
    assert sentiment["support"] == 200
    assert sentiment["f1"] >= 0.65, sentiment  # a linear probe on pretrained MiniLM; chance is 0.5
    model = load_model(Path(metrics["model"]))
    assert json.loads((Path(metrics["model"]) / "model.json").read_text())["backbone"]["pretrained"] == \
        "all-MiniLM-L6-v2"
    praise, pan = model.predict(["One of the best films of the year: moving, funny and beautifully acted.",
                                 "A tedious, clumsy mess that wastes its talented cast."])
    assert praise["sentiment"]["positive"] > 0.5 > pan["sentiment"]["positive"]
