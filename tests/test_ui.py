"""`headsmith ui`, the real server on 127.0.0.1: the token (URL, cookie, login form), the Host check against DNS
rebinding, CSRF on every request that changes anything; the dataset pages through HTTP and in Chromium."""

import re
import shutil
import time
from html import unescape as html_unescape
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import click_and_load, console_errors, import_csv, run_cli, save_screenshot, snapshot_csv
from headsmith.data.dataset import failed_images, get_dataset, history, list_datasets, rows_frame
from headsmith.training import runs
from image_server import SAMPLES


@pytest.fixture
def ui(workspace, tmp_path, reviews, start_ui):
    reviews.head(30).to_csv(tmp_path / "posts.csv", index=False)
    import_csv(workspace, tmp_path / "posts.csv", "posts", text="text", sentiment="label", movie="ignore")
    return start_ui()


def test_the_token_is_needed_and_kept_in_a_cookie(ui):
    url, base = ui
    token = url.split("token=")[1]
    assert url == f"{base}/?token={token}" and len(token) >= 32
    page = httpx.get(f"{base}/datasets", headers={"Accept": "text/html"})
    assert page.status_code == 401 and "Sign in" in page.text and "posts" not in page.text
    assert httpx.get(f"{base}/datasets").status_code == 401
    assert httpx.get(f"{base}/datasets?token=wrong", headers={"Accept": "text/html"}).status_code == 401
    assert httpx.get(f"{base}/datasets?token=%C3%A9t%C3%A9").status_code == 401  # any text, not a crash
    assert httpx.post(f"{base}/login", content=b"token=" + b"x" * (2 << 20)).status_code == 413

    opened = httpx.get(url)  # the printed URL: the token goes into a cookie and out of the address
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    cookie = opened.headers["set-cookie"]
    assert f"headsmith_token={token}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    with httpx.Client(base_url=base, cookies=opened.cookies, follow_redirects=True) as browser:
        listing = browser.get("/")
        assert listing.status_code == 200 and listing.url.path == "/datasets"
        row = re.search(r'<tr><td><a href="/datasets/posts">posts</a></td><td>([\d,]+)</td>', listing.text)
        assert row and row.group(1) == "30"

    wrong = httpx.post(f"{base}/login", data={"token": "nope", "next": "/datasets"})
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    right = httpx.post(f"{base}/login", data={"token": token, "next": "//evil.example/"})
    assert right.status_code == 303 and right.headers["location"] == "/"  # never off this site
    assert httpx.get(f"{base}/datasets", cookies=right.cookies).status_code == 200


def test_another_host_name_is_refused(ui):
    url, base = ui
    cookies = httpx.get(url).cookies
    port = base.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", ""):
        refused = httpx.get(f"{base}/datasets", cookies=cookies, headers={"Host": host})
        assert refused.status_code == 400 and "is not this server" in refused.text
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(f"{base}/datasets", cookies=cookies, headers={"Host": host}).status_code == 200


def test_a_change_without_the_pages_csrf_token_is_refused(ui):
    url, base = ui
    with httpx.Client(base_url=base, cookies=httpx.get(url).cookies) as browser:
        expected = re.search(r'<meta name="csrf-token" content="(\w+)">', browser.get("/datasets").text).group(1)
        for missing in ({}, {"csrf": "0" * 64}):
            refused = browser.post("/datasets", data=missing)
            assert refused.status_code == 403 and "CSRF" in refused.text
        assert browser.post("/datasets", data={"csrf": expected}).status_code == 405  # past the guard: no such action
        assert browser.post("/datasets", headers={"X-CSRF-Token": expected}).status_code == 405
        too_big = browser.post("/datasets", content=b"x" * (2 << 20), headers={"X-CSRF-Token": expected})
        assert too_big.status_code == 413
        chunked = browser.post("/datasets", content=(b"x" * 65536 for _ in range(32)),  # no declared length
                               headers={"X-CSRF-Token": expected})
        assert chunked.status_code == 413


def signed_in_client(url: str, base: str) -> httpx.Client:
    return httpx.Client(base_url=base, cookies=httpx.get(url).cookies, timeout=60)


