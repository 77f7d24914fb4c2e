"""`headsmith playground` as a user opens it: the real command (the web app's playground page on 127.0.0.1), driven in
headless Chromium."""

import json
import re
import subprocess
import time
from pathlib import Path

import httpx

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from headsmith.predictor import Predictor
from headsmith.training.train import train
from conftest import HEADSMITH, console_errors, save_screenshot, small_image_model
from image_server import SAMPLES


class PlaygroundProcess:
    """`headsmith playground MODEL ...`: the web app's playground page; the URL it prints signs in."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen([HEADSMITH, "playground", *args, "--port", "0"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        assert line.startswith("playground: "), line + self.process.stderr.read()
        self.url = line.split()[1]
        self.base = self.url.split("/playground")[0]
        self.client = httpx.Client(base_url=self.base, timeout=60)
        for _ in range(100):
            try:
                page = self.client.get(self.url, follow_redirects=True)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        self.query = page.url.query.decode()
        self.csrf = re.search(r'<meta name="csrf-token" content="(\w+)">', page.text).group(1)

    def post(self, body) -> tuple[int, dict]:
        response = self.client.post(f"/playground/predict?{self.query}", content=json.dumps(body),
                                    headers={"Content-Type": "application/json", "X-CSRF-Token": self.csrf})
        return response.status_code, response.json()

    def close(self):
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def _scores_on_page(browser, index: int, model: Path, head: str) -> list[float]:
    cells = browser.find_elements(By.CSS_SELECTOR, f'.input[data-index="{index}"] .model[data-model="{model}"] '
                                                   f'.head[data-head="{head}"] td.score')
    return [float(c.text) for c in cells]


def test_text_playground_side_by_side_with_a_second_model(compose, reviews_snapshot, browser, tmp_path):
    first, _ = train(compose("dataset.snapshot=reviews", "trainer.max_epochs=2"))
    second, _ = train(compose("dataset.snapshot=reviews", "trainer.max_epochs=1", "seed=7",
                              f"paths.output_dir={tmp_path / 'second'}"))
    model, base = Predictor(first["model"]), Predictor(second["model"])
    server = PlaygroundProcess(first["model"], "--compare", second["model"])
    try:
        browser.get(server.url)
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        texts = ["A gorgeous, moving film.", "Dull, lifeless and far too long."]
        browser.find_element(By.ID, "texts").send_keys("\n".join(texts))
        browser.find_element(By.ID, "score").click()
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "results").get_attribute("data-count"))
        assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".input .sample")] == texts
        for predictor in (model, base):
            expected = predictor.predict(texts)
            for i in range(2):
                for head in ("sentiment", "long"):
                    assert _scores_on_page(browser, i, predictor.package, head) == pytest.approx(
                        [c["score"] for c in expected[i][head]["classes"]], abs=1e-4)
        assert console_errors(browser) == []
        save_screenshot(browser, "playground.png")

        # bad input: a clear 400, and the server keeps answering
        status, body = server.post({"images": ["aGVsbG8="]})
        assert status == 400 and "this model reads texts" in body["error"]
        status, body = server.post({"texts": [""]})
        assert status == 400 and "non-empty" in body["error"]
        status, body = server.post({"texts": ["fine"]})
        assert status == 200 and len(body["models"]) == 2
    finally:
        server.close()


def test_image_playground_scores_an_uploaded_image(tmp_path, browser):
    package = small_image_model(tmp_path)
    server = PlaygroundProcess(str(package))
    try:
        browser.get(server.url)
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        browser.find_element(By.ID, "images").send_keys(str(SAMPLES / "chelsea.png"))
        browser.find_element(By.ID, "score").click()
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "results").get_attribute("data-count"))
        expected = Predictor(package).predict([SAMPLES / "chelsea.png"])[0]["cat"]["classes"]
        assert _scores_on_page(browser, 0, package, "cat") == pytest.approx([c["score"] for c in expected],
                                                                                   abs=1e-4)
        assert console_errors(browser) == []
        status, body = server.post({"images": ["bm90IGFuIGltYWdl"]})  # base64 of "not an image"
        assert status == 400 and "not an image Pillow can read" in body["error"]
    finally:
        server.close()
