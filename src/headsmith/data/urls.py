"""Image URLs a deployment may fetch for its callers: http(s) to public addresses only, so that a request cannot
make the server reach into its own network. The host is resolved once, every address it resolves to is checked
(IPv6 forms that embed an IPv4 address are judged by that address), and the connection goes to the address that
was checked: no second lookup that DNS rebinding could answer differently."""

from __future__ import annotations

import functools
import http.client
import ipaddress
import re
import socket
import urllib.request
from urllib.parse import urlsplit

from headsmith.errors import HeadsmithError

NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+", re.IGNORECASE)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: mapped, 6to4, Teredo (server and client), NAT64, compatible."""
    found = [a for a in (address.ipv4_mapped, address.sixtofour, *(address.teredo or ())) if a is not None]
    if any(address in network for network in NAT64) or int(address) >> 32 == 0:  # NAT64; ::a.b.c.d (compatible)
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded:
            return all(a.is_global for a in embedded)
    return address.is_global


def public_address(url: str) -> tuple[str, int]:
    """The (address, port) to connect to for `url`, once every address its host resolves to is public."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as e:  # a port that is not a number in range, a broken [IPv6] literal
        raise HeadsmithError(f"{url[:200]!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise HeadsmithError(f"{url[:200]!r} is not an http(s) URL")
    labels = host.split(".")
    if all(NUMERIC_LABEL.fullmatch(label) for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:  # 2130706433, 0177.0.0.1, 0x7f.1, 127.1: spellings resolvers read as an address
            raise HeadsmithError(f"{host!r}: write the address as four decimal numbers (a.b.c.d)") from None
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as e:
        raise HeadsmithError(f"cannot resolve {host[:100]!r}: {getattr(e, 'strerror', None) or e}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        if not is_public(address):
            raise HeadsmithError(f"{host} resolves to {address}, a private, loopback or reserved address: refused")
    if not addresses:
        raise HeadsmithError(f"cannot resolve {host[:100]!r}: no address")
    return str(addresses[0]), port


class _PinnedMixin:
    """Connects to a fixed (address, port) whatever the URL's host; the Host header (and, over TLS, the SNI name
    and the certificate check) stays the URL's host."""

    def __init__(self, *args, address: tuple[str, int], **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = lambda _, *rest: socket.create_connection(address, *rest)


class _Pinned(_PinnedMixin, http.client.HTTPConnection):
    pass


class _PinnedTLS(_PinnedMixin, http.client.HTTPSConnection):
    pass


def pinned_opener(address: tuple[str, int], *handlers) -> urllib.request.OpenerDirector:
    """A urllib opener whose every connection goes to `address`; proxies from the environment are not used (a
    proxy would make its own lookup)."""

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, request):
            return self.do_open(functools.partial(_Pinned, address=address), request)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, request):
            return self.do_open(functools.partial(_PinnedTLS, address=address), request, context=self._context)

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), HTTP(), HTTPS(), *handlers)