def csrf_of(client: httpx.Client) -> str:
    return re.search(r'<meta name="csrf-token" content="(\w+)">', client.get("/datasets").text).group(1)


def row_form(page: str, row: int, column: str) -> dict:
    """The fields of the inline edit form of `row`'s `column` cell, as the page wrote them."""
    form = re.search(rf'<tr id="row-{row}">.*?<input type="hidden" name="column" value="{column}">.*?</form>', page,
                     re.S).group(0)
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))


def test_the_dataset_page_pages_and_filters_on_the_server(ui, workspace):
    with signed_in_client(*ui) as browser:
        page = browser.get("/datasets/posts?limit=10&offset=10").text
        assert re.findall(r'<tr id="row-(\d+)">', page) == [str(r) for r in range(11, 21)]
        assert "rows 11&ndash;20 of 30" in page and 'id="next"' in page and 'id="previous"' in page
        negative = browser.get("/datasets/posts?class.sentiment=%3Dnegative").text
        rows = rows_frame(workspace, "posts")
        expected = rows[rows.sentiment == "negative"].row.tolist()
        assert re.findall(r'<tr id="row-(\d+)">', negative) == [str(r) for r in expected]
        assert f"of {len(expected)}" in negative
        wrong = browser.get("/datasets/posts?class.text=%3Dx")
        assert wrong.status_code == 400
        assert "column 'text' of dataset 'posts' is not a label" in html_unescape(wrong.text)
        assert browser.get("/datasets/nope").status_code == 404


def test_a_stale_edit_is_refused_with_the_current_value(ui, workspace):
    with signed_in_client(*ui) as browser:
        shown = browser.get("/datasets/posts").text
        form = row_form(shown, 3, "sentiment")
        old = rows_frame(workspace, "posts").set_index("row").sentiment[3]
        new = "positive" if old == "negative" else "negative"
        assert run_cli("dataset", "set", "posts", "3", "sentiment", new).returncode == 0  # the CLI, meanwhile
        refused = browser.post("/datasets/posts/change", data={**form, "action": "set", "value": old})
        assert refused.status_code == 409
        assert re.search(rf"not saved: 1 row of dataset &#39;posts&#39; changed since .*row 3: .*sentiment=&#39;{new}",
                         refused.text)
        assert row_form(refused.text, 3, "sentiment")["version.3"] != form["version.3"]  # the page as it is now
        assert rows_frame(workspace, "posts").set_index("row").sentiment[3] == new  # not overwritten

        fresh = row_form(refused.text, 3, "sentiment")
        saved = browser.post("/datasets/posts/change", data={**fresh, "action": "set", "value": old})
        assert saved.status_code == 303
        change = history(workspace, "posts")[-1]
        assert saved.headers["location"] == f"/datasets/posts?offset=0&change={change['id']}"
        assert (change["action"], change["old"], change["new"]) == ("set", new, old)
        banner = browser.get(saved.headers["location"]).text
        assert f"Change {change['id']}: row 3: sentiment &#39;{new}&#39; \u2192 &#39;{old}&#39;" in banner


def test_thumbnails_name_a_blob_and_nothing_else(ui):
    with signed_in_client(*ui) as browser:
        for bad in ("..%2F..%2Fcatalog.sqlite", "A" * 64, "0" * 63):
            assert browser.get(f"/thumbnails/{bad}").status_code in (400, 404)
        missing = browser.get(f"/thumbnails/{'0' * 64}")
        assert missing.status_code == 404 and "is missing" in missing.text


