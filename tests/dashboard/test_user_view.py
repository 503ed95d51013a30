"""The user view on the dev stack: alice signs in through the identity provider, installs an engine and
watches its progress to RUNNING, visits it, pauses, resumes, restarts and uninstalls it, all without a
reload; bob sees none of it and cannot reach it; the page passes axe at every step it is shot at."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from .conftest import DevStack, axe_violations, call, card, shoot, sign_in

pytestmark = pytest.mark.testbed
SAMPLE = "stable-diffusion-cpu"
SETTLE = 180_000  # ms: the test bed pulls no image, but a loaded 2-core machine schedules slowly


def confirm(page: Any, expect_words: str, button: str) -> None:
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(expect_words)
    # The safe choice has the focus; Escape would cancel.
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    dialog.get_by_role("button", name=button, exact=True).click()
    expect(dialog).to_be_hidden()


def act(page: Any, c: Any, action: str, words: str, state: str) -> None:
    c.get_by_role("button", name=action, exact=True).click()
    confirm(page, words, action)
    expect(c).to_have_attribute("data-state", state, timeout=SETTLE)


@pytest.mark.timeout(900)
def test_alice_installs_watches_visits_pauses_resumes_restarts_uninstalls(dev_stack: DevStack, new_page: Any) -> None:
    page = new_page()
    sign_in(page, dev_stack, "alice")
    loads: list[str] = []
    page.on("load", lambda p: loads.append(p.url))
    c = card(page, SAMPLE, dev_stack)
    expect(c).to_have_attribute("data-state", "NONE")
    expect(c.locator(".acc")).to_have_text("CPU")
    assert axe_violations(page) == []
    shoot(page, "engines")

    # Install: the confirmation says what is created; progress arrives live until RUNNING.
    c.get_by_role("button", name="Install", exact=True).click()
    expect(page.get_by_role("dialog")).to_contain_text("persistent disk")
    shoot(page, "confirm-install")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/instances")) as created:
        confirm(page, "private instance", "Install")
    first_state = created.value.json()["state"]  # the state CreateInstance answered: the first progress line
    expect(c.locator(".progress .lines li").first).to_have_attribute("data-state", first_state)
    shoot(page, "installing")
    expect(c).to_have_attribute("data-state", "RUNNING", timeout=SETTLE)
    assert c.locator(".progress .lines li").count() >= 1
    assert axe_violations(page) == []
    shoot(page, "running")

    # Visit opens the instance URL the API reports, in a new tab.
    [mine] = call(page, "GET", dev_stack.template_path(SAMPLE) + "/instances").body["instances"]
    assert mine["state"] == "RUNNING" and mine["accessUri"]
    visit = c.get_by_role("link", name="Visit")
    expect(visit).to_have_attribute("href", mine["accessUri"])
    expect(visit).to_have_attribute("target", "_blank")
    with page.context.expect_event("request", lambda r: r.url == mine["accessUri"]) as opened:
        with page.expect_popup() as popup:
            visit.click()
    assert opened.value.frame.page == popup.value and opened.value.is_navigation_request()
    popup.value.close()  # no ingress controller serves instance hosts in development: the tab itself stays blank

    # Bob: his own page shows no instance; alice's instance is neither listed nor reachable for him.
    bob = new_page()
    sign_in(bob, dev_stack, "bob")
    expect(card(bob, SAMPLE, dev_stack)).to_have_attribute("data-state", "NONE")
    assert call(bob, "GET", "/v1/namespaces/-/templates/-/instances").body.get("instances") == []
    for method, path in (("GET", mine["name"]), ("GET", mine["name"] + ":watch"), ("POST", mine["name"] + ":pause"),
                         ("DELETE", mine["name"])):
        answer = call(bob, method, "/v1/" + path, {} if method == "POST" else None)
        assert answer.status == 403, (method, path, answer)
        assert answer.body.get("error", answer.body)["details"][0]["reason"] == "NOT_OWNER", answer
    expect(card(bob, SAMPLE, dev_stack)).to_have_attribute("data-state", "NONE")

    act(page, c, "Pause", "disk and files are kept", "PAUSED")
    expect(c.get_by_role("link", name="Visit")).to_have_count(0)
    shoot(page, "paused")
    act(page, c, "Resume", "same disk", "RUNNING")
    act(page, c, "Restart", "stopped and started again", "RUNNING")
    expect(c.get_by_role("link", name="Visit")).to_be_visible()

    c.get_by_role("button", name="Uninstall", exact=True).click()
    expect(page.get_by_role("dialog")).to_contain_text("persistent disk are deleted")
    shoot(page, "confirm-uninstall")
    confirm(page, "lost for good", "Uninstall")
    expect(c).to_have_attribute("data-state", "NONE", timeout=SETTLE)
    expect(c.get_by_role("button", name="Install", exact=True)).to_be_enabled()
    assert call(page, "GET", dev_stack.template_path(SAMPLE) + "/instances").body.get("instances") == []
    assert loads == [], f"the page reloaded: {loads}"  # every change arrived without a reload


def test_signed_out_visitor_goes_through_sign_in_and_comes_back(dev_stack: DevStack, new_page: Any) -> None:
    page = new_page()
    sign_in(page, dev_stack, "alice", path="/admin")
    assert page.url == dev_stack.url + "/admin"
    # alice is no admin: the page says so, and the admin link is not offered.
    expect(page.get_by_text("Only administrators can see this page.")).to_be_visible()
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    assert re.search(r"Signed in as", page.locator("header .who").inner_text())


def test_session_ended_in_another_tab_sends_the_page_through_sign_in(dev_stack: DevStack, new_page: Any) -> None:
    page = new_page()
    sign_in(page, dev_stack, "bob")
    before = {c["name"]: c["value"] for c in page.context.cookies()}["aigc_session"]
    other = page.context.new_page()
    other.goto(dev_stack.url + "/sign-out")
    other.get_by_role("button", name="Sign out").click()
    other.wait_for_url(lambda url: not url.startswith(dev_stack.url + "/sign-out"))
    # The page's next refresh finds no session, and it goes to /sign-in to come back here.
    with page.expect_request(lambda r: r.url.startswith(dev_stack.url + "/sign-in?rd="), timeout=30_000) as went:
        pass
    assert went.value.url == dev_stack.url + "/sign-in?rd=" + quote(dev_stack.url + "/", safe="")
    # The gateway's session ended; the identity provider's did not (its own sign-out page was never
    # confirmed), so it signs bob straight in again and the page comes back with a new session.
    page.wait_for_url(dev_stack.url + "/")
    expect(page.locator("header .who")).to_have_text("Signed in as Bob")
    after = {c["name"]: c["value"] for c in page.context.cookies()}["aigc_session"]
    assert after and after != before
