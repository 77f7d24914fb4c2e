"""API keys: shown once, stored only as sha256 hashes, compared in constant time, checked before any model work."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from headsmith.files import write_atomic
from headsmith.serving.http import send_error

# Paths anyone may call: health and readiness probes, metrics, the OpenAPI docs.
OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/docs")


def new_key_id() -> str:
    """A key's name in lists and logs: random, drawn apart from the key, so showing it reveals nothing of the key."""
    return f"key_{secrets.token_hex(5)}"


def new_key() -> tuple[str, str]:
    """A fresh key and its id."""
    return f"hs_{secrets.token_urlsafe(32)}", new_key_id()


def write_key_file(db, path: Path, deployment: str) -> None:
    """The deployment's keys.json (hashes only; a running server re-reads it when it changes) from the catalog as
    `db` sees it. Called inside the transaction that changed the keys, holding SQLite's write lock
    (BEGIN IMMEDIATE): writers take turns, so the last file written holds every committed change and a
    concurrent `keys create` cannot write back a key another process has just revoked."""
    keys = [dict(r) for r in db.execute("SELECT key_id, sha256, revoked_at FROM deploy_keys WHERE deployment = ? "
                                        "ORDER BY created_at", (deployment,))]
    write_atomic(path, json.dumps(keys))


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The hashes a deployment accepts, from HEADSMITH_KEY_HASHES (comma-separated) or the JSON file that
    HEADSMITH_KEYS_FILE names; the file is re-read when it changes, so a revoked key stops working at once."""

    def __init__(self, hashes: str | None = None, path: str | None = None):
        self.fixed = [h for h in (hashes or "").split(",") if h]
        self.path = Path(path) if path else None
        self._stamp: tuple | None = None
        self._hashes: list[str] = []

    @classmethod
    def from_env(cls) -> "KeyRing":
        return cls(os.environ.get("HEADSMITH_KEY_HASHES"), os.environ.get("HEADSMITH_KEYS_FILE"))

    def hashes(self) -> list[str]:
        if self.path is None:
            return self.fixed
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return self.fixed
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            self._hashes = [k["sha256"] for k in json.loads(self.path.read_text()) if not k.get("revoked_at")]
            self._stamp = (stat.st_mtime_ns, stat.st_size)
        return self.fixed + self._hashes

    def accepts(self, key: str | None) -> bool:
        if not key:
            return False
        digest = key_hash(key)
        matched = False
        for stored in self.hashes():  # every hash compared, match or not: no timing hint of which one
            matched |= hmac.compare_digest(digest, stored)
        return matched


def key_from_headers(headers: dict[bytes, bytes]) -> str | None:
    """`Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get(b"x-api-key", b"").decode("latin-1").strip() or None


class APIKeyMiddleware:
    """Pure ASGI: a request without a valid key is answered 401 before it reaches the service."""

    def __init__(self, app, keys: KeyRing | None = None):
        self.app = app
        self.keys = keys or KeyRing.from_env()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS" \
                or scope["path"] == "/" or scope["path"].startswith("/static_content"):
            return await self.app(scope, receive, send)
        if self.keys.accepts(key_from_headers(dict(scope["headers"]))):
            return await self.app(scope, receive, send)
        await send_error(send, 401, "missing or invalid API key: send `Authorization: Bearer KEY` (headsmith deploy "
                                    "keys create DEPLOYMENT makes one)", [(b"www-authenticate", b"Bearer")])
