"""Deployments as a user runs them: `headsmith deploy` builds real Bentos and starts real `bentoml serve` processes
on 127.0.0.1; clients are bentoml.SyncHTTPClient and raw HTTP."""

import base64
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, strategies as st

from headsmith.config import compose_train_config
from headsmith.models.registry import register_model
from headsmith.training.train import train
from headsmith.workspace import Workspace
from conftest import run_cli, small_image_model, snapshot_csv
from image_server import SAMPLES, decompression_bomb, fifty_megapixels


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployed:
    """The deployments of one workspace, driven through the `headsmith` command."""

    def __init__(self, home: Path):
        self.home, self.env = home, {"HEADSMITH_HOME": str(home)}
        self.urls: dict[str, str] = {}

    def cli(self, *args: str, ok: bool = True):
        result = run_cli(*args, env=self.env)
        assert not ok or result.returncode == 0, result.stdout + result.stderr
        return result

    def create_and_serve(self, name: str, model: str, *options: str) -> tuple[str, str]:
        self.cli("deploy", "create", name, "--model", model, *options)
        key = self.cli("deploy", "keys", "create", name, "--label", "tests").stdout.strip().splitlines()[-1]
        port = _free_port()
        self.cli("deploy", "serve", name, "--port", str(port))
        self.urls[name] = f"http://127.0.0.1:{port}"
        return self.urls[name], key

    def predict(self, ref: str, inputs: list) -> list[dict]:
        """What `headsmith predict REF INPUTS...` answers for each input (its `heads`), computed in this process by
        the same Predictor: the reference a served answer must equal."""
        from headsmith.predictor import open_predictor

        return open_predictor(Workspace(self.home), ref).predict(inputs)

    def stop_all(self):
        """`headsmith deploy stop` for each, side by side (each waits for its server to exit)."""
        with ThreadPoolExecutor(max(1, len(self.urls))) as pool:
            list(pool.map(lambda name: self.cli("deploy", "stop", name, ok=False), self.urls))


def post(url: str, body, key: str | None = None, content_type: str = "application/json") -> tuple[int, object]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def error_of(body) -> str:
    """The message of an error answer, after checking its shape: {"error": {"code": ..., "message": ...}}."""
    assert isinstance(body, dict) and set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
    return body["error"]["message"]


def scorer_calls(url: str) -> tuple[float, float]:
    """From the deployment's Prometheus metrics: the scorer's calls so far, and the inputs they scored."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()

    def value(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))
    return value("bentoml_service_adaptive_batch_size_count"), value("bentoml_service_adaptive_batch_size_sum")


@pytest.fixture(scope="module")
def text_deployments(tmp_path_factory, reviews, tiny_backbone):
    """Two versions of a text model, each deployed and serving with its own key."""
    home = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSMITH_HOME", str(home))
        sample = pd.concat([g.head(100) for _, g in reviews.groupby("sentiment")]).reset_index(drop=True)
        sample.to_csv(home / "reviews.csv", index=False)
        snapshot_csv(Workspace(home), home / "reviews.csv", "reviews", "text", {"sentiment": "sentiment"})
        deployed = Deployed(home)
        for version, epochs in ((1, 1), (2, 3)):
            cfg = compose_train_config([f"paths.output_dir={home / f'run{version}'}", "trainer=cpu",
                                        "trainer.enable_progress_bar=false", "backbone=hf_text",
                                        f"backbone.pretrained={tiny_backbone}", "backbone.max_tokens=32",
                                        f"trainer.max_epochs={epochs}", f"seed={version}", "dataset.snapshot=reviews"])
            train(cfg)
            register_model(Workspace(home), home / f"run{version}", "reviews-model")
        production = deployed.create_and_serve("production", "reviews-model:1", "--max-inputs", "100")
        canary = deployed.create_and_serve("canary", "reviews-model:2")
    yield deployed, production, canary
    deployed.stop_all()


TEXTS = ["A gorgeous, moving film.", "Dull, lifeless and far too long.", "It has its moments."]


def test_concurrent_requests_are_batched_each_scored_once_and_answered_with_their_own_scores(text_deployments):
    """160 one-text requests, 32 at a time: the scorer batches them, scores each text once (none lost between the
    two services and made again) and every answer is its own text's, as `predict` gives it."""
    deployed, (url, key), _ = text_deployments
    texts = [f"{start} film, take {i}." for i, start in enumerate(["A moving", "A dull", "An odd", "A tender"] * 40)]
    calls_before, scored_before = scorer_calls(url)
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda text: post(f"{url}/v1/classify/text", {"texts": [text]}, key), texts))
    calls, scored = scorer_calls(url)
    assert scored - scored_before == len(texts) and calls - calls_before < len(texts) / 2, (calls, scored)
    predicted = deployed.predict("reviews-model:1", texts)
    for (status, answer), local in zip(answers, predicted):
        assert status == 200, answer
        served = [c["score"] for c in answer["results"][0]["sentiment"]["classes"]]
        assert served == pytest.approx([c["score"] for c in local["sentiment"]["classes"]], abs=1e-5)


