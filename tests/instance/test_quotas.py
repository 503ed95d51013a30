"""Quota arithmetic (services/instance/quotas.py), without servers: limits resolution, usage, boundaries, and
the google.rpc.QuotaFailure a refusal carries."""
from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from aigc_gateway.config import QuotaConfig
from aigc_gateway.names import TemplateRef
from aigc_gateway.services.instance import quotas
from aigc_gateway.services.instance.quotas import Limits, Usage

CFG = QuotaConfig.model_validate({
    "default": {"installed": 3, "running": 2, "gpus": 2},
    "roles": {"admin": {"running": None, "gpus": 8}, "power": {"gpus": 4}, "lab": {"gpus": 6}},
    "users": {"bob": {"installed": 10, "gpu_memory_gib": 24}, "carol": {"gpus": 1}},
    "template_running": {"ns/big": 1, "*": 5},
})


def test_default_limits_and_unset_is_unlimited() -> None:
    assert quotas.limits_for(CFG, "alice") == Limits(installed=3, running=2, gpus=2, gpu_memory_gib=None)
    assert quotas.limits_for(QuotaConfig(), "alice") == Limits()
    assert not Limits().any and not quotas.users_limited(QuotaConfig())
    assert quotas.users_limited(CFG)


def test_role_overrides_field_by_field_most_generous_wins() -> None:
    assert quotas.limits_for(CFG, "alice", ["admin"]) == Limits(installed=3, running=None, gpus=8)
    assert quotas.limits_for(CFG, "alice", ["power", "lab"]).gpus == 6
    assert quotas.limits_for(CFG, "alice", ["power", "admin"]).gpus == 8
    assert quotas.limits_for(CFG, "alice", ["unknown-role"]) == quotas.limits_for(CFG, "alice")


def test_user_overrides_win_over_roles() -> None:
    assert quotas.limits_for(CFG, "bob") == Limits(installed=10, running=2, gpus=2, gpu_memory_gib=24)
    assert quotas.limits_for(CFG, "carol", ["admin"]).gpus == 1  # the user's own value, even below the role's


def test_template_limits() -> None:
    assert quotas.template_limit(CFG, TemplateRef("ns", "big")) == 1
    assert quotas.template_limit(CFG, TemplateRef("ns", "other")) == 5
    assert quotas.template_limit(QuotaConfig(), TemplateRef("ns", "big")) is None


def gss(limits: dict) -> dict:
    return {"spec": {"gameServerTemplate": {"spec": {"containers": [{"resources": {"limits": limits}}]}}}}


def test_cost_of_a_running_instance_is_what_its_template_requests() -> None:
    assert quotas.cost_of(gss({"nvidia.com/gpu": "2"})) == Usage(running=1, gpus=2)
    assert quotas.cost_of(gss({"aliyun.com/gpu-mem": 12})) == Usage(running=1, gpu_memory_gib=12)
    assert quotas.cost_of(gss({"cpu": "1"})) == Usage(running=1)
    assert quotas.cost_of(None) == Usage(running=1)  # template gone: still one running instance


def test_paused_counts_as_installed_not_running() -> None:
    costs = {"ns/gpu": Usage(running=1, gpus=2), "ns/share": Usage(running=1, gpu_memory_gib=8)}
    rows = [("LIVE", "ns/gpu"), ("PAUSED", "ns/gpu2"), ("LIVE", "ns/share"), ("RELEASING", "ns/x"),
            ("FREE", "ns/y"), ("LIVE", "ns/cpu")]
    assert quotas.usage_of(rows, costs) == Usage(installed=4, running=3, gpus=2, gpu_memory_gib=8)


def test_exactly_at_the_boundary() -> None:
    limits = Limits(installed=3, running=2, gpus=2, gpu_memory_gib=16)
    one_gpu = Usage(running=1, gpus=1)
    assert quotas.exceeded("a", limits, Usage(installed=2, running=1, gpus=1), one_gpu) == []  # reaches 2 of 2
    assert quotas.exceeded("a", limits, Usage(installed=2, running=2, gpus=2), one_gpu) == [
        ("running", 2, 2), ("gpus", 2, 2)]
    install = Usage(installed=1, running=1)
    assert quotas.exceeded("a", limits, Usage(installed=3, running=0), install) == [("installed", 3, 3)]
    assert quotas.exceeded("a", limits, Usage(installed=2), install) == []
    shared = Usage(running=1, gpu_memory_gib=8)
    assert quotas.exceeded("a", limits, Usage(gpu_memory_gib=8), shared) == []
    assert quotas.exceeded("a", limits, Usage(gpu_memory_gib=9), shared) == [("gpu_memory_gib", 9, 16)]
    # Over already (an admin lowered the limit): only what the call adds is refused.
    assert quotas.exceeded("a", Limits(gpus=0), Usage(gpus=4), Usage(running=1)) == []


def test_refusal_carries_quota_failure_naming_limit_usage_and_maximum() -> None:
    err = quotas.refusal("resume", "alice", [("gpus", 2, 2)])
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "QUOTA_EXCEEDED"
    assert "nvidia.com/gpu units running 2 of 2" in err.message
    status = err.to_status()
    failure = error_details_pb2.QuotaFailure()
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(failure) and status.details[1].Unpack(info)
    assert [(v.subject, v.description) for v in failure.violations] == [("user:alice", "gpus: usage 2, maximum 2")]
    assert dict(info.metadata) == {"limit": "gpus", "usage": "2", "maximum": "2", "subject": "user:alice"}
    tpl = quotas.refusal("install", "bob", [("template_running", 1, 1)], TemplateRef("ns", "big"))
    assert tpl.quota == [("template:ns/big", "template_running: usage 1, maximum 1")]
    assert "template namespaces/ns/templates/big" in tpl.message
