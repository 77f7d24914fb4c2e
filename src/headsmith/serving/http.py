"""What every request meets before the service: one shape for every error, and caps on what a request may send.

Errors: `{"error": {"code": "...", "message": "..."}}`, whoever answers (the API-key check, the size caps, the
handlers' input checks, BentoML's own body validation). Sizes: the whole body (`max_body_bytes`) and each image in
it (`max_image_bytes`) are counted as the bytes arrive, before BentoML parses or spools anything; over a cap, the
answer is 413 and names the limit."""

from __future__ import annotations

import json
import re

CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
         413: "too_large", 415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests",
         500: "internal_error", 503: "overloaded"}


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": {"code": CODES.get(status, f"http_{status}"), "message": message}}).encode()


async def send_error(send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = error_body(status, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _message(body: bytes) -> str:
    """The message in an error body, whatever its shape: ours, BentoML's {"error": "...", "detail": [pydantic
    errors]} (or that dict inside a list), or plain text."""
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body.decode("utf-8", "replace").strip()[:2000] or "error"
    if isinstance(parsed, list) and len(parsed) == 1 and isinstance(parsed[0], dict):
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        return _problems(parsed) if isinstance(parsed, list) else str(parsed)
    error, detail = parsed.get("error"), parsed.get("detail")
    if isinstance(error, dict):
        return str(error.get("message", ""))
    parts = [str(error)] if error else []
    if detail:
        parts.append(_problems(detail) if isinstance(detail, list) else str(detail))
    return ": ".join(parts) or json.dumps(parsed)[:2000]


def _problems(errors: list) -> str:
    """pydantic's errors, [{"loc": [...], "msg": "..."}, ...], as `field: message; ...`."""
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []) if p != 'body') or 'body'}: {e.get('msg', e)}"
                     if isinstance(e, dict) else str(e) for e in errors)


class ErrorShape:
    """Pure ASGI: every error response (4xx, 5xx) leaves in the one shape, its message kept."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, chunks = None, []

        async def reshape(message):
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    start = False
                    return await send(message)
                start = message
                return None
            if start is False:
                return await send(message)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                kept = [(k, v) for k, v in start.get("headers", [])
                        if k.lower() not in (b"content-type", b"content-length")]
                await send_error(send, start["status"], _message(b"".join(chunks)), kept)
            return None

        await self.app(scope, receive, reshape)


class RequestLimits:
    """Pure ASGI: the body is read here as it arrives, counted against `max_body`, then each image in it (a
    multipart file, or a base64 string in a JSON `images` list) against `max_image`; only then is it handed on."""

    def __init__(self, app, max_body: int, max_image: int):
        self.app, self.max_body, self.max_image = app, max_body, max_image

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode("latin-1").strip()
        if declared and (not declared.isdigit()):
            return await send_error(send, 400, f"Content-Length {declared[:40]!r} is not a number of bytes")
        if declared and int(declared) > self.max_body:
            return await self._too_large(send, "the request body", int(declared), self.max_body)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:  # chunked, or more than its Content-Length said
                return await self._too_large(send, "the request body", size, self.max_body, at_least=True)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        largest = _largest_image(body, content_type)
        if largest > self.max_image:
            return await self._too_large(send, "an image", largest, self.max_image)
        if content_type.lower().lstrip().startswith(FORMS):
            problem = await _form_problem(scope, body)
            if problem:
                return await send_error(send, 400, problem)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body: wait for the client's disconnect, as the server would
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(send, what: str, size: int, limit: int, at_least: bool = False) -> None:
        await send_error(send, 413, f"{what} is {'over ' if at_least else ''}{_mib(size)}: the limit is "
                                    f"{_mib(limit)} ({limit:,} bytes); send less per request")


FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")  # bodies BentoML reads as a form
FILE_FIELDS = ("files",)  # the service's fields that take uploaded files


async def _form_problem(scope, body: bytes) -> str | None:
    """What BentoML must not be handed in a form: one it cannot parse (its parser's error would be a 500), or text
    in a file field, which it would take for a URL and download, past every check of the service."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        form = await Request(scope, receive).form()
    except HTTPException as e:
        return f"the form body cannot be parsed ({e.detail}): send multipart/form-data with its boundary"
    try:
        for name, value in form.multi_items():
            if name in FILE_FIELDS and isinstance(value, str):
                return (f"`{name}` holds text, not an uploaded file: upload image files (parts with a filename); "
                        "URLs are not fetched here (send them as `urls` to /v1/classify/image)")
    finally:
        await form.close()
    return None


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _largest_image(body: bytes, content_type: str) -> int:
    """The size of the largest image in a body, in bytes, without parsing more than needed."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if content_type.startswith("multipart/") and boundary:
        parts = body.split(b"--" + boundary.group(1).encode("latin-1"))
        return max((len(p) - p.find(b"\r\n\r\n") - 6 for p in parts if b"\r\n\r\n" in p), default=0)
    if "json" in content_type or not content_type:
        try:
            images = json.loads(body).get("images", [])
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return 0  # the service's own parsing names the mistake
        if isinstance(images, list):
            return max((len(i.split(",", 1)[-1]) * 3 // 4 if isinstance(i, str) else 0 for i in images),
                       default=0)  # base64: 3 bytes per 4 characters
    return 0
