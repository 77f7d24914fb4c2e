"""Evaluation outputs a person looks at: report.html in real headless Chromium, PNGs, predictions, `headsmith eval`."""

import json
from pathlib import Path

import pandas as pd
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from headsmith.training.train import train
from conftest import console_errors, run_cli, save_screenshot


@pytest.fixture
def trained(base_run, reviews_snapshot):
    """The session's trained run (read-only), beside this test's own `reviews` snapshot."""
    return base_run


def test_training_ends_with_an_evaluation_of_the_test_split(trained):
    metrics, objects = trained
    folder = Path(metrics["report"]).parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "confusion_long.png", "confusion_sentiment.png", "eval.json", "pr_long.png", "pr_sentiment.png",
        "predictions.parquet", "report.html"]
    assert all((folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in ("pr_long.png",
                                                                                     "confusion_sentiment.png"))
    predictions = pd.read_parquet(folder / "predictions.parquet")
    test_rows = objects["datamodule"].splits["test"]
    assert len(predictions) == len(test_rows) and predictions["row"].tolist() == test_rows["row"].tolist()
    sentiment = predictions[predictions["sentiment"].notna()]
    summary = metrics["test"]["sentiment"]
    # the per-row file and the metrics agree: accuracy from the rows = sum of the confusion diagonal
    correct = int((sentiment["sentiment"] == sentiment["sentiment:predicted"]).sum())
    assert correct == sum(summary["confusion"][i][i] for i in range(2)) and summary["support"] == len(sentiment)
    scores = sentiment[["sentiment:score:negative", "sentiment:score:positive"]].to_numpy()
    assert scores.sum(1) == pytest.approx(1.0, abs=1e-5)
    saved = json.loads((folder / "eval.json").read_text())
    assert saved["split"] == "test" and saved["metrics"]["sentiment"]["f1"] == summary["f1"]
    curve = saved["curves"]["sentiment"]["positive"]
    assert curve["positives"] == summary["classes"]["positive"]["support"]
    assert len(curve["thresholds"]) <= curve["points"] and curve["tp"][-1] == curve["positives"]


def test_predictions_are_written_a_part_at_a_time_and_mistakes_read_only_their_rows(trained, tmp_path,
                                                                                     monkeypatch):
    import pyarrow.parquet as pq

    from headsmith.evaluation import evaluate

    _, objects = trained
    data = objects["datamodule"]
    evaluation = evaluate.evaluate(objects["net"], data.snapshot, data.splits["test"], split="test")
    whole = evaluation.predictions()
    monkeypatch.setattr(evaluate, "PREDICTION_PART_ROWS", 7)  # 48 rows: 7 parts, their inputs read part by part
    evaluation.save(tmp_path / "eval")
    assert pq.ParquetFile(tmp_path / "eval" / "predictions.parquet").num_row_groups == 7
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "eval" / "predictions.parquet"), whole)
    wrong = whole[whole["sentiment"].notna() & (whole["sentiment"] != whole["sentiment:predicted"])]
    expected = wrong.sort_values("sentiment:confidence", ascending=False, kind="mergesort").head(12)
    assert len(expected) > 0
    pd.testing.assert_frame_equal(evaluation.mistakes("sentiment"), expected.reset_index(drop=True))


def test_report_in_chromium_toggle_and_a_curve_point(trained, browser):
    metrics, _ = trained
    browser.get(Path(metrics["report"]).as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    assert console_errors(browser) == []
    by_head, by_class = browser.find_element(By.ID, "metrics-head"), browser.find_element(By.ID, "metrics-class")
    assert by_head.is_displayed() and not by_class.is_displayed()
    assert len(by_head.find_elements(By.CSS_SELECTOR, "tr")) == 1 + 2  # header + sentiment, long
    browser.find_element(By.ID, "view-class").click()
    assert by_class.is_displayed() and not by_head.is_displayed()
    rows = [r.text for r in by_class.find_elements(By.CSS_SELECTOR, "tr")[1:]]
    assert len(rows) == 4 and rows[0].startswith("sentiment negative")  # 2 heads x 2 classes
    f1 = metrics["test"]["sentiment"]["classes"]["negative"]["f1"]
    assert f"{f1:.4f}" in rows[0]
    browser.find_element(By.ID, "view-head").click()
    assert by_head.is_displayed()

    # A real mouse click on one point of the `positive` curve of head sentiment shows the confusion there.
    plot = browser.find_element(By.ID, "pr-0")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
    x, y, threshold, label, tp, fp = browser.execute_script("""
        const gd = arguments[0], trace = gd.data.find(t => t.meta === 'positive' && t.mode.includes('lines'));
        const i = Math.floor(trace.x.length / 2);
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
        const curve = JSON.parse(document.getElementById('data').textContent).heads[0].curves[trace.meta];
        return [xa._offset + xa.l2p(trace.x[i]) - box.width / 2, ya._offset + ya.l2p(trace.y[i]) - box.height / 2,
                trace.customdata[i][0], trace.meta, curve.tp[i], curve.fp[i]];""", plot)
    ActionChains(browser).move_to_element_with_offset(plot, round(x), round(y)).pause(0.3).click().perform()
    panel = browser.find_element(By.ID, "point-0")
    WebDriverWait(browser, 10).until(lambda d: panel.get_attribute("data-threshold"))
    assert label == "positive" and float(panel.get_attribute("data-threshold")) == pytest.approx(threshold)
    cells = [c.text for c in panel.find_elements(By.CSS_SELECTOR, "td")]
    assert cells[:3] == ["label positive", str(tp), str(metrics["test"]["sentiment"]["classes"]["positive"]["support"]
                                                     - tp)]
    assert cells[4] == str(fp)
    assert console_errors(browser) == []
    assert save_screenshot(browser, "report.png").stat().st_size > 10_000


def test_compare_two_runs_prints_and_renders_the_differences(trained, compose, browser, tmp_path):
    a, _ = trained
    b, _ = train(compose("dataset.snapshot=reviews", "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'b'}"))
    run_a, run_b = Path(a["model"]).parent, Path(b["model"]).parent
    assert run_cli("model", "register", str(run_b), "--name", "shorter").returncode == 0
    result = run_cli("compare", str(run_a), "shorter", "--out", str(tmp_path / "cmp"))
    assert result.returncode == 0, result.stderr
    delta = b["test"]["sentiment"]["f1"] - a["test"]["sentiment"]["f1"]
    assert f"{delta:+.4f}" in result.stdout and "different snapshots" not in result.stdout
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    row = next(r for r in saved["rows"] if (r["head"], r["class"], r["metric"]) == ("long", "yes", "recall"))
    assert row["a"] == a["test"]["long"]["classes"]["yes"]["recall"] and row["b"] == b["test"]["long"]["classes"][
        "yes"]["recall"]
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    browser.get((tmp_path / "cmp" / "compare.html").as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
    assert console_errors(browser) == []
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tables table")) == 2