def test_two_deployments_answer_at_once_with_their_own_keys_as_predict_does(text_deployments):
    import bentoml

    deployed, (prod_url, prod_key), (canary_url, canary_key) = text_deployments
    answers = {}

    def ask(name, url, key):
        with bentoml.SyncHTTPClient(url, token=key) as client:
            answers[name] = client.classify_text(texts=TEXTS)

    threads = [threading.Thread(target=ask, args=a) for a in (("production", prod_url, prod_key),
                                                             ("canary", canary_url, canary_key))]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    for name, version in (("production", 1), ("canary", 2)):
        assert answers[name]["model"] == {"name": "reviews-model", "version": version}
        predicted = deployed.predict(f"reviews-model:{version}", TEXTS)
        for served, local in zip(answers[name]["results"], predicted):
            assert served["sentiment"]["decision"] == local["sentiment"]["decision"]
            for a, b in zip(served["sentiment"]["classes"], local["sentiment"]["classes"]):
                assert a["class"] == b["class"] and a["threshold"] == b["threshold"]
                assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert answers["production"]["results"] != answers["canary"]["results"]  # two models, two answers
    # a key belongs to its deployment
    assert post(f"{canary_url}/v1/classify/text", {"texts": TEXTS}, prod_key)[0] == 401
    listed = deployed.cli("deploy", "list").stdout
    assert "production" in listed and "canary" in listed and listed.count("running") == 2
    for name, url, other in (("production", prod_url, "canary"), ("canary", canary_url, "production")):
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            metrics = r.read().decode()  # each deployment's own: the other's start did not wipe them
        assert f'service_name="headsmith-{name}"' in metrics and f"headsmith-{other}" not in metrics


def test_bad_requests_get_clear_4xx_and_the_server_keeps_answering(text_deployments):
    _, (url, key), _ = text_deployments
    endpoint = f"{url}/v1/classify/text"
    cases = [
        ({"texts": ["fine"]}, None, "application/json", 401, "missing or invalid API key"),
        ({"texts": ["fine"]}, "hs_not-a-key", "application/json", 401, "missing or invalid API key"),
        ({"texts": [" "]}, key, "application/json", 400, "texts[0] is empty"),
        ({"texts": ["x" * 1_000_000]}, key, "application/json", 400, "1,000,000 characters: at most 10,000"),
        (b"texts=fine", key, "text/plain", 400, "Invalid JSON"),
        ({"text": "fine"}, key, "application/json", 400, "Field required"),
        ({"texts": "fine"}, key, "application/json", 400, "Input should be a valid array"),
        ({"texts": ["fine"], "heads": ["spam"]}, key, "application/json", 400, "unknown head 'spam'"),
        ({"texts": ["fine"] * 1000}, key, "application/json", 400, "1000 inputs in one request: at most 100"),
        ({"images": ["aGVsbG8="]}, key, "application/json", 400, "reads texts"),
    ]
    codes = {400: "invalid_request", 401: "unauthorized"}
    for body, with_key, content_type, status, message in cases:
        target = f"{url}/v1/classify/image" if "images" in str(body)[:12] else endpoint
        got, answer = post(target, body, with_key, content_type)
        assert (got, message in error_of(answer)) == (status, True), (body if len(str(body)) < 200 else "...", answer)
        assert answer["error"]["code"] == codes[status]
        assert post(endpoint, {"texts": ["still up"]}, key)[0] == 200


