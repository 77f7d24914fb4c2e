"""The whole path in the browser, as a moderation team walks it in `headsmith ui` (real server, headless Chromium):
upload a CSV of image URLs, see the thumbnails and a failed image with its reason, fix a label, make a snapshot,
train a small recipe and watch it, read its report, follow a mistake to its row and fix it, register and deploy the
model, create a key, ask the deployment from the page. Each page's screenshot lands in test-artifacts/ui-*.png."""

import socket

import pandas as pd
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import click_and_load, console_errors, save_screenshot
from headsmith.data.dataset import history, rows_frame
from headsmith.models.registry import resolve_model
from headsmith.predictor import Predictor
from headsmith.serving.deploy import list_deployments, list_keys, stop_deployment
from image_server import face_png

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_whole_path_in_the_browser(start_ui, browser, image_server, workspace, tmp_path):
    faces = [(f"{image_server.url}/face/{i}.png", "yes") for i in range(20)]
    others = [(f"{image_server.url}/face/{100 + i}.png", "no") for i in range(20)]
    rows = [row for pair in zip(faces, others) for row in pair]
    rows[2] = (rows[2][0], "no")  # a face labelled wrong: fixed on the dataset page
    rows.append((f"{image_server.url}/missing.jpg", "no"))
    csv = tmp_path / "faces.csv"
    pd.DataFrame(rows, columns=["url", "face"]).to_csv(csv, index=False)
    url, base = start_ui("--allow-private-urls")  # the test's image server is on 127.0.0.1

    def wait(condition, seconds: float = 60):  # pages that reload themselves (a run's, when it ends) go stale
        return WebDriverWait(browser, seconds, poll_frequency=0.2,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                             ).until(condition)

    try:
        # Upload; the inferred types; import; thumbnails and the failed image.
        browser.get(url)
        click_and_load(browser, browser.find_element(By.ID, "import-link"))
        save_screenshot(browser, "ui-datasets-import.png")
        browser.find_element(By.ID, "file").send_keys(str(csv))
        browser.find_element(By.ID, "upload-button").click()
        wait(lambda b: "/datasets/import/" in b.current_url)
        assert Select(browser.find_element(By.CSS_SELECTOR, 'select[aria-label="type of url"]')
                      ).first_selected_option.text == "image"
        save_screenshot(browser, "ui-import-review.png")
        click_and_load(browser, browser.find_element(By.ID, "import"))
        wait(lambda b: len(b.find_elements(By.CSS_SELECTOR, "img.thumb")) == 40)
        wait(lambda b: all(b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) > 0
                           for i in b.find_elements(By.CSS_SELECTOR, "img.thumb")))
        assert "http 404" in browser.find_element(By.ID, "row-41").text
        save_screenshot(browser, "ui-dataset.png")

        browser.get(f"{base}/datasets")
        save_screenshot(browser, "ui-datasets.png")
        browser.back()

        # Fix the wrong label of row 3.
        cell = browser.find_element(By.CSS_SELECTOR, 'input[aria-label="face of row 3"]')
        cell.clear()
        cell.send_keys("yes")
        click_and_load(browser, cell.find_element(By.XPATH, "following-sibling::button"))
        assert rows_frame(workspace, "faces").set_index("row").face[3] == "yes"

        # A snapshot: the failed image is a row left out, with its reason.
        click_and_load(browser, browser.find_element(By.ID, "make-snapshot"))
        browser.find_element(By.NAME, "name").send_keys("faces")
        click_and_load(browser, browser.find_element(By.ID, "create"))
        assert browser.current_url == f"{base}/snapshots/faces", browser.find_element(By.ID, "error").text
        assert "row" in browser.find_element(By.ID, "invalid").text and "41" in browser.find_element(By.ID,
                                                                                                   "invalid").text
        save_screenshot(browser, "ui-snapshot.png")

        # Train a small recipe (a frozen pretrained backbone; a head barely trained, so it makes mistakes) and watch.
        browser.get(f"{base}/runs")
        browser.find_element(By.ID, "overrides").send_keys("\n".join([
            "dataset.snapshot=faces", "backbone=efficientnet_lite0", "backbone.image_size=64", "trainer=cpu",
            "fit=sgd", "trainer.max_epochs=3", "optimizer.lr=1e-6", "name=faces-ui"]))
        click_and_load(browser, browser.find_element(By.ID, "start"))
        assert "/runs/" in browser.current_url
        wait(lambda b: b.find_element(By.ID, "status").text in ("running", "finished"), 120)
        wait(lambda b: b.find_element(By.ID, "status").text == "finished", 600)
        wait(lambda b: b.find_elements(By.ID, "metrics-face"))  # the page reloads when the run ends
        assert browser.find_element(By.ID, "curves").is_displayed()  # loss and metric per epoch
        save_screenshot(browser, "ui-run.png")
        browser.switch_to.frame(browser.find_element(By.ID, "report"))  # the report, embedded
        wait(lambda b: "face" in b.find_element(By.TAG_NAME, "body").text)
        browser.switch_to.default_content()

        browser.get(f"{base}/runs")
        save_screenshot(browser, "ui-runs.png")
        browser.back()

        # A mistake, followed to its row, fixed there.
        mistake = browser.find_element(By.CSS_SELECTOR, "a.mistake")
        row = int(mistake.text)
        predicted = mistake.find_element(By.XPATH, "../../td[4]").text
        run_page = browser.current_url
        click_and_load(browser, mistake)
        assert browser.find_element(By.ID, f"row-{row}").get_attribute("class") == "target"
        cell = browser.find_element(By.CSS_SELECTOR, f'input[aria-label="face of row {row}"]')
        cell.clear()
        cell.send_keys(predicted)
        click_and_load(browser, cell.find_element(By.XPATH, "following-sibling::button"))
        assert history(workspace, "faces")[-1]["row"] == row and history(workspace, "faces")[-1]["new"] == predicted

        # Register, deploy, serve, a key, and the deployment asked from its page.
        browser.get(run_page)
        click_and_load(browser, browser.find_element(By.ID, "register-button"))
        assert "faces-ui:1" in browser.find_element(By.ID, "registered").text
        browser.get(f"{base}/models")
        assert "faces" in browser.find_element(By.ID, "model-faces-ui-1").text
        save_screenshot(browser, "ui-models.png")
        browser.get(f"{base}/deployments")
        browser.find_element(By.NAME, "name").send_keys("production")
        browser.set_page_load_timeout(600)  # a Bento is built, then a server started and waited for
        click_and_load(browser, browser.find_element(By.ID, "create-deployment"))
        browser.find_element(By.ID, "port").clear()
        browser.find_element(By.ID, "port").send_keys(str(free_port()))
        click_and_load(browser, browser.find_element(By.ID, "serve"))
        assert browser.find_element(By.ID, "status").text == "running"
        click_and_load(browser, browser.find_element(By.ID, "create-key"))
        key = browser.find_element(By.ID, "key-value").text
        assert len(key) > 30
        browser.get(f"{base}/deployments/production")
        assert key not in browser.page_source  # shown once

        browser.get(f"{base}/deployments")
        save_screenshot(browser, "ui-deployments.png")
        browser.back()

        picture = tmp_path / "face.png"
        picture.write_bytes(face_png(7))
        wait(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        browser.find_element(By.ID, "images").send_keys(str(picture))
        browser.find_element(By.ID, "score").click()
        wait(lambda b: b.find_element(By.ID, "results").get_attribute("data-count"), 120)
        shown = [float(c.text) for c in browser.find_elements(By.CSS_SELECTOR, '.head[data-head="face"] td.score')]
        expected = Predictor(resolve_model(workspace, "faces-ui:1")).predict([picture])[0]["face"]["classes"]
        assert shown == pytest.approx([c["score"] for c in expected], abs=1e-4)
        save_screenshot(browser, "ui-deployment.png")
        assert console_errors(browser) == []

        # The key revoked, the deployment stopped, then deleted.
        mine = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#keys tr")  # the key made above, not the app's
                    if "headsmith ui playground" not in r.text and r.find_elements(By.TAG_NAME, "button"))
        click_and_load(browser, mine.find_element(By.CSS_SELECTOR, "button.revoke"))
        assert sum(1 for k in list_keys(workspace, "production") if k["revoked_at"]) == 1
        click_and_load(browser, browser.find_element(By.ID, "stop"))
        assert browser.find_element(By.ID, "status").text == "stopped"
        browser.find_element(By.ID, "delete").click()
        browser.switch_to.alert.accept()  # "Delete deployment production, its Bento and its keys?"
        wait(lambda b: b.current_url == f"{base}/deployments")
        assert list_deployments(workspace) == []
    finally:
        browser.set_page_load_timeout(60)
        for deployment in list_deployments(workspace):
            stop_deployment(workspace, deployment["name"])