def test_the_dataset_page_in_chromium(start_ui, browser, image_server, workspace, tmp_path):
    """Thumbnails of the fetched images, a failed image with its reason, an inline label fix, a selection relabelled
    and undone, a deletion, and a retry of a failed image, as a person does them."""
    url, base = start_ui("--allow-private-urls")  # the test server is on 127.0.0.1
    rows = [(f"{image_server.url}/photo/{p}", "yes" if p == "chelsea.png" else "no")
            for p in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")]
    rows += [(f"{image_server.url}/missing.jpg", "no"), (f"{image_server.url}/page.jpg", "no")]
    pd.DataFrame(rows, columns=["url", "cat"]).to_csv(tmp_path / "pets.csv", index=False)
    import_csv(workspace, tmp_path / "pets.csv", "pets", url="image", cat="label")

    browser.get(url)
    browser.get(f"{base}/datasets/pets")
    images = browser.find_elements(By.CSS_SELECTOR, "img.thumb")
    assert len(images) == 4
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) > 0
               for i in images)
    failed = browser.find_element(By.ID, "row-5")
    assert "http_error" in failed.text and "http 404" in failed.text
    assert "not_an_image" in browser.find_element(By.ID, "row-6").text
    save_screenshot(browser, "ui-dataset.png")

    cell = browser.find_element(By.CSS_SELECTOR, 'input[aria-label="cat of row 2"]')  # coffee: no cat at all...
    cell.clear()
    cell.send_keys("yes")
    click_and_load(browser, cell.find_element(By.XPATH, "following-sibling::button"))
    assert "Change" in browser.find_element(By.ID, "change").text
    assert rows_frame(workspace, "pets").set_index("row").cat[2] == "yes"
    cell = browser.find_element(By.CSS_SELECTOR, 'input[aria-label="cat of row 2"]')  # ...so back to no
    cell.clear()
    cell.send_keys("no")
    click_and_load(browser, cell.find_element(By.XPATH, "following-sibling::button"))
    assert rows_frame(workspace, "pets").set_index("row").cat[2] == "no"

    before = rows_frame(workspace, "pets").cat.tolist()
    for row in (3, 4):
        browser.find_element(By.CSS_SELECTOR, f'#row-{row} input[name="row"]').click()
    browser.find_element(By.CSS_SELECTOR, '#selection input[name="value"]').send_keys("maybe")
    click_and_load(browser, browser.find_element(By.ID, "set-selected"))
    assert rows_frame(workspace, "pets").set_index("row").cat[[3, 4]].tolist() == ["maybe", "maybe"]
    assert "2 rows: cat \u2192 'maybe'" in browser.find_element(By.ID, "change").text
    click_and_load(browser, browser.find_element(By.ID, "undo"))
    assert rows_frame(workspace, "pets").cat.tolist() == before

    hits = image_server.hits["/missing.jpg"]
    browser.find_element(By.CSS_SELECTOR, '#row-5 input[name="row"]').click()
    click_and_load(browser, browser.find_element(By.ID, "fetch-selected"))
    assert image_server.hits["/missing.jpg"] > hits and "http_error" in browser.find_element(By.ID, "row-5").text

    browser.find_element(By.CSS_SELECTOR, '#row-6 input[name="row"]').click()
    click_and_load(browser, browser.find_element(By.ID, "delete-selected"))
    assert not browser.find_elements(By.ID, "row-6") and rows_frame(workspace, "pets").row.tolist() == [1, 2, 3, 4, 5]
    assert [h["action"] for h in history(workspace, "pets")] == ["import", "set", "set", "relabel", "undo",
                                                                 "delete_rows"]
    assert console_errors(browser) == []


def test_importing_a_csv_in_chromium(start_ui, browser, image_server, workspace, tmp_path):
    """Upload, the inferred types with their reasons, one changed, import; the images arrive on the dataset page."""
    rows = [(f"{image_server.url}/photo/{p}", "yes" if p == "chelsea.png" else "no", f"note {i}")
            for i, p in enumerate(("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"))]
    rows.append((f"{image_server.url}/missing.jpg", "no", "note 4"))
    csv = tmp_path / "pets.csv"
    pd.DataFrame(rows, columns=["url", "cat", "note"]).to_csv(csv, index=False)
    url, base = start_ui("--allow-private-urls")
    browser.get(url)
    click_and_load(browser, browser.find_element(By.ID, "import-link"))
    browser.find_element(By.ID, "file").send_keys(str(csv))
    browser.find_element(By.ID, "upload-button").click()
    WebDriverWait(browser, 30).until(lambda b: "/datasets/import/" in b.current_url)
    def chosen(column: str) -> Select:
        return Select(browser.find_element(By.CSS_SELECTOR, f'select[aria-label="type of {column}"]'))

    assert [chosen(c).first_selected_option.text for c in ("url", "cat", "note")] == ["image", "label", "text"]
    assert "http(s) URLs" in browser.find_element(By.ID, "columns").text  # each type with its reason
    chosen("note").select_by_visible_text("ignore")
    name = browser.find_element(By.NAME, "name")
    assert name.get_attribute("value") == "pets"
    save_screenshot(browser, "ui-import.png")
    click_and_load(browser, browser.find_element(By.ID, "import"))
    assert browser.current_url == f"{base}/datasets/pets"
    WebDriverWait(browser, 60).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "img.thumb")) == 4)
    WebDriverWait(browser, 30).until(lambda b: all(b.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", i) > 0
        for i in b.find_elements(By.CSS_SELECTOR, "img.thumb")))
    assert "http 404" in browser.find_element(By.ID, "row-5").text
    dataset = get_dataset(workspace, "pets")
    assert [(c.name, c.type) for c in dataset.columns] == [("url", "image"), ("cat", "label"), ("note", "ignore")]
    assert dataset.column("note").reason == "set on the import page"
    kept = Path(dataset.source)
    assert kept.parent.parent == workspace.root / "uploads" and kept.read_bytes() == csv.read_bytes()
    assert console_errors(browser) == []


