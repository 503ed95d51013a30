"""The admin view's Quotas tab on the dev stack: the policies in force (configured and stored), and a form that
sets, loosens and clears one user's stored limits through UpdateQuotaPolicy; the user's own quota line follows.

The stack configures `instance.quotas.users.<QUOTA_USER>.running: 1` (conftest.py); this test works on another
user (`dana`), so test_quota.py's user keeps its configured limit whatever the order."""
from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from .conftest import QUOTA_USER, DevStack, axe_violations, call, shoot, sign_in

pytestmark = pytest.mark.testbed
USER = "dana"


@pytest.mark.timeout(600)
def test_admin_sets_and_clears_a_users_limits_and_the_user_sees_them(dev_stack: DevStack, new_page: Any) -> None:
    admin = new_page()
    sign_in(admin, dev_stack, "admin", path="/admin")
    admin.get_by_role("tab", name="Quotas").click()
    table = admin.get_by_test_id("quota-policies")
    configured = table.locator(f'tr[data-policy="users/{QUOTA_USER}/quotaPolicy"]')
    expect(configured.locator('td[data-field="running"]')).to_have_text("1 (configured)")
    expect(table.locator(f'tr[data-policy="users/{USER}/quotaPolicy"]')).to_have_count(0)

    dana = new_page()
    sign_in(dana, dev_stack, USER)
    expect(dana.locator("header .who")).to_be_visible()
    expect(dana.get_by_test_id("quota")).to_have_count(0)  # nothing set for dana yet

    # Set: running at most 2, GPUs unlimited, the rest inherited.
    form = admin.get_by_role("form", name="Set a policy")
    form.get_by_label("Scope").select_option("user")
    form.get_by_label("User id").fill(USER)
    form.get_by_label("Running", exact=True).select_option("maximum")
    form.get_by_label("Maximum of Running").fill("2")
    form.get_by_label("GPUs", exact=True).select_option("unlimited")
    form.get_by_role("button", name="Save").click()
    expect(admin.get_by_role("status").filter(has_text=f"Saved users/{USER}/quotaPolicy.")).to_be_visible()
    row = table.locator(f'tr[data-policy="users/{USER}/quotaPolicy"]')
    expect(row.locator('td[data-field="running"]')).to_have_text("2")
    expect(row.locator('td[data-field="gpus"]')).to_have_text("Unlimited")
    expect(row.locator('td[data-field="installed"]')).to_have_text("—")
    expect(row).to_contain_text("(admin)")  # who changed it
    stored = call(admin, "GET", f"/v1/users/{USER}/quotaPolicy").body
    assert stored["running"] == {"maximum": 2} and stored["gpus"] == {"unlimited": True}, stored
    assert "installed" not in stored and "gpuMemoryGib" not in stored, stored
    assert axe_violations(admin) == []
    shoot(admin, "admin-quotas")

    dana.reload()
    expect(dana.get_by_test_id("quota")).to_have_text("Your quota: Running 0 of 2")

    # Edit from the row: the form takes the stored values; "inherit" clears a limit (named in the mask).
    row.get_by_role("button", name="Edit").click()
    expect(form.get_by_label("User id")).to_have_value(USER)
    expect(form.get_by_label("Running", exact=True)).to_have_value("maximum")
    expect(form.get_by_label("Maximum of Running")).to_have_value("2")
    form.get_by_label("Running", exact=True).select_option("inherit")
    form.get_by_label("GPUs", exact=True).select_option("inherit")
    form.get_by_role("button", name="Save").click()
    expect(row).to_have_count(0)  # it sets nothing any more: no longer listed
    stored = call(admin, "GET", f"/v1/users/{USER}/quotaPolicy").body
    assert {k for k in stored if k in ("installed", "running", "gpus", "gpuMemoryGib")} == set(), stored
    dana.reload()
    expect(dana.locator("header .who")).to_be_visible()
    expect(dana.get_by_test_id("quota")).to_have_count(0)

    # A stale form (another admin changed the policy since it was read) is refused, in words, not overwritten.
    form.get_by_label("Running", exact=True).select_option("maximum")
    form.get_by_label("Maximum of Running").fill("3")
    form.get_by_role("button", name="Save").click()
    expect(row.locator('td[data-field="running"]')).to_have_text("3")
    other = call(admin, "PATCH", f"/v1/users/{USER}/quotaPolicy?updateMask=running", {"running": {"maximum": 4}})
    assert other.ok, other.body
    form.get_by_label("Maximum of Running").fill("5")
    with admin.expect_response(lambda r: r.request.method == "PATCH") as answer:
        form.get_by_role("button", name="Save").click()
    assert answer.value.status == 409, answer.value.status
    expect(admin.get_by_role("alert")).to_be_visible()
    assert call(admin, "GET", f"/v1/users/{USER}/quotaPolicy").body["running"] == {"maximum": 4}

    # Not for users: the API refuses dana.
    refused = call(dana, "GET", "/v1/quotaPolicies")
    assert refused.status == 403, refused.body
