"""A template upgrade on the dashboard (issue 14, docs/upgrade.md), through the real stack: an admin edits the image
of a template with a running instance, picks the rollout policy Manual in the update dialog (sent with
UpdateTemplate), and the preview says per instance what happens (only when its owner updates); the owner's card
then says "Update available" (English and Simplified Chinese) with "Update now", which calls UpdateInstance
(`POST …:upgrade`) and the note goes once the instance is on the new revision."""
from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from .conftest import DevStack, axe_violations, call, card, shoot, sign_in
from .test_admin_view import manifest

pytestmark = pytest.mark.testbed
NAME = "dashboard-upgrade-test"
SETTLE = 180_000


def upgrade_manifest(namespace: str) -> str:
    text = manifest(namespace).replace("dashboard-admin-test", NAME).replace("-admin.aigc.localhost", "-upgrade.aigc.localhost")
    return text.replace("Admin Test Engine", "Upgrade Test Engine")


@pytest.mark.timeout(900)
def test_an_update_is_offered_to_the_owner_who_moves_now(dev_stack: DevStack, new_page: Any) -> None:
    admin = new_page()
    sign_in(admin, dev_stack, "admin", path="/admin")
    created = call(admin, "POST", f"/v1/namespaces/{dev_stack.namespace}/templates",
                   {"source": {"manifest": upgrade_manifest(dev_stack.namespace)}})
    assert created.ok, created.body

    page = new_page()
    sign_in(page, dev_stack, "uma")
    mine = card(page, NAME, dev_stack)
    mine.get_by_role("button", name="Install", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Install", exact=True).click()
    expect(mine).to_have_attribute("data-state", "RUNNING", timeout=SETTLE)
    note = mine.get_by_test_id("update-available")
    expect(note).to_have_count(0)

    # The admin changes the image in the update dialog, rolled out Manual: the preview says uma's instance moves
    # only when she asks; the policy goes with the update.
    admin.reload()
    row = admin.locator(f'tr[data-template="namespaces/{dev_stack.namespace}/templates/{NAME}"]')
    row.get_by_role("button", name="Edit").click()
    editor = admin.get_by_label("Template YAML (a GameServerSet manifest)")
    expect(editor).to_have_value(re.compile(r":v1\.0\.0-cpu"))
    editor.fill(editor.input_value().replace(":v1.0.0-cpu", ":v2.0.0-cpu"))
    admin.get_by_test_id("rollout-policy").select_option(label="Manual")
    admin.get_by_role("button", name="Preview update").click()
    affected = admin.get_by_test_id("affected").locator("li")
    expect(affected).to_have_count(1)
    expect(affected.first).to_have_attribute("data-action", "WHEN_ASKED")
    expect(affected.first).to_contain_text("uma: only when its owner updates")
    expect(admin.locator(".preview")).to_contain_text("Roll-out: Manual; in place")
    expect(admin.get_by_label("Allow restarting running instances")).to_have_count(0)  # only for Immediately
    with admin.expect_request(lambda r: r.method == "PATCH" and r.url.endswith(f"/templates/{NAME}")) as sent:
        admin.get_by_role("button", name="Apply update").click()
    assert sent.value.post_data_json["rolloutPolicy"] == "MANUAL", sent.value.post_data_json
    expect(admin.get_by_role("status").filter(has_text="Updated Upgrade Test Engine.")).to_be_visible()
    assert axe_violations(admin) == []
    shoot(admin, "admin-rollout")

    # uma's card offers the update (her instance runs the old revision), in both languages.
    expect(note).to_be_visible(timeout=SETTLE)
    expect(note).to_contain_text("Update available.")
    listed = call(page, "GET", f"/v1/namespaces/{dev_stack.namespace}/templates/{NAME}/instances").body["instances"]
    assert listed[0]["updateAvailable"] is True, listed
    zh = new_page(locale="zh-CN")
    sign_in(zh, dev_stack, "uma")
    zh_note = card(zh, NAME, dev_stack).get_by_test_id("update-available")
    expect(zh_note).to_contain_text("有可用更新。")
    expect(zh_note.get_by_role("button", name="立即更新")).to_be_visible()
    assert axe_violations(page) == []
    shoot(page, "update-available")

    # Update now: confirmed, UpdateInstance is called for her instance, and the note goes.
    note.get_by_role("button", name="Update now").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Update Upgrade Test Engine now?")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(":upgrade")) as answer:
        dialog.get_by_role("button", name="Update now").click()
    assert answer.value.url.endswith(f"{listed[0]['name']}:upgrade"), answer.value.url
    # The real answer of the instance service (UpdateInstance, issue 14).
    assert answer.value.ok, (answer.value.status, answer.value.text())
    expect(note).to_have_count(0, timeout=SETTLE)