def wait_for_work(client: httpx.Client, name: str) -> dict:
    for _ in range(300):
        progress = client.get(f"/datasets/{name}/progress").json()
        if progress["stage"] not in ("importing", "fetching"):
            return progress
        time.sleep(0.1)
    raise AssertionError(f"the work on {name} did not end: {progress}")


def upload(client: httpx.Client, csrf: str | None, name: str, content: bytes) -> httpx.Response:
    return client.post("/datasets/import", files={"file": (name, content, "text/csv")},
                       headers={"X-CSRF-Token": csrf} if csrf else {})


def test_uploads_and_the_files_and_urls_they_may_reach(start_ui, image_server, workspace, tmp_path):
    url, base = start_ui("--max-upload-mb", "1")
    with signed_in_client(url, base) as client:
        csrf = re.search(r'<meta name="csrf-token" content="(\w+)">', client.get("/datasets/import").text).group(1)
        assert upload(client, None, "a.csv", b"text,label\nhi,a\n").status_code == 403
        too_big = upload(client, csrf, "big.csv", b"text,label\n" + b"x" * (2 << 20) + b",a\n")
        assert too_big.status_code == 413 and "over 1 MB" in too_big.text
        bad = upload(client, csrf, "ragged.csv", b"text,label\nhi,a\nthere,b,extra\n")
        assert bad.status_code == 400 and bad.text.startswith("400: ragged.csv:3: this row has 3 fields but the header")
        assert not [p for p in (workspace.root / "uploads").iterdir()]  # nothing half-kept

        folder = tmp_path / "elsewhere"
        folder.mkdir()
        shutil.copy(SAMPLES / "coffee.png", folder / "coffee.png")
        refs = [f"{image_server.url}/photo/chelsea.png", "coffee.png", str(folder / "coffee.png"),
                "file:///etc/hostname"]
        csv = pd.DataFrame({"image": refs, "cat": ["yes", "no", "no", "no"]}).to_csv(index=False).encode()
        kept = upload(client, csrf, "refs.csv", csv)
        assert kept.status_code == 303
        review = client.get(kept.headers["location"])
        form = {"csrf": csrf, "type.image": "image", "type.cat": "label"}
        for name, wrong, words in (("x/../y", {}, "is not allowed"), ("refs", {"type.cat": "number"},
                                                                       "the type must be one of")):
            refused = client.post(kept.headers["location"], data={**form, "name": name, **wrong})
            assert refused.status_code == 400 and words in refused.text.replace("&#39;", "'")
        assert review.status_code == 200
        assert client.post(kept.headers["location"], data={**form, "name": "refs"}).status_code == 303
        assert wait_for_work(client, "refs")["stage"] == "done"
    statuses = {r["ref"]: (r["status"], r["detail"]) for r in failed_images(workspace, "refs")[1]}
    assert statuses[refs[0]][0] == "refused" and "private, loopback or reserved" in statuses[refs[0]][1]
    assert all(statuses[ref] == ("refused", f"{ref!r} is not an http(s) URL, and local files are not read here")
               for ref in refs[3:]) and len(statuses) == 4

    (folder / "inside").mkdir()
    shutil.copy(SAMPLES / "coffee.png", folder / "inside" / "coffee.png")
    url, base = start_ui("--data", str(folder / "inside"))
    with signed_in_client(url, base) as client:
        csrf = re.search(r'<meta name="csrf-token" content="(\w+)">', client.get("/datasets/import").text).group(1)
        csv = pd.DataFrame({"image": ["coffee.png", "../coffee.png", str(folder / "coffee.png")],
                            "cat": ["no", "no", "yes"]}).to_csv(index=False).encode()
        kept = upload(client, csrf, "local.csv", csv)
        client.post(kept.headers["location"], data={"csrf": csrf, "name": "local", "type.image": "image"})
        assert wait_for_work(client, "local")["stage"] == "done"
    statuses = {r["row"]: (r["status"], r["detail"]) for r in failed_images(workspace, "local")[1]}
    assert list(statuses) == [2, 3] and all(s == "refused" and "is outside the data folder" in d
                                            for s, d in statuses.values())


