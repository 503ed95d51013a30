"""The gateway's own cookies never reach an instance pod (services/auth/cookies.py): what /auth and Envoy's
ext_authz answer put in place of the client's Cookie header. Pure; the proxies' part is proved end to end by
tests/edge/test_cookies.py."""
from __future__ import annotations

import pytest

from aigc_gateway.identity import Principal
from aigc_gateway.services.auth.cookies import gateway_cookie_names, without_gateway_cookies
from aigc_gateway.services.auth.decision import Decision, Outcome
from aigc_gateway.services.auth.envoy import response_of
from aigc_gateway.sessions import cookie_values

OURS = gateway_cookie_names("aigc_session")


def test_the_gateway_cookies_are_the_session_and_the_sign_in_state() -> None:
    assert OURS == {"aigc_session", "aigc_session_signin"}


@pytest.mark.parametrize("headers, kept", [
    (["aigc_session=abc.def"], ""),  # only ours: nothing left (the answer then has no Cookie header)
    (["app=1; aigc_session=abc"], "app=1"),
    (["aigc_session=abc; app=1"], "app=1"),
    (["a=1; aigc_session=x; b=2"], "a=1; b=2"),
    # duplicates: a planted copy (cookie tossing) and the real one both go, wherever they are
    (["aigc_session=x; app=1; aigc_session=y", "aigc_session=z"], "app=1"),
    (["app=1; app=2"], "app=1; app=2"),  # the instance's duplicates are the instance's business
    # several Cookie headers (HTTP/1.1 clients may send them): joined with "; " as HTTP/2 does
    (["app=1", "aigc_session=x", "b=2"], "app=1; b=2"),
    # spacing: none, tabs, lots, around the name and the '='; empty pieces dropped
    (["app=1;aigc_session=x;b=2"], "app=1; b=2"),
    (["  app=1 ;\taigc_session =x ;  b=2  "], "app=1; b=2"),
    ([" aigc_session\t= x"], ""),
    (["app=1;; ;aigc_session=x;"], "app=1"),
    (["", " "], ""),
    ([], ""),
    # a name that merely starts (or ends) like ours is the instance's
    (["aigc_session2=1; aigc_sessionx=2; my_aigc_session=3; aigc_session_signin2=4"],
     "aigc_session2=1; aigc_sessionx=2; my_aigc_session=3; aigc_session_signin2=4"),
    (["AIGC_SESSION=1; Aigc_Session=2"], "AIGC_SESSION=1; Aigc_Session=2"),  # names are case-sensitive
    (["aigc_session_signin=state; app=1"], "app=1"),
    # quoted values and values holding '=' or spaces pass exactly as sent; a quoted session goes too
    (['app="a b=c"; aigc_session="signed.value"; t=x=y'], 'app="a b=c"; t=x=y'),
    (["aigc_session"], ""),  # our name without a value: still ours
    (["flag; app=1"], "flag; app=1"),  # a nameless cookie is the instance's
    (["app=caf\u00e9; aigc_session=x"], "app=caf\u00e9"),  # raw UTF-8 kept
])
def test_without_gateway_cookies(headers: list[str], kept: str) -> None:
    assert without_gateway_cookies(headers, OURS) == kept


def test_nothing_the_session_reader_would_find_survives() -> None:
    """Whatever spelling /auth reads as a session (sessions.cookie_values) is removed: the two agree."""
    for header in ["aigc_session=a", " aigc_session = b ", "x=1;aigc_session=c", 'aigc_session="d"',
                   "aigc_session=e; aigc_session=f", "\taigc_session=g\t"]:
        assert cookie_values(header, "aigc_session")
        assert cookie_values(without_gateway_cookies([header], OURS), "aigc_session") == []


ALICE = Decision(Outcome.ALLOW, "owner", Principal("alice", email="alice@example.test"))


def _ok_headers(response) -> dict[str, str]:
    return {h.header.key: h.header.value for h in response.ok_response.headers}


def test_envoy_rewrites_the_cookie_header_without_ours() -> None:
    response = response_of(ALICE, "app=1; aigc_session=abc; b=2", OURS)
    assert _ok_headers(response)["cookie"] == "app=1; b=2"
    assert list(response.ok_response.headers_to_remove) == []


@pytest.mark.parametrize("cookie", ["aigc_session=abc", None, ""])
def test_envoy_removes_the_cookie_header_when_only_ours_came(cookie: str | None) -> None:
    response = response_of(ALICE, cookie, OURS)
    assert "cookie" not in _ok_headers(response)
    assert list(response.ok_response.headers_to_remove) == ["cookie"]
    assert _ok_headers(response)["x-auth-request-user"] == "alice"


def test_envoy_denials_carry_no_headers() -> None:
    response = response_of(Decision(Outcome.FORBIDDEN, "not yours"), "app=1; aigc_session=abc", OURS)
    assert not response.HasField("ok_response") and response.denied_response.status.code == 403
