"""Image URLs a deployment fetches for its callers: public addresses only, resolved once and connected to as
checked (no second lookup for DNS rebinding), every spelling of a private address refused, bad URLs named."""

from __future__ import annotations

import socket

import pytest

from headsmith.data.media import ImageRejected, MediaFetcher
from headsmith.errors import HeadsmithError
from headsmith.data.urls import public_address

PRIVATE = [
    "http://127.0.0.1/a.png", "http://10.1.2.3/a.png", "http://169.254.169.254/latest/meta-data",  # cloud metadata
    "http://[::1]/a.png", "http://[fe80::1]/a.png", "http://[fc00::1]/a.png",
    "http://[::ffff:127.0.0.1]/a.png", "http://[::ffff:a9fe:a9fe]/a.png",  # IPv4-mapped
    "http://[2002:7f00:1::]/a.png", "http://[2002:a01:203::1]/a.png",  # 6to4 around 127.0.0.1 and 10.1.2.3
    "http://[64:ff9b::7f00:1]/a.png", "http://[64:ff9b::a01:203]/a.png", "http://[64:ff9b:1::a01:203]/a.png",  # NAT64
    "http://[2001:0:4136:e378:8000:63bf:f5fe:fdfc]/a.png",  # Teredo, whose client is 10.1.2.3
    "http://[::127.0.0.1]/a.png",  # IPv4-compatible
    "http://0.0.0.0/a.png", "http://localhost/a.png",
]
SPELLINGS = ["http://2130706433/a.png", "http://0177.0.0.1/a.png", "http://0x7f.0.0.1/a.png", "http://0x7f000001/",
             "http://127.1/a.png", "http://017700000001/a.png"]
MALFORMED = ["http://example.com:99999/a.png", "http://example.com:port/a.png", "http://exa mple.com/a.png",
             "http://[::1/a.png", "http://\u2488.com/a.png", "http:///a.png", "ftp://example.com/a.png",
             "http://" + "a" * 300 + ".com/a.png", "http://xn--/a.png"]


@pytest.mark.parametrize("url", PRIVATE)
def test_every_form_of_a_private_address_is_refused(url):
    with pytest.raises(HeadsmithError, match="private, loopback or reserved"):
        public_address(url)


@pytest.mark.parametrize("url", SPELLINGS)
def test_decimal_octal_and_short_host_spellings_are_refused(url):
    with pytest.raises(HeadsmithError, match="write the address as four decimal numbers"):
        public_address(url)


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_url_is_a_clear_error(url):
    with pytest.raises(HeadsmithError):
        public_address(url)


def test_a_public_address_is_accepted_as_checked():
    assert public_address("http://93.184.216.34/a.png") == ("93.184.216.34", 80)
    assert public_address("https://[2606:2800:220:1::]:8443/a.png") == ("2606:2800:220:1::", 8443)


def test_the_fetch_connects_to_the_address_that_was_checked(monkeypatch):
    """DNS rebinding: the name resolves to a public address when checked and to 127.0.0.1 a moment later. The
    fetch resolves once and connects to the checked address; it never looks the name up again."""
    lookups, connects = [], []

    def resolve(host, port, *args, **kwargs):
        lookups.append(host)
        address = "93.184.216.34" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    def connect(address, *args, **kwargs):
        connects.append(address)
        raise ConnectionRefusedError("no network in this test")
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(socket, "create_connection", connect)
    fetcher = MediaFetcher(timeout=1.0, retries=0, follow_redirects=False, public_only=True)
    with pytest.raises(ImageRejected):
        fetcher.read("http://rebinding.example/a.png")
    assert lookups == ["rebinding.example"] and connects == [("93.184.216.34", 80)]


def test_a_private_url_is_refused_before_any_connection(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("connected"))
    fetcher = MediaFetcher(timeout=1.0, retries=0, follow_redirects=False, public_only=True)
    with pytest.raises(ImageRejected, match="private, loopback or reserved"):
        fetcher.read("http://[::ffff:10.0.0.1]/a.png")