def test_snapshots_made_listed_shown_and_compared(ui, workspace):
    with signed_in_client(*ui) as client:
        csrf = re.search(r'<meta name="csrf-token" content="(\w+)">', client.get("/snapshots").text).group(1)
        form = {"csrf": csrf, "dataset": "posts", "input": "text", "label": "sentiment", "head.sentiment": "mood"}
        refused = client.post("/snapshots/new", data={**form, "name": "s1", "input": "sentiment"})
        assert refused.status_code == 400
        assert "--input sentiment: a text-classification snapshot needs a text column" in refused.text
        assert client.post("/snapshots/new", data={**form, "name": "s1", "max_invalid": "x"}).status_code == 400
        made = client.post("/snapshots/new", data={**form, "name": "s1"})
        assert made.status_code == 303 and made.headers["location"] == "/snapshots/s1"
        assert run_cli("dataset", "set", "posts", "2", "text", "").returncode == 0  # an empty text: left out
        assert run_cli("dataset", "set", "posts", "4", "sentiment", "neutral").returncode == 0
        assert client.post("/snapshots/new", data={**form, "name": "s2"}).status_code == 303
        shown = client.get("/snapshots/s2").text
        assert re.search(r'<a href="/datasets/posts\?row=2">2</a></td><td>3</td><td>[^<]*empty', shown)
        assert "<td>mood</td><td>sentiment</td>" in shown
        listing = client.get("/snapshots").text
        assert '<a href="/snapshots/s1">s1</a>' in listing and '<a href="/snapshots/s2">s2</a>' in listing
        diff = client.get("/snapshots/diff?a=s1&b=s2").text
        assert "rows 30 &rarr; 29: 0 added, 1 removed, 1 relabelled" in diff
        assert "<td>mood</td><td>neutral</td><td>0</td><td>1</td><td>+1</td>" in diff
        jump = client.get("/datasets/posts?row=25&limit=10").text  # a link to a row opens the page holding it
        assert '<tr id="row-25" class="target">' in jump and "rows 21&ndash;30 of 30" in jump


def wait_for_run(client: httpx.Client, run_id: int, until=("finished", "failed", "stopped", "died"),
                 seconds: float = 600) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        progress = client.get(f"/runs/{run_id}/progress").json()
        if progress["status"] in until:
            return progress
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} is still {progress['status']}:\n{progress['log']}")


