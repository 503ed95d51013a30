"""Pure update logic: protected fields, masks, changed paths and the restart decision."""
from __future__ import annotations

import copy
import json

import pytest

from aigc_gateway.services.template import changes, manifest
from aigc_gateway.services.template.policy import Policy
from aigc_gateway.services.template.validation import check_update

from .samples import container, sample, set_conf

POLICY = Policy(gss_labels={"aigc.gateway.io/template": "true"}, domain="aigc.test")


def live() -> dict:
    """A published template as the apiserver returns it, with instances running and ids reserved."""
    obj = sample()
    obj["metadata"].pop("annotations")
    obj["metadata"].update(uid="u-1", resourceVersion="41", generation=3, creationTimestamp="2024-05-01T10:00:00Z",
                           labels={"aigc.gateway.io/template": "true"})
    obj["spec"].update(replicas=2, reserveGameServerIds=[1, "3-4"])
    obj["status"] = {"replicas": 2, "readyReplicas": 2}
    return obj


def update(source: dict, mask: list[str] | None = None, current: dict | None = None):
    return check_update(current or live(), manifest.parse_text(json.dumps(source), 1 << 20), mask or [], POLICY)


def edited(**spec_changes) -> dict:
    """What an admin sends back after `kubectl get -o yaml` and an edit."""
    obj = live()
    obj["spec"].update(spec_changes)
    return obj


def test_image_change_restarts_and_names_the_path() -> None:
    source = live()
    container(source)["image"] = "registry.example/sd:v2"
    checked = update(source)
    assert checked.ok, checked.violations
    # The rollout's settings are recorded with the change (tests/template/test_rollout_write.py).
    assert checked.proposal.changed_paths == ["metadata.annotations[aigc.gateway.io/rollout-policy]",
                                              "metadata.annotations[aigc.gateway.io/rollout-idle-after]",
                                              "spec.gameServerTemplate.spec.containers[0].image"]
    assert checked.proposal.restarts
    assert container(checked.obj)["image"] == "registry.example/sd:v2"


def test_display_annotation_change_does_not_restart() -> None:
    source = live()
    source["metadata"]["annotations"] = {"aigc.gateway.io/display-name": "SD (CPU)"}
    checked = update(source)
    assert checked.ok
    assert checked.proposal.changed_paths == ["metadata.annotations[aigc.gateway.io/display-name]"]
    assert not checked.proposal.restarts


@pytest.mark.parametrize("spec_change,path", [
    ({"replicas": 5}, "spec.replicas"),
    ({"replicas": 0}, "spec.replicas"),
    ({"reserveGameServerIds": []}, "spec.reserveGameServerIds"),
    ({"scaleStrategy": {"scaleDownStrategyType": "General"}}, "spec.scaleStrategy"),
])
def test_protected_fields_are_refused_with_their_path(spec_change: dict, path: str) -> None:
    checked = update(edited(**spec_change))
    assert [(v.field, v.reason) for v in checked.violations] == [(path, "PROTECTED_FIELD")]


def test_protected_fields_sent_unchanged_or_left_out_are_fine() -> None:
    # The reserved ids in another but equal notation (the controller compresses ranges) are "unchanged".
    assert update(edited(reserveGameServerIds=[1, 3, 4])).ok
    source = live()
    for key in ("replicas", "reserveGameServerIds", "scaleStrategy"):
        source["spec"].pop(key)
    checked = update(source)
    assert checked.ok and checked.proposal.changed_paths == []
    # ... and they are written back as read, never dropped.
    assert checked.obj["spec"]["replicas"] == 2 and checked.obj["spec"]["reserveGameServerIds"] == [1, "3-4"]


def test_write_is_conditional_on_the_version_read() -> None:
    checked = update(live())
    assert checked.obj["metadata"]["resourceVersion"] == "41" and checked.obj["metadata"]["uid"] == "u-1"
    assert "status" not in checked.obj


def test_name_namespace_and_network_type_are_immutable() -> None:
    source = live()
    source["metadata"]["name"] = "other"
    source["metadata"]["namespace"] = "elsewhere"
    source["spec"]["network"]["networkType"] = "Kubernetes-HostPort"
    fields = {(v.field, v.reason) for v in update(source).violations}
    assert {("metadata.name", "IMMUTABLE_FIELD"), ("metadata.namespace", "IMMUTABLE_FIELD"),
            ("spec.network.networkType", "IMMUTABLE_FIELD")} <= fields


