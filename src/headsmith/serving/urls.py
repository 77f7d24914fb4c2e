"""Image URLs a deployment may fetch: http(s) to public addresses only (no loopback, private or link-local
targets: a request cannot make the server reach into its own network)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from headsmith.errors import HeadsmithError


def check_public_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise HeadsmithError(f"{url!r} is not an http(s) URL")
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    except socket.gaierror as e:
        raise HeadsmithError(f"cannot resolve {parsed.hostname}: {e.strerror}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise HeadsmithError(f"{parsed.hostname} resolves to {address}, a private, loopback or reserved "
                                 "address: refused")
