"""The admin view on the dev stack: an admin publishes a template from YAML (a bad one first: the
violation is shown at its field path), and it appears on alice's page without a reload; previews and
applies an update that alice's card then shows; sees alice's instance among all instances and checks
consistency; finds his own actions in the audit log; force-deletes the template with its cascade
summary, and alice's card goes away."""
from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from .conftest import REPO, DevStack, axe_violations, card, shoot, sign_in

pytestmark = pytest.mark.testbed
NAME = "dashboard-admin-test"
SETTLE = 180_000


def manifest(namespace: str, *, replicas: int = 0, description: str = "Published from the admin view.") -> str:
    text = (REPO / "deploy" / "samples" / "stable-diffusion-cpu.yaml").read_text()
    text = text.replace("${DOMAIN}", "aigc.localhost").replace("name: stable-diffusion-cpu", f"name: {NAME}")
    text = text.replace("namespace: default", f"namespace: {namespace}")
    text = text.replace("-cpu.aigc.localhost", "-admin.aigc.localhost")
    text = re.sub(r"display-name: .*", "display-name: Admin Test Engine", text)
    text = re.sub(r"aigc.gateway.io/description: .*", f"aigc.gateway.io/description: {description}", text)
    return text.replace("replicas: 0", f"replicas: {replicas}")


@pytest.mark.timeout(900)
def test_admin_publishes_updates_and_force_deletes_while_alice_watches(dev_stack: DevStack, new_page: Any) -> None:
    alice = new_page()
    sign_in(alice, dev_stack, "alice")
    alice_loads: list[str] = []
    alice.on("load", lambda p: alice_loads.append(p.url))
    mine = card(alice, NAME, dev_stack)
    expect(mine).to_have_count(0)

    admin = new_page()
    sign_in(admin, dev_stack, "admin", path="/admin")
    expect(admin.get_by_role("tab", name="Templates")).to_have_attribute("aria-selected", "true")
    editor = admin.get_by_label("Template YAML (a GameServerSet manifest)")
    expect(admin.get_by_label("Namespace")).to_have_value(dev_stack.namespace)

    # A manifest the service refuses: the violation names its field path.
    editor.fill(manifest(dev_stack.namespace, replicas=2))
    admin.get_by_role("button", name="Validate").click()
    violation = admin.locator('#template-violations li[data-field="spec.replicas"]')
    expect(violation).to_contain_text("must be 0")
    expect(editor).to_have_attribute("aria-invalid", "true")
    shoot(admin, "admin-violations")

    editor.fill(manifest(dev_stack.namespace))
    admin.get_by_role("button", name="Create", exact=True).click()
    expect(admin.get_by_role("status").filter(has_text="Created Admin Test Engine.")).to_be_visible()
    expect(mine).to_be_visible(timeout=SETTLE)  # on alice's page, by its refresh
    expect(mine.locator("h3")).to_have_text("Admin Test Engine")
    assert axe_violations(admin) == []
    shoot(admin, "admin-templates")

    # alice installs it, so that the update and the delete have an instance to speak of.
    mine.get_by_role("button", name="Install", exact=True).click()
    alice.get_by_role("dialog").get_by_role("button", name="Install", exact=True).click()
    expect(mine).to_have_attribute("data-state", "RUNNING", timeout=SETTLE)

    # Preview and apply an update of the description: no instance restarts; alice's card shows it.
    row = admin.locator(f'tr[data-template="namespaces/{dev_stack.namespace}/templates/{NAME}"]')
    row.get_by_role("button", name=re.compile("^Edit")).click()
    expect(editor).to_have_value(re.compile("Published from the admin view."))
    editor.fill(editor.input_value().replace("Published from the admin view.", "Updated from the admin view."))
    admin.get_by_role("button", name="Preview update").click()
    preview = admin.locator(".preview")
    expect(preview).to_contain_text("metadata.annotations")
    expect(preview).to_contain_text("No instance restarts.")
    admin.get_by_role("button", name="Apply update").click()
    expect(admin.get_by_role("status").filter(has_text="Updated Admin Test Engine.")).to_be_visible()
    expect(mine.locator(".desc")).to_have_text("Updated from the admin view.", timeout=SETTLE)

    # All instances, filtered by owner; consistency.
    admin.get_by_role("tab", name="Instances").click()
    admin.get_by_label("Owner").fill("alice")
    admin.get_by_label("State").select_option("RUNNING")
    admin.get_by_role("button", name="Filter").click()
    prefix = f"namespaces/{dev_stack.namespace}/templates/{NAME}/instances/"
    expect(admin.locator(f'tr[data-instance^="{prefix}"]')).to_have_count(1)
    expect(admin.locator("tbody tr td:nth-child(2)").first).to_have_text("alice")
    admin.get_by_role("button", name="Check consistency").click()
    expect(admin.get_by_test_id("consistency")).to_contain_text("consistent.")
    assert axe_violations(admin) == []
    shoot(admin, "admin-instances")

    # The audit log, filtered to the admin's template changes.
    admin.get_by_role("tab", name="Audit log").click()
    admin.get_by_label("Actor").fill("admin")
    admin.get_by_role("button", name="Filter").click()
    expect(admin.locator("tbody tr").filter(has_text="CreateTemplate").first).to_be_visible()
    expect(admin.locator("tbody tr").filter(has_text="UpdateTemplate").first).to_be_visible()
    assert axe_violations(admin) == []
    shoot(admin, "admin-audit")

    # Force-delete: the summary counts alice's instance; her card goes away.
    admin.get_by_role("tab", name="Templates").click()
    row.get_by_role("button", name=re.compile("^Delete")).click()
    panel = admin.get_by_role("region", name="Delete Admin Test Engine?")
    expect(panel).to_contain_text("1 live and 0 paused instances")
    panel.get_by_label("Also delete its instances and their disks").check()
    panel.get_by_role("button", name="Delete", exact=True).click()
    # The cascade waits for the instance's pod and disk to go: a while on a loaded machine.
    deleted = admin.get_by_role("status").filter(has_text="Deleted Admin Test Engine: 1 instances removed.")
    expect(deleted).to_be_visible(timeout=SETTLE)
    expect(mine).to_have_count(0, timeout=SETTLE)
    assert alice_loads == [], f"alice's page reloaded: {alice_loads}"
