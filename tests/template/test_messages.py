"""Pure derivation of the Template message from a GameServerSet (messages.py), and quantity parsing."""
from __future__ import annotations

from decimal import Decimal

import pytest

from aigc_gateway.api.v1 import common_pb2
from aigc_gateway.quantity import (
    QuantityError,
    parse_quantity,
    plain_count,
    whole_number,
)
from aigc_gateway.services.template import messages as describe
from aigc_gateway.services.template.policy import Policy

from .samples import SAMPLES, container, sample, variant

POLICY = Policy(domain="aigc.test")
A = common_pb2.Accelerator

EXPECTED = {
    "stable-diffusion-cpu": {"type": A.CPU, "cpu": "", "memory": "", "gpu_count": 0, "gpu_memory_gib": 0,
                             "eci": False, "eci_instance_type": ""},
    "stable-diffusion-gpu": {"type": A.GPU, "gpu_count": 1, "eci": False},
    "stable-diffusion-gpushare": {"type": A.SHARED_GPU, "gpu_memory_gib": 3, "gpu_count": 0},
    "stable-diffusion-eci-cpu": {"type": A.CPU, "cpu": "2", "memory": "4Gi", "eci": True, "eci_instance_type": ""},
    "stable-diffusion-eci-gpu": {"type": A.GPU, "gpu_count": 1, "eci": True,
                                 "eci_instance_type": "ecs.gn7i-c8g1.2xlarge"},
}


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_are_described(name: str) -> None:
    template = describe.describe(sample(name), POLICY, describe.Counts(live=2, paused=1), with_manifest=False)
    for key, value in EXPECTED[name].items():
        assert getattr(template.accelerator, key) == value, key
    suffix = name.removeprefix("stable-diffusion-")
    assert template.name == f"namespaces/default/templates/{name}"
    assert template.host_pattern == f"instances<id>-{suffix}.aigc.test" and template.path_pattern == "/"
    assert template.port == 7860
    assert [(d.volume_claim_template, d.size, d.storage_class) for d in template.disks] == \
        [("user-data", "50Gi", "alicloud-disk-essd")]
    assert template.usable and not template.unusable_reasons
    assert (template.live_instance_count, template.paused_instance_count) == (2, 1)
    assert template.display_name.startswith("Stable Diffusion (") and template.category == "image"
    assert template.sort_order == 10 * (1 + ["cpu", "gpu", "gpushare", "eci-cpu", "eci-gpu"].index(suffix))
    assert not template.HasField("manifest")


def test_display_metadata_from_annotations() -> None:
    obj = variant(lambda o: o["metadata"].__setitem__("annotations", {
        "aigc.gateway.io/display-name": "Stable Diffusion", "aigc.gateway.io/description": "text to image",
        "aigc.gateway.io/icon-url": "https://cdn.aigc.test/sd.png", "aigc.gateway.io/category": "image",
        "aigc.gateway.io/sort-order": "-3"}))
    obj["metadata"].update(resourceVersion="7", uid="u", creationTimestamp="2024-05-01T10:00:00Z")
    t = describe.describe(obj, POLICY, describe.Counts(), with_manifest=True)
    assert (t.display_name, t.description, t.icon_uri, t.category, t.sort_order) == (
        "Stable Diffusion", "text to image", "https://cdn.aigc.test/sd.png", "image", -3)
    assert (t.uid, t.create_time.seconds) == ("u", 1714557600) and len(t.etag) == 20
    assert t.manifest["metadata"]["name"] == "stable-diffusion-cpu"


def test_unusable_template_says_why() -> None:
    obj = variant(lambda o: (o["spec"]["scaleStrategy"].__setitem__("scaleDownStrategyType", "General"),
                             o["metadata"].__setitem__("deletionTimestamp", "2024-05-01T10:00:00Z")))
    t = describe.describe(obj, POLICY, describe.Counts(), with_manifest=False)
    assert not t.usable
    assert t.unusable_reasons[0] == "the template is being deleted"
    assert "ReserveIds" in t.unusable_reasons[1]


