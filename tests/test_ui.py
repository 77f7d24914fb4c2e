"""`headsmith ui`, the real server on 127.0.0.1: the token (URL, cookie, login form), the Host check against DNS
rebinding, CSRF on every request that changes anything, and the datasets page."""

import os
import re
import socket
import subprocess
import time

import httpx
import pytest

from conftest import HEADSMITH, import_csv


@pytest.fixture
def ui(workspace, tmp_path, reviews):
    reviews.head(30).to_csv(tmp_path / "posts.csv", index=False)
    import_csv(workspace, tmp_path / "posts.csv", "posts", text="text", sentiment="label", movie="ignore")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([HEADSMITH, "ui", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "COLUMNS": "200"})
    url = re.search(r"open (http://\S+)", server.stdout.readline()).group(1)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield url, f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(10)


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
        row = re.search(r"<tr><td>posts</td><td>([\d,]+)</td>", listing.text)
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