def _raw(url: str, head: bytes, body_chunks=(), key: str = "") -> tuple[int, dict]:
    """One request written by hand on a socket (a declared length it never sends, a chunked body): the status
    and the JSON answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(head.replace(b"KEY", key.encode()))
        try:
            for chunk in body_chunks:
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            connection.sendall(b"0\r\n\r\n" if body_chunks else b"")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        data = b""
        while b"\r\n\r\n" not in data and (chunk := connection.recv(65536)):
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        while len(body) < length and (chunk := connection.recv(65536)):
            body += chunk
    return int(head.split()[1]), json.loads(body[:length])


def test_request_size_caps_answer_413_naming_the_limit_before_the_body_is_read(text_deployments):
    _, (url, key), _ = text_deployments
    endpoint = f"{url}/v1/classify/text"
    # a body over 32 MiB: refused, whether its length is declared or it arrives chunked
    declared = (b"POST /v1/classify/text HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\n"
                b"Content-Type: application/json\r\nContent-Length: 41943040\r\n\r\n")
    status, answer = _raw(url, declared, key=key)  # 40 MiB announced, none sent: answered at once
    assert status == 413 and "the request body is 40.0 MiB: the limit is 32.0 MiB" in error_of(answer)
    assert answer["error"]["code"] == "too_large"
    chunked = (b"POST /v1/classify/text HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer KEY\r\n"
               b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    status, answer = _raw(url, chunked, [b"x" * 2**20] * 40, key=key)
    assert status == 413 and "the limit is 32.0 MiB" in error_of(answer)
    # unauthenticated: refused before a byte of the body is read
    status, answer = _raw(url, declared.replace(b"Authorization: Bearer KEY\r\n", b""))
    assert status == 401 and answer["error"]["code"] == "unauthorized"
    assert post(endpoint, {"texts": ["still up"]}, key)[0] == 200


def test_an_overloaded_deployment_answers_503_with_its_reason_and_keeps_serving(text_deployments):
    deployed, _, _ = text_deployments
    url, key = deployed.create_and_serve("tight", "reviews-model:1", "--max-latency-ms", "1")  # no time to batch
    endpoint = f"{url}/v1/classify/text"

    def ask(text: str) -> tuple[int, str | None, object]:
        request = urllib.request.Request(endpoint, json.dumps({"texts": [text]}).encode(),
                                         {"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, None, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Retry-After"), json.loads(e.read())

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, [f"text {i}" for i in range(32)]))
    refused = [a for a in answers if a[0] != 200]
    assert refused, "32 requests at once with max_latency_ms=1: some are refused"
    for status, retry_after, body in refused:
        assert (status, retry_after) == (503, "1") and body["error"]["code"] == "overloaded" \
            and "max_latency_ms=1;" in error_of(body), (status, body)
    assert ask("one at a time")[0] == 200


def test_revoked_keys_stop_working_at_once_and_health_and_docs_are_open(text_deployments):
    deployed, (url, _), _ = text_deployments
    created = deployed.cli("deploy", "keys", "create", "production").stdout.strip().splitlines()
    key, key_id = created[-1], re.match(r"key (key_[0-9a-f]+) for deployment production", created[0]).group(1)
    assert post(f"{url}/v1/classify/text", {"texts": ["ok"]}, key)[0] == 200
    assert key_id in deployed.cli("deploy", "keys", "list", "production").stdout
    assert key not in (deployed.home / "catalog.sqlite").read_bytes().decode(errors="replace")  # hashes only
    deployed.cli("deploy", "keys", "revoke", "production", key_id)
    assert post(f"{url}/v1/classify/text", {"texts": ["ok"]}, key)[0] == 401
    for path in ("/readyz", "/livez"):
        with urllib.request.urlopen(url + path, timeout=10) as r:
            assert r.status == 200
    with urllib.request.urlopen(url + "/docs.json", timeout=10) as r:
        paths = json.loads(r.read())["paths"]
    assert {"/v1/classify/text", "/v1/classify/image", "/v1/classify/image/upload", "/v1/model"} <= set(paths)


# --- properties (Hypothesis, 200 examples each): whatever a client sends, an answer in the one shape, never a 5xx ---

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
FIELDS = ["texts", "images", "files", "heads", "urls"]
BODIES = st.one_of(
    JSON,
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=3),  # the right names, any values
    st.fixed_dictionaries({"texts": st.lists(st.text(max_size=60), max_size=6)},
                          optional={"heads": st.lists(st.sampled_from(["sentiment", "Sentiment", "", "kind"]) |
                                                      st.text(max_size=8), max_size=3)}))
ENDPOINTS = ["/v1/classify/text", "/v1/classify/image", "/v1/classify/image/upload", "/v1/model"]


def _answered(status: int, body) -> None:
    assert status < 500, (status, body)
    if status != 200:
        error_of(body)


def test_any_json_to_any_endpoint_is_answered_in_one_shape_never_a_5xx(text_deployments):
    _, (url, key), _ = text_deployments

    @given(st.sampled_from(ENDPOINTS), BODIES)
    def check(endpoint, body):
        status, answer = post(url + endpoint, json.dumps(body, allow_nan=True).encode(), key)
        _answered(status, answer)
        if status == 200 and endpoint == "/v1/classify/text":
            assert len(answer["results"]) == len(body["texts"])
    check()


def test_any_bytes_of_any_content_type_are_answered_in_one_shape_never_a_5xx(text_deployments):
    _, (url, key), _ = text_deployments
    types = st.sampled_from(["application/json", "application/json; charset=latin-1", "text/plain", "",
                             "multipart/form-data; boundary=x", "multipart/form-data", "application/octet-stream",
                             "application/x-www-form-urlencoded"]) | st.text(max_size=30).filter(str.isprintable)

    @given(st.sampled_from(ENDPOINTS), st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()[:-1]),
           types)
    def check(endpoint, data, content_type):
        try:
            status, answer = post(url + endpoint, data, key, content_type=content_type)
        except UnicodeEncodeError:  # urllib itself refuses header values outside latin-1: nothing was sent
            return
        _answered(status, answer)
    check()


@pytest.fixture(scope="module")
def image_deployment(tmp_path_factory):
    """An image model (timm test network, random head: what is served, not how well) behind --allow-urls."""
    home = tmp_path_factory.mktemp("serving-images")
    deployed = Deployed(home)
    deployed.cli("model", "register", str(small_image_model(home)), "--name", "cat")
    served = deployed.create_and_serve("images", "cat:1", "--allow-urls")
    yield deployed, served
    deployed.stop_all()


def test_images_by_upload_and_base64_and_every_bad_image_refused(image_deployment, image_server):
    import bentoml

    deployed, (url, key) = image_deployment
    photo = SAMPLES / "chelsea.png"
    local = deployed.predict("cat", [photo])[0]["cat"]
    with bentoml.SyncHTTPClient(url, token=key) as client:
        uploaded = client.classify_upload(files=[photo])["results"][0]["cat"]
    status, sent = post(f"{url}/v1/classify/image", {"images": [base64.b64encode(photo.read_bytes()).decode()]}, key)
    assert status == 200
    for answer in (uploaded, sent["results"][0]["cat"]):
        assert [c["score"] for c in answer["classes"]] == pytest.approx([c["score"] for c in local["classes"]],
                                                                        abs=1e-5)
    endpoint = f"{url}/v1/classify/image"
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    truncated = (SAMPLES / "coffee.png").read_bytes()[:5000]
    cases = [
        ({"images": ["not base64!"]}, "images[0] is not base64"),
        ({"images": [b64(b"just text")]}, "not an image Pillow can read"),
        ({"images": [b64(truncated)]}, "truncated or corrupt image"),
        ({"images": [b64(fifty_megapixels())]}, "over the 40 MP limit"),
        ({"images": [b64(decompression_bomb())]}, "decompression bomb"),
        ({"urls": [f"{image_server.url}/photo/chelsea.png"]}, "127.0.0.1, a private, loopback or reserved address"),
        ({"urls": ["http://10.1.2.3/a.png"]}, "a private, loopback or reserved address"),
        ({"urls": ["file:///etc/passwd"]}, "is not an http(s) URL"),
        ({"texts": ["a text"]}, "no inputs: send at least one in `images` (base64) or `urls`"),
    ]
    for body, message in cases:
        status, answer = post(endpoint, body, key)
        assert (status, message in error_of(answer)) == (400, True), answer
        assert post(endpoint, {"images": [b64(photo.read_bytes())]}, key)[0] == 200
    # one image over 20 MiB, in a body under 32 MiB: base64 in JSON, or a multipart file
    big = photo.read_bytes() + bytes(21 * 2**20)
    status, answer = post(endpoint, {"images": [b64(big)]}, key)
    assert status == 413 and re.search(r"an image is 21\.\d MiB: the limit is 20\.0 MiB", error_of(answer)), answer
    boundary = "headsmith-test"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    status, answer = post(f"{url}/v1/classify/image/upload", form, key, f"multipart/form-data; boundary={boundary}")
    assert status == 413 and "the limit is 20.0 MiB" in error_of(answer), answer
    assert post(f"{url}/v1/classify/text", {"texts": ["a text"]}, key)[0] == 400


def test_the_bento_carries_exactly_the_picked_model_version(text_deployments):
    import subprocess
    import sys

    deployed, _, _ = text_deployments
    script = ("import bentoml, json; b = bentoml.get('headsmith-canary:latest'); "
              "print(json.dumps([str(m.tag) for m in b.info.all_models]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "BENTOML_HOME": str(deployed.home / "bentoml")})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["headsmith-reviews-model:v2"], out.stderr


def _png(width: int, height: int, exif: bytes | int | None) -> bytes:
    """A small PNG with an EXIF block: a real orientation (an int, valid or not), arbitrary bytes, or none."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    if isinstance(exif, int):
        tags = Image.Exif()
        tags[0x0112] = exif
        exif = tags.tobytes()
    Image.new("RGB", (width, height), (width * 3 % 256, 90, height * 5 % 256)).save(
        buffer, "PNG", **({"exif": exif} if exif is not None else {}))
    return buffer.getvalue()


