"""What the dashboard says when a call fails (google.rpc details in words, with the request id the
bridge logged), and in which language: the browser's, until the user switches.

The page's own refresh timer is frozen (Playwright's clock) so that the page still shows what it last
loaded while the test changes the world behind it through the REST API: the stale click is what makes
each error, deterministically. Advancing the clock then shows the page catching up without a reload."""
from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from .conftest import DevStack, axe_violations, call, card, shoot, sign_in, wait_state

pytestmark = pytest.mark.testbed
SAMPLE = "stable-diffusion-cpu"
GONE = "stable-diffusion-gpushare"
SETTLE = 180_000
REFRESH_MS = 5_000  # more than the page's refresh interval


def click_and_confirm(page: Any, c: Any, action: str) -> Any:
    """Click ``action`` on the card, confirm, and return the API response the confirmation caused."""
    c.get_by_role("button", name=action, exact=True).click()
    with page.expect_response(lambda r: r.request.method in ("POST", "DELETE") and "/v1/" in r.url) as answer:
        page.get_by_role("dialog").get_by_role("button", name=action, exact=True).click()
    return answer.value


def assert_error(c: Any, response: Any, words: str) -> None:
    alert = c.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert.locator(".error-words")).to_have_text(words)
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    expect(alert.locator(".request-id")).to_have_text(f"Request id for support: {request_id}")


@pytest.mark.timeout(900)
def test_three_kinds_of_error_in_words_with_the_request_id(dev_stack: DevStack, new_page: Any) -> None:
    page = new_page()
    page.clock.install()
    sign_in(page, dev_stack, "dora")  # a user of this test alone: no other test's instances
    page.clock.pause_at(page.evaluate("Date.now()") + 1000)
    c = card(page, SAMPLE, dev_stack)
    expect(c).to_have_attribute("data-state", "NONE")
    base = dev_stack.template_path(SAMPLE)

    # 1. Already installed: the CLI (here: the REST API) installed it since the page loaded.
    made = call(page, "POST", base + "/instances", {})
    assert made.ok, made
    response = click_and_confirm(page, c, "Install")
    assert response.status == 409
    assert_error(c, response, "You already have an instance of this engine.")
    shoot(page, "error-already-installed")
    page.clock.run_for(REFRESH_MS)  # the refresh shows the instance, and its watch the rest
    expect(c).to_have_attribute("data-state", "RUNNING", timeout=SETTLE)
    c.get_by_role("alert").get_by_role("button", name="Dismiss").click()
    expect(c.get_by_role("alert")).to_have_count(0)

    # 2. Not in a state for it: paused elsewhere, then restarted from the stale page.
    instance = made.body["name"]
    paused = call(page, "POST", f"/v1/{instance}:pause", {})
    assert paused.ok, paused
    wait_state(page, instance, "PAUSED")
    response = click_and_confirm(page, c, "Restart")
    assert response.status == 400
    assert_error(c, response, "This cannot be done in the instance's current state.")
    page.clock.run_for(REFRESH_MS)
    expect(c).to_have_attribute("data-state", "PAUSED")

    # 3. The engine is gone: an admin force-deleted it since the page loaded.
    gone = card(page, GONE, dev_stack)
    expect(gone).to_have_attribute("data-state", "NONE")
    admin = new_page()
    sign_in(admin, dev_stack, "admin")
    deleted = call(admin, "DELETE", dev_stack.template_path(GONE) + "?force=true")
    assert deleted.ok, deleted
    response = click_and_confirm(page, gone, "Install")
    assert response.status == 404
    # The page refreshes at once and the card goes (without a reload); the error stays, at the top.
    expect(gone).to_have_count(0)
    assert_error(page.locator("#page-notice"), response, "This engine no longer exists.")
    shoot(page, "error-template-gone")

    # Clean up through the page: uninstall alice's instance and see it go.
    c.get_by_role("button", name="Uninstall", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Uninstall", exact=True).click()
    page.clock.run_for(REFRESH_MS)
    expect(c).to_have_attribute("data-state", "NONE", timeout=SETTLE)


def test_language_follows_the_browser_and_the_switch_is_remembered(dev_stack: DevStack, new_page: Any) -> None:
    page = new_page(locale="zh-CN")
    sign_in(page, dev_stack, "chen")
    expect(page.get_by_role("heading", level=1)).to_have_text("引擎")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    c = card(page, SAMPLE, dev_stack)
    install = c.get_by_role("button", name="安装", exact=True)
    expect(install).to_be_visible()
    assert axe_violations(page) == []
    shoot(page, "engines-zh")

    # The confirmation in Chinese, by keyboard: Enter opens it, Escape cancels, focus comes back.
    install.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("持久磁盘")
    expect(dialog.get_by_role("button", name="取消")).to_be_focused()
    shoot(page, "confirm-install-zh")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(install).to_be_focused()
    expect(c).to_have_attribute("data-state", "NONE")

    page.get_by_label("语言").select_option("en")
    expect(page.get_by_role("heading", level=1)).to_have_text("Engines")
    expect(c.get_by_role("button", name="Install", exact=True)).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", level=1)).to_have_text("Engines")  # remembered over the browser's
    assert page.evaluate("document.documentElement.lang") == "en"