def test_requests_are_used_when_no_limits() -> None:
    obj = variant(lambda o: container(o).__setitem__("resources", {"requests": {"cpu": "500m", "memory": "1Gi"}}))
    acc = describe.accelerator(obj)
    assert (acc.type, acc.cpu, acc.memory) == (A.CPU, "500m", "1Gi")


def test_display_name_falls_back_to_the_name() -> None:
    obj = variant(lambda o: o["metadata"].pop("annotations"))
    t = describe.describe(obj, POLICY, describe.Counts(), with_manifest=False)
    assert (t.display_name, t.sort_order, t.description) == ("stable-diffusion-cpu", 0, "")


def test_sort_key_orders_by_sort_order_then_namespace_then_name() -> None:
    a = sample(rename="b", namespace="x")
    b = sample(rename="a", namespace="y")
    c = variant(lambda o: o["metadata"].__setitem__("annotations", {"aigc.gateway.io/sort-order": "-1"}),
                sample(rename="z", namespace="z"))
    assert sorted([a, b, c], key=lambda o: describe.sort_key(o, POLICY)) == [c, a, b]


@pytest.mark.parametrize("value,expected", [
    ("2", Decimal(2)), ("500m", Decimal("0.5")), ("4Gi", Decimal(4 * 2**30)), ("1e3", Decimal(1000)),
    ("1.5k", Decimal(1500)), (3, Decimal(3)), ("+1", Decimal(1)), (".5", Decimal("0.5")),
])
def test_quantities(value, expected) -> None:
    assert parse_quantity(value) == expected


@pytest.mark.parametrize("value", ["half", "4GB", "", " 1", "1 ", "--1", "1.2.3", True, None, "Gi"])
def test_bad_quantities(value) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(value)


def test_whole_numbers() -> None:
    assert whole_number(1) == 1 and whole_number("3") == 3 and whole_number("1k") == 1000
    for bad in ("500m", 1.5, -1):
        with pytest.raises(QuantityError):
            whole_number(bad)


@pytest.mark.parametrize("mutate,what", [
    (lambda o: container(o).__setitem__("resources", {"limits": {"aliyun.com/gpu-mem": 3 * 2**30}}),
     "aliyun.com/gpu-mem"),
    (lambda o: container(o).__setitem__("resources", {"limits": {"nvidia.com/gpu": "99999999999"}}), "nvidia.com/gpu"),
    (lambda o: [e.__setitem__("value", "99999999999") for e in o["spec"]["network"]["networkConf"]
                if e["name"] == "Port"], "Port"),
])
def test_an_object_beyond_the_api_is_flagged_not_raised(mutate, what: str) -> None:
    """Written around the rules (kubectl), such an object must not fail the call that meets it."""
    obj = variant(mutate)
    obj["metadata"].update(uid="u-1")
    with pytest.raises(describe.Undescribable):
        describe.describe(obj, POLICY, describe.Counts(), with_manifest=False)
    template, ok = describe.describe_or_flag(obj, POLICY, describe.Counts(), with_manifest=True)
    assert not ok and not template.usable
    assert template.name == "namespaces/default/templates/stable-diffusion-cpu" and template.uid == "u-1"
    [reason] = template.unusable_reasons
    assert reason.startswith("UNDESCRIBABLE:") and what in reason
    assert template.manifest["metadata"]["name"] == "stable-diffusion-cpu" and template.etag
    users_view, _ = describe.describe_or_flag(obj, POLICY, describe.Counts(), with_manifest=False)
    assert not users_view.HasField("manifest")


def test_gpu_mem_with_a_unit_in_the_cluster_is_unusable_not_3221225472_gib() -> None:
    obj = variant(lambda o: container(o).__setitem__("resources", {"limits": {"aliyun.com/gpu-mem": "3Gi"}}))
    t = describe.describe(obj, POLICY, describe.Counts(), with_manifest=False)
    assert t.accelerator.gpu_memory_gib == 0 and not t.usable
    assert any("plain number" in r for r in t.unusable_reasons)


def test_plain_counts() -> None:
    assert plain_count(2) == 2 and plain_count("2") == 2 and plain_count(2.0) == 2 and plain_count("+2") == 2
    for bad in ("3Gi", "1k", "1e3", "2.0", 1.5, -1, "-1", "two", True):
        with pytest.raises(QuantityError):
            plain_count(bad)
