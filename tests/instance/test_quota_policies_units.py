"""Quota policy logic without servers (issue 16): policy names, decoding stored rows, the overlay of stored over
configured values, and UpdateQuotaPolicy requests turned into changes (bad fields named)."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import field_mask_pb2

from aigc_gateway.api.v1 import instance_pb2
from aigc_gateway.config import QuotaConfig
from aigc_gateway.errors import InvalidArgument
from aigc_gateway.names import TemplateRef
from aigc_gateway.services.instance import quota_messages, quotas
from aigc_gateway.services.instance.models import QuotaPolicyRow
from aigc_gateway.services.instance.quota_policies import Scope, decode, parse_scope
from aigc_gateway.services.instance.quotas import Limits, Policies

Q = instance_pb2.QuotaValue


@pytest.mark.parametrize("name,scope", [
    ("quotaPolicies/default", Scope("default")),
    ("roles/lab/quotaPolicy", Scope("role", "lab")),
    ("users/google-oauth2|123/quotaPolicy", Scope("user", "google-oauth2|123")),
    ("namespaces/aigc/templates/sd/quotaPolicy", Scope("template", "aigc/sd")),
    ("namespaces/-/templates/-/quotaPolicy", Scope("template", "*")),
])
def test_names_round_trip(name: str, scope: Scope) -> None:
    assert parse_scope(name) == scope and scope.name == name


@pytest.mark.parametrize("name", ["", "quotaPolicies/other", "users//quotaPolicy", "users/a b/quotaPolicy",
                                  "roles/a/b/quotaPolicy", "namespaces/-/templates/sd/quotaPolicy",
                                  "namespaces/Aigc/templates/sd/quotaPolicy", "users/" + "x" * 256 + "/quotaPolicy",
                                  "namespaces/aigc/templates/sd"])
def test_bad_names_are_invalid_on_the_field(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_scope(name, "quota_policy.name")
    assert [v.field for v in info.value.violations] == ["quota_policy.name"]


def row(name: str, **values: int | None) -> QuotaPolicyRow:
    return QuotaPolicyRow(name=name, version=3, update_time=datetime.now(UTC), updated_by="root", **values)


def test_decode_and_what_the_api_never_writes() -> None:
    stored = decode(row("users/a/quotaPolicy", running=-1, gpus=2))
    assert (stored.values, stored.etag) == ({"running": None, "gpus": 2}, "3")
    for bad in (row("users/a/b/quotaPolicy", running=1), row("users/a/quotaPolicy", running=-2),
                row("namespaces/-/templates/-/quotaPolicy", installed=1)):
        with pytest.raises(ValueError):
            decode(bad)


def test_stored_values_overlay_configuration_field_by_field() -> None:
    cfg = QuotaConfig.model_validate({"default": {"installed": 3, "running": 1}, "roles": {"lab": {"gpus": 4}},
                                      "users": {"bob": {"running": 5}}, "template_running": {"*": 2, "ns/a": 1}})
    base = Policies.from_config(cfg)
    assert quotas.limits_for(base, "bob", ["lab"]) == Limits(installed=3, running=5, gpus=4)
    over = base.overlay([("default", "", {"installed": None}), ("role", "lab", {"gpus": 1}),
                         ("user", "bob", {"gpus": 2}), ("template", "*", {"running": 7})])
    assert quotas.limits_for(over, "bob", ["lab"]) == Limits(installed=None, running=5, gpus=2)
    assert quotas.limits_for(over, "amy", ["lab"]) == Limits(installed=None, running=1, gpus=1)
    assert quotas.template_limit(over, TemplateRef("ns", "a")) == 1  # its own configured 1 beats the stored `*`
    assert quotas.template_limit(over, TemplateRef("ns", "b")) == 7
    assert not quotas.users_limited(Policies().overlay([("user", "x", {"running": None})]))  # unlimited: no limit
    assert quotas.users_limited(Policies().overlay([("role", "r", {"gpus": 0})]))


def request(policy: instance_pb2.QuotaPolicy, *paths: str) -> instance_pb2.UpdateQuotaPolicyRequest:
    return instance_pb2.UpdateQuotaPolicyRequest(quota_policy=policy,
                                                 update_mask=field_mask_pb2.FieldMask(paths=list(paths)))


def test_update_requests_become_changes() -> None:
    p = instance_pb2.QuotaPolicy(name="users/a/quotaPolicy", running=Q(maximum=0), gpus=Q(unlimited=True))
    assert quota_messages.changes_of(request(p, "running", "gpus", "installed")) == (
        Scope("user", "a"), {"running": (True, 0), "gpus": (True, None), "installed": (False, None)})
    assert quota_messages.changes_of(request(p))[1] == {  # no mask: every limit of the scope
        "installed": (False, None), "running": (True, 0), "gpus": (True, None), "gpu_memory_gib": (False, None)}
    assert quota_messages.changes_of(request(p, "running.maximum", "running"))[1] == {"running": (True, 0)}
    t = instance_pb2.QuotaPolicy(name="namespaces/-/templates/-/quotaPolicy", running=Q(maximum=4))
    assert quota_messages.changes_of(request(t, "*"))[1] == {"running": (True, 4)}


@pytest.mark.parametrize("policy,paths,field", [
    (instance_pb2.QuotaPolicy(name="users/a/quotaPolicy"), ("cpus",), "update_mask"),
    (instance_pb2.QuotaPolicy(name="users/a/quotaPolicy"), ("cpus.maximum",), "update_mask"),
    (instance_pb2.QuotaPolicy(name="users/a/quotaPolicy", gpus=Q(maximum=-3)), ("gpus",), "quota_policy.gpus.maximum"),
    (instance_pb2.QuotaPolicy(name="namespaces/n/templates/t/quotaPolicy", installed=Q(maximum=1)), (),
     "quota_policy.installed"),
    (instance_pb2.QuotaPolicy(name="namespaces/n/templates/t/quotaPolicy"), ("gpu_memory_gib",), "update_mask"),
])
def test_bad_updates_name_the_field(policy: instance_pb2.QuotaPolicy, paths: tuple[str, ...], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        quota_messages.changes_of(request(policy, *paths))
    assert [v.field for v in info.value.violations] == [field]