def test_any_image_bytes_sent_or_uploaded_are_answered_in_one_shape_never_a_5xx(image_deployment):
    _, (url, key) = image_deployment
    pngs = st.builds(_png, st.integers(1, 80), st.integers(1, 80),
                     st.none() | st.integers(0, 12) | st.binary(max_size=80))
    boundary = b"hsproperty"

    @given(st.lists(st.binary(max_size=300) | pngs, min_size=1, max_size=3), st.booleans())
    def check(images, upload):
        if upload:
            body = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"files\"; filename=\"%d.png\"\r\n"
                            b"Content-Type: image/png\r\n\r\n%s\r\n" % (boundary, i, data)
                            for i, data in enumerate(images)) + b"--%s--\r\n" % boundary
            status, answer = post(f"{url}/v1/classify/image/upload", body, key,
                                  content_type=f"multipart/form-data; boundary={boundary.decode()}")
        else:
            status, answer = post(f"{url}/v1/classify/image",
                                  {"images": [base64.b64encode(data).decode() for data in images]}, key)
        _answered(status, answer)
        if status == 200:
            assert len(answer["results"]) == len(images)
    check()


def test_an_upload_whose_files_field_holds_text_or_a_url_is_refused_not_fetched(image_deployment, image_server):
    """BentoML downloads a URL given as text in a file field of a form: past --allow-urls, the public-address
    check and the image cap. A deployment refuses it before BentoML sees it."""
    _, (url, key) = image_deployment
    before = image_server.hits["/photo/chelsea.png"]
    for value in (f"{image_server.url}/photo/chelsea.png", "http://93.184.216.34/cat.png", "not a file"):
        body = b'--b\r\nContent-Disposition: form-data; name="files"\r\n\r\n%s\r\n--b--\r\n' % value.encode()
        status, answer = post(f"{url}/v1/classify/image/upload", body, key,
                              content_type="multipart/form-data; boundary=b")
        assert status == 400 and "`files` holds text" in error_of(answer) and "not fetched" in error_of(answer)
    assert image_server.hits["/photo/chelsea.png"] == before
