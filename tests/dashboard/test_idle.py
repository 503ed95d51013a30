"""Idle auto-pause on the engines page: a running engine nobody uses shows the announced pause (when, and that
the disk is kept) with a Keep running button; keeping it alive withdraws the warning; left alone again, it is
warned again and then paused, and the card says Paused with Resume offered.

The template is this test's own, with `aigc.gateway.io/idle-after: 40s`; the stack warns 25 s ahead and looks
every second (conftest.py IDLE), so the warning comes about 15 s after the last activity and the pause 25 s
later. Real time on purpose: this is the whole path a user meets (culler, WatchInstance/refresh, the card)."""
from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from .conftest import DevStack, axe_violations, call, card, shoot, sign_in
from .test_admin_view import manifest

pytestmark = pytest.mark.testbed
NAME = "dashboard-idle-test"
SETTLE = 180_000
WARNED = 90_000  # ms: the warning is due ~15 s after the last activity; room for a loaded machine


def idle_manifest(namespace: str) -> str:
    text = manifest(namespace).replace("dashboard-admin-test", NAME).replace("-admin.aigc.localhost", "-idle.aigc.localhost")
    text = text.replace("Admin Test Engine", "Idle Test Engine")
    return text.replace("  annotations:", "  annotations:\n    aigc.gateway.io/idle-after: 40s", 1)


@pytest.mark.timeout(900)
def test_an_unused_engine_is_announced_kept_alive_then_paused(dev_stack: DevStack, new_page: Any) -> None:
    admin = new_page()
    sign_in(admin, dev_stack, "admin", path="/admin")
    created = call(admin, "POST", f"/v1/namespaces/{dev_stack.namespace}/templates",
                   {"source": {"manifest": idle_manifest(dev_stack.namespace)}})
    assert created.ok, created.body

    page = new_page()
    sign_in(page, dev_stack, "ivy")
    mine = card(page, NAME, dev_stack)
    mine.get_by_role("button", name="Install", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Install", exact=True).click()
    expect(mine).to_have_attribute("data-state", "RUNNING", timeout=SETTLE)

    warning = mine.get_by_test_id("idle-warning")
    expect(warning).to_be_visible(timeout=WARNED)
    expect(warning).to_contain_text("Unused for a while: it will be paused in")
    expect(warning).to_contain_text("(your disk is kept)")
    listed = call(page, "GET", f"/v1/namespaces/{dev_stack.namespace}/templates/{NAME}/instances").body["instances"]
    assert len(listed) == 1 and listed[0]["scheduledPauseTime"], listed
    assert axe_violations(page) == []
    shoot(page, "idle-warning")

    # Keep running: the warning goes at once (the answer carries the instance without it), the engine runs on.
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(":keepAlive")) as answer:
        warning.get_by_role("button", name="Keep running").click()
    assert answer.value.ok and "scheduledPauseTime" not in answer.value.json(), answer.value.json()
    expect(warning).to_have_count(0)
    expect(mine).to_have_attribute("data-state", "RUNNING")

    # Left alone again: warned again, then paused (disk and id kept), and the card offers Resume.
    expect(warning).to_be_visible(timeout=WARNED)
    expect(mine).to_have_attribute("data-state", "PAUSED", timeout=SETTLE)
    expect(warning).to_have_count(0)
    expect(mine.get_by_role("button", name="Resume", exact=True)).to_be_visible()
    paused = call(page, "GET", f"/v1/namespaces/{dev_stack.namespace}/templates/{NAME}/instances").body["instances"]
    assert [i["state"] for i in paused] == ["PAUSED"] and paused[0]["id"] == listed[0]["id"], paused
    events = call(admin, "GET", "/v1/auditEvents?actor=service:idle-culler").body.get("auditEvents", [])
    assert [e["resource"] for e in events] == [listed[0]["name"]], events
