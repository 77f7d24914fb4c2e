"""A real HTTP server on 127.0.0.1 serving real images and every way an image URL goes wrong."""

from __future__ import annotations

import io
import threading
import time
import zlib
from collections import Counter
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from struct import pack

import numpy as np
import skimage
from PIL import Image

SAMPLES = Path(skimage.__file__).parent / "data"
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]


def digit_png(i: int) -> bytes:
    """scikit-learn's digits (8x8, 16 grey levels), written as a 32x32 PNG."""
    digits = _digits()
    image = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32), Image.NEAREST)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@cache
def _faces() -> np.ndarray:
    return np.load(SAMPLES / "lfw_subset.npy")  # 100 faces, then 100 non-faces; 25x25 greys in [0, 1]


def face_png(i: int) -> bytes:
    """scikit-image's lfw_subset image i (0-99 faces, 100-199 not), as a PNG."""
    out = io.BytesIO()
    Image.fromarray((_faces()[i] * 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


@cache
def _digits():
    from sklearn.datasets import load_digits

    return load_digits()


@cache
def fifty_megapixels() -> bytes:
    """A real photo (scikit-image's rocket) scaled to 8660x5774: 50 MP, a few MB as JPEG."""
    out = io.BytesIO()
    Image.open(SAMPLES / "rocket.jpg").resize((8660, 5774)).save(out, "JPEG", quality=30)
    return out.getvalue()


@cache
def decompression_bomb() -> bytes:
    """A valid 1-bit PNG of 30000x30000 pixels (900 MP) that compresses to about 100 KiB."""
    width = height = 30000
    row = b"\x00" + bytes(width // 8)
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return pack(">I", len(data)) + kind + data + pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


RAW = {  # path -> the whole response: malformed headers and status lines
    "/bad-length.jpg": b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: lots\r\n\r\nnot much",
    "/two-lengths.jpg": (b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 5\r\n"
                         b"Content-Length: 7\r\n\r\nabcdefg"),
    "/garbage-status.jpg": b"HELLO THERE\r\n\r\n",
}


class ImageServer:
    """Routes: /photo/NAME, /digit/I.png, /face/I.png, /missing.jpg (404), /slow.jpg (answers after `slow_seconds`),
    /page.jpg (HTML), /truncated.jpg, /50mp.jpg, /bomb.png, /flaky.jpg (503 once, then the image),
    /latency/I.png (a digit after `latency` seconds), and the malformed responses of RAW. `hits` counts requests
    per path."""

    def __init__(self, latency: float = 0.1, slow_seconds: float = 4.0):
        self.latency, self.slow_seconds = latency, slow_seconds
        digit_png(0), fifty_megapixels(), decompression_bomb()  # made once, before any client waits on them
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server._lock:
                    server.hits[self.path] += 1
                    count = server.hits[self.path]
                if self.path in RAW:  # a response no well-behaved server sends, written byte for byte
                    self.wfile.write(RAW[self.path])
                    self.close_connection = True
                    return
                status, kind, body = server.route(self.path, count)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def route(self, path: str, count: int) -> tuple[int, str, bytes]:
        if path.startswith("/photo/"):
            name = path.removeprefix("/photo/")
            kind = "image/jpeg" if name.endswith(".jpg") else "image/png"
            return 200, kind, (SAMPLES / name).read_bytes()
        if path.startswith("/digit/"):
            return 200, "image/png", digit_png(int(path.removeprefix("/digit/").removesuffix(".png")))
        if path.startswith("/face/"):
            return 200, "image/png", face_png(int(path.removeprefix("/face/").removesuffix(".png")))
        if path.startswith("/latency/"):
            time.sleep(self.latency)
            return 200, "image/png", digit_png(int(path.removeprefix("/latency/").removesuffix(".png")) % 1797)
        if path == "/slow.jpg":
            time.sleep(self.slow_seconds)
            return 200, "image/jpeg", (SAMPLES / "rocket.jpg").read_bytes()
        if path == "/page.jpg":
            return 200, "text/html; charset=utf-8", b"<html><body>Not found, but friendly</body></html>"
        if path == "/truncated.jpg":
            data = (SAMPLES / "rocket.jpg").read_bytes()
            return 200, "image/jpeg", data[: len(data) // 2]
        if path == "/50mp.jpg":
            return 200, "image/jpeg", fifty_megapixels()
        if path == "/bomb.png":
            return 200, "image/png", decompression_bomb()
        if path == "/flaky.jpg":
            if count == 1:
                return 503, "text/plain", b"try again"
            return 200, "image/jpeg", (SAMPLES / "rocket.jpg").read_bytes()
        return 404, "text/plain", b"no such image"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