def test_training_from_the_browser(start_ui, workspace, reviews_csv, tiny_backbone):
    """Overrides a browser may not set are refused by key; a run is queued, started, outlives the app that started
    it, is followed, and its record (pid, status, times, exit code) kept in the catalog; mistakes link to dataset rows;
    a CLI run is recorded too."""
    snapshot_csv(workspace, reviews_csv, "reviews", "text", {"sentiment": "sentiment"})
    url, base = start_ui("--data", str(tiny_backbone))
    tiny = ["dataset.snapshot=reviews", "backbone=hf_text", f"backbone.pretrained={tiny_backbone}",
            "backbone.max_tokens=32", "trainer=cpu", "fit=sgd", "trainer.max_epochs=3", "dataset.batch_size=32",
            "name=from-the-browser"]
    with signed_in_client(url, base) as client:
        csrf = re.search(r'<meta name="csrf-token" content="(\w+)">', client.get("/runs").text).group(1)

        def start(*overrides: str, kind: str = "train") -> httpx.Response:
            return client.post("/runs", data={"csrf": csrf, "kind": kind, "recipe": "",
                                              "overrides": "\n".join(overrides)})

        bad = {"head._target_=os.system": "_target_ and other _keys_", "head={_target_: os.system}": "_target_",
               "hydra.run.dir=/tmp/elsewhere": "hydra.run.dir is not set from the browser",
               "+extra=1": "only KEY=VALUE here", "head=nonsense": "head has no option 'nonsense'",
               "name=${oc.env:HOME}": "interpolations", "backbone.pretrained=/etc": "/etc: only paths in the",
               "optimizer.lr=choice(0.1, 0.01)": "a sweep: start a tune study"}
        refused = start(*tiny, *bad)
        assert refused.status_code == 400
        for override, words in bad.items():
            assert re.search(rf"<li><code>{re.escape(override)}</code>: [^<]*{re.escape(words)}",
                             html_unescape(refused.text)), override
        unknown = start(*tiny, "trainer.max_epoch=3")  # composed as the CLI composes: the key does not exist
        assert unknown.status_code == 400 and "<code>trainer.max_epoch=3</code>" in unknown.text

        started = start(*tiny)
        assert started.status_code == 303, re.findall(r"<li>.*?</li>", started.text)
        run_id = int(started.headers["location"].rsplit("/", 1)[1])
        wait_for_run(client, run_id, until=("running",), seconds=60)

    # The run is a process of its own: the app killed meanwhile, a new one finds it in the catalog, running, then
    # finished (the run records its own end).
    app = [p for p in psutil.Process().children() if "ui" in p.cmdline()][-1]
    app.kill()
    app.wait(10)
    url, base = start_ui("--data", str(tiny_backbone))
    with signed_in_client(url, base) as client:
        csrf = csrf_of(client)
        assert client.get(f"/runs/{run_id}/progress").json()["status"] in ("running", "finished")
        done = wait_for_run(client, run_id)
        assert done["status"] == "finished", done["log"]
        assert done["curves"]["val/f1"]["x"][:3] == [0, 1, 2] and "train/loss_epoch" in done["curves"]
        record = runs.get_run(workspace, run_id)
        assert record["origin"] == "app" and record["exit_code"] == 0 and record["pid"] > 0
        assert record["ended_at"] >= record["started_at"] and Path(record["folder"]).parent.name == "from-the-browser"
        assert Path(record["folder"], "metrics.json").is_file()
        page = client.get(f"/runs/{run_id}").text
        assert 'id="metrics-sentiment"' in page and 'src="/runs/{}/files/report"'.format(run_id) in page
        rows = re.findall(r'<a class="mistake" href="/datasets/reviews\?row=(\d+)">', page)
        assert rows and all(int(r) in rows_frame(workspace, "reviews").row.tolist() for r in rows)
        report = client.get(f"/runs/{run_id}/files/report")
        assert report.status_code == 200 and "plotly" in report.text.lower()
        registered = client.post(f"/runs/{run_id}/register", data={"csrf": csrf, "name": "browser-model"})
        assert registered.headers["location"] == f"/runs/{run_id}?registered=browser-model:1"

        first, second = (int(start(*tiny).headers["location"].rsplit("/", 1)[1]) for _ in range(2))
        wait_for_run(client, first, until=("running",), seconds=60)
        assert client.get(f"/runs/{second}/progress").json()["status"] == "queued"  # one at a time
        assert client.post(f"/runs/{second}/stop", data={"csrf": csrf}).status_code == 303
        assert client.post(f"/runs/{first}/stop", data={"csrf": csrf}).status_code == 303
        assert wait_for_run(client, first, seconds=60)["status"] == "stopped"
        assert runs.get_run(workspace, second)["status"] == "stopped" and runs.get_run(workspace, second)["pid"] is None

    cli = run_cli("train", *tiny[:-1], "trainer.max_epochs=1", "name=from-the-cli")
    assert cli.returncode == 0, cli.stderr
    record = runs.list_runs(workspace)[0]
    assert (record["origin"], record["status"], record["exit_code"], record["kind"]) == ("cli", "finished", 0, "train")
    assert Path(record["folder"]).parent.name == "from-the-cli"
    with signed_in_client(url, base) as client:  # the two runs compared
        assert f'<option value="{record["id"]}">' in client.get("/runs").text
        compared = client.get(f"/runs/compare?a={run_id}&b={record['id']}")
        assert compared.status_code == 200 and "from-the-cli" in compared.text and "plotly" in compared.text.lower()
        assert client.get(f"/runs/compare?a={run_id}&b={second}").status_code == 400  # stopped: nothing to compare