def test_mask_takes_only_the_named_paths() -> None:
    source = {"metadata": {"annotations": {"aigc.gateway.io/category": "image"}},
              "spec": {"replicas": 9, "gameServerTemplate": {"spec": {"containers": []}}}}
    checked = update(source, ["metadata.annotations"])
    assert checked.ok, checked.violations
    assert checked.proposal.changed_paths == ["metadata.annotations[aigc.gateway.io/category]"]
    assert checked.obj["spec"]["replicas"] == 2 and container(checked.obj)["image"]


def test_mask_with_a_dotted_key_and_removal() -> None:
    current = live()
    current["metadata"]["annotations"] = {"aigc.gateway.io/category": "image", "keep": "x"}
    checked = update({"metadata": {}}, ["metadata.annotations.`aigc.gateway.io/category`"], current)
    assert checked.ok
    assert checked.obj["metadata"]["annotations"] == {"keep": "x"}
    assert checked.proposal.changed_paths == ["metadata.annotations[aigc.gateway.io/category]"]


@pytest.mark.parametrize("mask,field", [
    (["spec.replicas"], "spec.replicas"),
    (["spec.scaleStrategy.scaleDownStrategyType"], "spec.scaleStrategy"),
    (["spec"], "spec.replicas"),
])
def test_mask_touching_protected_fields_is_refused(mask: list[str], field: str) -> None:
    source = live()
    source["spec"]["replicas"] = 7
    source["spec"]["scaleStrategy"] = {"scaleDownStrategyType": "General"}
    assert field in {v.field for v in update(source, mask).violations}


@pytest.mark.parametrize("mask", [["status"], ["metadata.resourceVersion"], ["metadata.name"], ["a..b"]])
def test_mask_paths_that_cannot_be_updated(mask: list[str]) -> None:
    violations = update(live(), mask).violations
    assert [v.field for v in violations] == ["update_mask.paths[0]"]


def test_network_change_is_reported_by_entry_name() -> None:
    source = live()
    set_conf(source, "Host", "sd<id>.aigc.test")
    checked = update(source)
    assert checked.ok
    assert checked.proposal.changed_paths == ["spec.network.networkConf[Host]"]
    assert not checked.proposal.restarts  # the plugin updates the ingress in place (checked on the test bed)
    assert [(w.field, w.reason) for w in checked.warnings] == [("spec.network.networkConf[Host]", "ADDRESS_CHANGED")]


def test_removed_auth_annotation_is_put_back() -> None:
    source = live()
    source["spec"]["network"]["networkConf"] = [e for e in source["spec"]["network"]["networkConf"]
                                                if not (e["name"] == "Annotation" and "/auth-url:" in e["value"]
                                                        or "/auth-signin:" in str(e["value"]))]
    checked = update(source)
    assert checked.ok
    assert checked.proposal.changed_paths == []
    assert {w.reason for w in checked.warnings} == {"AUTH_ANNOTATION_ADDED"}


def _without_routed_host(obj: dict) -> dict:
    for entry in obj["spec"]["network"]["networkConf"]:
        if entry["name"] == "Annotation" and "/auth-url:" in entry["value"]:
            entry["value"] = entry["value"].replace("?rh=$host", "")
    return obj


@pytest.mark.parametrize("mask", [[], ["spec.gameServerTemplate.spec.containers"]])
def test_update_upgrades_an_auth_url_published_without_the_routed_host(mask: list[str]) -> None:
    """Issue 11: templates published before the routed-host check get rh=$host on their next update, even
    when the update is about something else (a masked update of the image)."""
    current = _without_routed_host(live())
    source = _without_routed_host(live())
    container(source)["image"] = "x:2"
    checked = update(source, mask, current=current)
    assert checked.ok, checked.violations
    assert [(w.field, w.reason) for w in checked.warnings if w.reason.startswith("AUTH_")] == [
        ("spec.network.networkConf[Annotation][nginx.ingress.kubernetes.io/auth-url]", "AUTH_URL_ROUTED_HOST_ADDED")]
    conf = checked.proposal.desired["spec"]["network"]["networkConf"]
    assert {"name": "Annotation", "value": "nginx.ingress.kubernetes.io/auth-url: https://dashboard.aigc.test/auth"
            "?rh=$host"} in conf
    assert "spec.network.networkConf[Annotation]" in checked.proposal.changed_paths


