"""`headsmith playground`: a small local page to try a model on sample texts or images, side by side with another
model (its base, say). Standard-library HTTP on 127.0.0.1; the model work is the Predictor's."""

from __future__ import annotations

import base64
import binascii
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from headsmith.errors import HeadsmithError
from headsmith.predictor import Predictor

PAGE = Path(__file__).with_name("playground.html")
MAX_INPUTS = 32
MAX_BODY = 32 * 2**20


class Playground(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, predictors: list[Predictor], host: str = "127.0.0.1", port: int = 0):
        kinds = {p.kind for p in predictors}
        if len(kinds) > 1:
            raise HeadsmithError("--compare needs a model that reads the same inputs: "
                                 + ", ".join(f"{p.name} reads {p.kind}s" for p in predictors))
        self.predictors = predictors
        self.lock = threading.Lock()  # one forward pass at a time: torch already uses every core
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def answer(self, body: dict) -> dict:
        kind = self.predictors[0].kind
        if not isinstance(body, dict):
            raise HeadsmithError('send a JSON object: {"texts": [...]} or {"images": [base64, ...]}')
        inputs = body.get("texts" if kind == "text" else "images")
        if not isinstance(inputs, list) or not inputs:
            raise HeadsmithError(f"this model reads {kind}s: send " + ('{"texts": ["...", ...]}' if kind == "text"
                                                                       else '{"images": ["<base64>", ...]}'))
        if len(inputs) > MAX_INPUTS:
            raise HeadsmithError(f"{len(inputs)} inputs: at most {MAX_INPUTS} at a time in the playground")
        if kind == "text":
            if not all(isinstance(t, str) and t.strip() for t in inputs):
                raise HeadsmithError("every text must be a non-empty string")
        else:
            try:
                inputs = [base64.b64decode(b.split(",", 1)[-1], validate=True) for b in inputs]
            except (binascii.Error, AttributeError, ValueError):
                raise HeadsmithError("images are sent as base64 strings (data: URLs are fine)") from None
        with self.lock:
            return {"models": [{"model": p.describe(), "results": p.predict(inputs)} for p in self.predictors]}


class _Handler(BaseHTTPRequestHandler):
    server: Playground

    def log_message(self, format, *args):  # quiet: the terminal shows the URL, not every request
        pass

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: dict) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def do_GET(self):
        if self.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif self.path == "/api/models":
            self._json(HTTPStatus.OK, {"models": [p.describe() for p in self.server.predictors]})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})

    def do_POST(self):
        if self.path != "/api/predict":
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}"})
        size = int(self.headers.get("Content-Length") or 0)
        if size > MAX_BODY:
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              {"error": f"{size / 2**20:.0f} MiB: at most {MAX_BODY / 2**20:.0f} MiB per request"})
        try:
            body = json.loads(self.rfile.read(size) or b"null")
            self._json(HTTPStatus.OK, self.server.answer(body))
        except json.JSONDecodeError as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"the body is not JSON: {e}"})
        except HeadsmithError as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