def test_a_tune_study_from_the_browser(start_ui, workspace, reviews_csv, tiny_backbone):
    snapshot_csv(workspace, reviews_csv, "reviews", "text", {"sentiment": "sentiment"})
    url, base = start_ui("--data", str(tiny_backbone))
    with signed_in_client(url, base) as client:
        csrf = re.search(r'<meta name="csrf-token" content="(\w+)">', client.get("/runs").text).group(1)
        overrides = ["dataset.snapshot=reviews", "backbone=hf_text", f"backbone.pretrained={tiny_backbone}",
                     "backbone.max_tokens=32", "trainer=cpu", "trainer.max_epochs=1", "tune.trials=2",
                     "optimizer.lr=choice(0.01, 0.001)", "name=study"]
        refused = client.post("/runs", data={"csrf": csrf, "kind": "tune", "overrides": "\n".join(
            [*overrides, "head.hidden=choice({_target_: os.system}, 2)"])})
        assert refused.status_code == 400 and "_target_ and other _keys_" in refused.text
        started = client.post("/runs", data={"csrf": csrf, "kind": "tune", "overrides": "\n".join(overrides)})
        run_id = int(started.headers["location"].rsplit("/", 1)[1])
        assert wait_for_run(client, run_id)["status"] == "finished"
        page = client.get(f"/runs/{run_id}").text
        assert len(re.findall(r"<tr><td class=\"small\">", page)) == 2  # the trials table: one row per trial
        assert client.get(f"/runs/{run_id}/files/tune.png").headers["content-type"] == "image/png"
        assert Path(runs.get_run(workspace, run_id)["folder"]).name.startswith("tune-")


def test_a_server_killed_mid_import_leaves_no_half_dataset(start_ui, workspace, tmp_path):
    rows = 300_000
    big = tmp_path / "big.csv"
    pd.DataFrame({"text": [f"message number {i}" for i in range(rows)],
                  "spam": ["yes" if i % 3 else "no" for i in range(rows)]}).to_csv(big, index=False)
    url, base = start_ui()
    with signed_in_client(url, base) as client:
        csrf = re.search(r'<meta name="csrf-token" content="(\w+)">', client.get("/datasets/import").text).group(1)
        kept = upload(client, csrf, "big.csv", big.read_bytes())
        client.post(kept.headers["location"], data={"csrf": csrf, "name": "big", "type.spam": "label"})
        time.sleep(1.5)  # importing (it takes several seconds here)
        assert client.get("/datasets/big/progress").json()["stage"] == "importing"
    server = [p for p in psutil.Process().children() if "ui" in p.cmdline()][-1]
    server.kill()
    server.wait(10)
    with workspace.catalog() as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM dataset_rows").fetchone()[0] == 0  # the import's one transaction
    assert [d["name"] for d in list_datasets(workspace)] == []
    upload_folder = workspace.root / "uploads" / kept.headers["location"].rsplit("/", 1)[1]
    assert (upload_folder / "big.csv").read_bytes() == big.read_bytes()  # kept whole: import it again
    url, base = start_ui()
    with signed_in_client(url, base) as client:
        client.post(kept.headers["location"], data={"csrf": csrf_of(client), "name": "big", "type.spam": "label"})
        assert wait_for_work(client, "big")["stage"] == "done"
    assert list_datasets(workspace)[0]["rows"] == rows
