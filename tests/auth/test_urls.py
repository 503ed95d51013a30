"""URL reading and redirect validation: the attack table of issue 6 at the pure level."""
from __future__ import annotations

import pytest

from aigc_gateway.services.auth.urls import (
    BadURL,
    normalise_host,
    normalise_path,
    parse_original_url,
    safe_redirect,
)


@pytest.mark.parametrize("raw, expected", [
    ("Instances1-CPU.aigc.test", "instances1-cpu.aigc.test"),
    ("instances1-cpu.aigc.test.", "instances1-cpu.aigc.test"),
    ("instances1-cpu.aigc.test:8443", "instances1-cpu.aigc.test"),
    ("INSTANCES1-cpu.AIGC.test.:443", "instances1-cpu.aigc.test"),
    ("bücher.aigc.test", "xn--bcher-kva.aigc.test"),
    ("[::1]:8080", "[::1]"),
])
def test_host_normalisation(raw: str, expected: str) -> None:
    assert normalise_host(raw) == expected


@pytest.mark.parametrize("raw", [
    "", "owner@victim", "instances1%2dcpu.aigc.test", "a b.test", "host:", "host:0", "host:65536", "host:8x",
    "host..", "ｉnstances1-cpu.aigc.test",  # full-width i must not fold onto the ASCII host
    "inst\\ances.test", "x" * 300, "-bad.test", "[::1", "a:b:c",
])
def test_bad_hosts_are_refused(raw: str) -> None:
    with pytest.raises(BadURL):
        normalise_host(raw)


@pytest.mark.parametrize("raw, expected", [
    ("/", "/"), ("/a/b", "/a/b"), ("//a///b", "/a/b"), ("/a/./b", "/a/b"), ("/a/../b", "/b"),
    ("/sd1/../sd2/x", "/sd2/x"), ("/sd1/%2e%2e/sd2", "/sd2"), ("/sd1%2f..%2fsd2", "/sd2"),
    ("/a/b/", "/a/b/"), ("/a/b/..", "/a/"), ("/%73d1", "/sd1"), ("/caf%C3%A9", "/café"),
])
def test_path_normalisation_like_nginx(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize("raw", ["/..", "/a/../..", "/%2e%2e/x", "/a%00b", "/a%zz", "/a%2", "/%ff", "a/b"])
def test_bad_paths_are_refused(raw: str) -> None:
    with pytest.raises(BadURL):
        normalise_path(raw)


def test_parse_original_url_reads_host_and_path() -> None:
    t = parse_original_url("https://Instances1-cpu.aigc.test.:443//x/../y?owner.aigc.test")
    assert (t.scheme, t.host, t.path) == ("https", "instances1-cpu.aigc.test", "/y")


@pytest.mark.parametrize("url", [
    "https://owner.aigc.test@victim.aigc.test/",  # userinfo
    "https://victim.aigc.test/#https://owner.aigc.test/",  # fragment
    "https://owner.aigc.test?x/victim",  # a ? in the Host header
    "https://owner.aigc.test#x/victim",
    "https://victim.aigc.test\\@owner.aigc.test/",
    "javascript://owner.aigc.test/", "ftp://owner.aigc.test/", "//owner.aigc.test/", "owner.aigc.test/",
    "https://owner.aigc.testhttp://victim.aigc.test/",  # absolute-form request target
    "https://owner.aigc.test/a\r\nX: y", "https://owner.aigc.test/%00", "https:///x", "", "http://[::1",
    "https://owner.aigc.test/" + "a" * 9000,
])
def test_unreadable_original_urls_are_refused(url: str) -> None:
    with pytest.raises(BadURL):
        parse_original_url(url)


@pytest.mark.parametrize("rd, expected", [
    ("https://instances1-cpu.aigc.test/x?y=1", "https://instances1-cpu.aigc.test/x?y=1"),
    ("https://aigc.test/", "https://aigc.test/"),
    ("https://evil.test/", "FALLBACK"),
    ("https://aigc.test.evil.test/", "FALLBACK"),
    ("https://evilaigc.test/", "FALLBACK"),
    ("//evil.test/", "FALLBACK"),
    ("///evil.test/", "FALLBACK"),
    ("/\\evil.test/", "FALLBACK"),
    ("javascript:alert(1)", "FALLBACK"),
    ("JavaScript://aigc.test/%0aalert(1)", "FALLBACK"),
    ("data:text/html,hi", "FALLBACK"),
    ("https://evil.test@instances1-cpu.aigc.test/", "FALLBACK"),
    ("https://instances1-cpu.aigc.test@evil.test/", "FALLBACK"),
    ("https://instances1-cpu.aigc.test\\@evil.test/", "FALLBACK"),
    ("http://instances1-cpu.aigc.test/", "FALLBACK"),  # http not allowed by default
    ("https://instances1-cpu.aigc.test/\r\nSet-Cookie: x", "FALLBACK"),
    ("", "FALLBACK"), (None, "FALLBACK"),
    # Not ASCII: an ideographic full stop (a browser reads evil.test.aigc.test), a character latin-1 lacks.
    ("https://evil.test\u3002aigc.test/", "FALLBACK"), ("https://instances1-cpu.aigc.test/\u0133", "FALLBACK"),
])
def test_redirect_targets(rd, expected: str) -> None:
    assert safe_redirect(rd, domain="aigc.test", allow_http=False, fallback="FALLBACK") == expected


def test_http_redirects_only_when_allowed() -> None:
    assert safe_redirect("http://a.aigc.test/", domain="aigc.test", allow_http=True, fallback="F") == \
        "http://a.aigc.test/"
    assert safe_redirect("http://a.aigc.test:8080/", domain="aigc.test", allow_http=True, fallback="F") == \
        "http://a.aigc.test:8080/"
