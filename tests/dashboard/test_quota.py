"""Quotas on the engines page: the signed-in user's usage of each limit that is set, kept current with the
list refresh and after each action, and a refusal for a quota in words that name the limit, the usage and
the maximum, with the request id (in English and Simplified Chinese).

The dev stack runs with `instance.quotas.users.<QUOTA_USER>.running: 1` (conftest.py): that user may run
one instance; every other user of the stack has no limit set, and sees no quota line."""
from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from .conftest import QUOTA_USER, DevStack, axe_violations, call, card, shoot, sign_in

pytestmark = pytest.mark.testbed
FIRST = "stable-diffusion-cpu"
SECOND = "stable-diffusion-eci-cpu"
SETTLE = 180_000  # ms, as in test_user_view.py


def click_and_confirm(page: Any, c: Any, action: str) -> Any:
    c.get_by_role("button", name=action, exact=True).click()
    with page.expect_response(lambda r: r.request.method in ("POST", "DELETE") and "/v1/" in r.url) as answer:
        page.get_by_role("dialog").get_by_role("button", name=action, exact=True).click()
    return answer.value


@pytest.mark.timeout(900)
def test_usage_shown_and_an_install_over_the_running_limit_refused_in_words(dev_stack: DevStack, new_page: Any) -> None:
    page = new_page()
    sign_in(page, dev_stack, QUOTA_USER)
    quota = page.get_by_test_id("quota")
    expect(quota).to_have_text("Your quota: Running 0 of 1")  # only the limit that is set
    first, second = card(page, FIRST, dev_stack), card(page, SECOND, dev_stack)
    expect(first).to_have_attribute("data-state", "NONE")
    expect(second).to_have_attribute("data-state", "NONE")

    response = click_and_confirm(page, first, "Install")
    assert response.ok, response.status
    expect(quota).to_have_text("Your quota: Running 1 of 1")
    expect(first).to_have_attribute("data-state", "RUNNING", timeout=SETTLE)
    expect(quota).to_have_text("Your quota: Running 1 of 1")

    # A second engine: refused before anything is made, in words naming the limit, its usage and maximum.
    response = click_and_confirm(page, second, "Install")
    assert response.status == 429
    alert = second.get_by_role("alert")
    expect(alert).to_have_attribute("data-reason", "QUOTA_EXCEEDED")
    expect(alert.locator(".error-words")).to_have_text(
        "Quota reached: running instances, 1 of 1 in use. Pause or uninstall an instance first.")
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    expect(alert.locator(".request-id")).to_have_text(f"Request id for support: {request_id}")
    expect(second).to_have_attribute("data-state", "NONE")
    assert call(page, "GET", dev_stack.template_path(SECOND) + "/instances").body.get("instances", []) == []
    assert axe_violations(page) == []
    shoot(page, "error-quota")

    page.get_by_label("Language").select_option("zh-CN")
    expect(alert.locator(".error-words")).to_have_text("已达到配额：运行中的实例，已用 1，上限 1。请先暂停或卸载一个实例。")
    expect(quota).to_have_text("你的配额： 运行中 1 / 1")
    page.get_by_label("语言").select_option("en")

    # Uninstalling gives the slot back, and the line says so.
    alert.get_by_role("button", name="Dismiss").click()
    first.get_by_role("button", name="Uninstall", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Uninstall", exact=True).click()
    expect(first).to_have_attribute("data-state", "NONE", timeout=SETTLE)
    expect(quota).to_have_text("Your quota: Running 0 of 1")

    # A user with no limit set sees no quota line.
    other = new_page()
    sign_in(other, dev_stack, "bob")
    expect(card(other, FIRST, dev_stack)).to_be_visible()
    expect(other.get_by_test_id("quota")).to_have_count(0)