def _without_identity_headers(obj: dict) -> dict:
    obj["spec"]["network"]["networkConf"] = [e for e in obj["spec"]["network"]["networkConf"]
                                             if not (e["name"] == "Annotation" and "/auth-response-headers:" in
                                                     e["value"])]
    return obj


@pytest.mark.parametrize("mask", [[], ["spec.gameServerTemplate.spec.containers"]])
def test_update_adds_the_identity_headers_to_a_template_published_without_them(mask: list[str]) -> None:
    """Issue 11: a template published without auth-response-headers lets a client's own X-Auth-Request-User
    reach its instances; its next update, whatever it is about, names the identity headers."""
    current = _without_identity_headers(live())
    source = _without_identity_headers(live())
    container(source)["image"] = "x:2"
    checked = update(source, mask, current=current)
    assert checked.ok, checked.violations
    path = "spec.network.networkConf[Annotation][nginx.ingress.kubernetes.io/auth-response-headers]"
    assert [(w.field, w.reason) for w in checked.warnings if w.reason.startswith("AUTH_")] == [
        (path, "AUTH_RESPONSE_HEADERS_ADDED")]
    conf = checked.proposal.desired["spec"]["network"]["networkConf"]
    assert {"name": "Annotation", "value": "nginx.ingress.kubernetes.io/auth-response-headers: "
            "X-Auth-Request-User,X-Auth-Request-Email,Cookie"} in conf
    assert "spec.network.networkConf[Annotation]" in checked.proposal.changed_paths


def test_update_of_a_template_that_is_not_reserve_ids_is_not_blocked() -> None:
    current = live()
    current["spec"]["scaleStrategy"] = {"scaleDownStrategyType": "General"}
    source = copy.deepcopy(current)
    container(source)["image"] = "x:2"
    checked = update(source, current=current)
    assert checked.ok and "NOT_RESERVE_IDS" in {w.reason for w in checked.warnings}


def test_path_helpers() -> None:
    assert changes.parse_path("a.b[c.d].`e.f`.g") == ["a", "b", "c.d", "e.f", "g"]
    assert changes.parse_path("a.") is None and changes.parse_path("[x") is None
    assert changes.format_path(["spec", "containers", 0, "resources", "limits", "nvidia.com/gpu"]) == \
        "spec.containers[0].resources.limits[nvidia.com/gpu]"
    assert changes.reserved_ids([1, "3-5", "7"]) == {1, 3, 4, 5, 7}


def test_dropped_fields() -> None:
    sent = {"spec": {"a": 1, "futureField": {"x": 1}, "list": [{"k": 1, "gone": 2}]}, "metadata": {"name": "n"}}
    kept = {"spec": {"a": 1, "list": [{"k": 1}], "defaulted": True}, "metadata": {"name": "n"}}
    assert changes.dropped(sent, kept) == ["spec.futureField", "spec.list[0].gone"]


def test_controller_annotations_survive_a_whole_manifest_update() -> None:
    current = live()
    current["metadata"]["annotations"] = {"game.kruise.io/reserve-ids": "1,3-4", "team": "a"}
    source = live()
    source["metadata"]["annotations"] = {"team": "b"}
    checked = update(source, current=current)
    assert checked.obj["metadata"]["annotations"] == {"game.kruise.io/reserve-ids": "1,3-4", "team": "b"}
    assert checked.proposal.changed_paths == ["metadata.annotations[team]"]


def test_etag_ignores_what_the_instance_service_and_the_controller_change() -> None:
    base = changes.etag(live())
    busy = live()
    busy["spec"].update(replicas=7, reserveGameServerIds=[1, 2])
    busy["metadata"].update(resourceVersion="99", annotations={"game.kruise.io/reserve-ids": "1,2"})
    busy["status"] = {"replicas": 7}
    assert changes.etag(busy) == base
    edited_obj = live()
    container(edited_obj)["image"] = "x:2"
    assert changes.etag(edited_obj) != base
