"""Pure validation of template manifests: every rule, the field path it reports, and the samples."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import struct_pb2

from aigc_gateway.services.template import manifest, messages, rules
from aigc_gateway.services.template.policy import (
    AUTH_RESPONSE_HEADERS_ANNOTATION,
    AUTH_SIGNIN_ANNOTATION,
    AUTH_URL_ANNOTATION,
    Policy,
)
from aigc_gateway.services.template.validation import check_new

from .samples import SAMPLES, container, sample, sample_text, set_conf, variant

POLICY = Policy(namespaces=("default", "aigc"), gss_labels={"aigc.gateway.io/template": "true"}, domain="aigc.test")
AUTH_URL_PATH = f"spec.network.networkConf[Annotation][{AUTH_URL_ANNOTATION}]"
GPU_PATH = "spec.gameServerTemplate.spec.containers[0].resources.limits[nvidia.com/gpu]"
GPU_MEM_PATH = "spec.gameServerTemplate.spec.containers[0].resources.limits[aliyun.com/gpu-mem]"


def check_obj(obj: dict[str, Any], namespace: str = "default", policy: Policy = POLICY):
    return check_new(manifest.parse_text(json.dumps(obj), policy.max_manifest_bytes), policy, namespace)


def check_text(text: str, namespace: str = "default", policy: Policy = POLICY):
    return check_new(manifest.parse_text(text, policy.max_manifest_bytes), policy, namespace)


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_validates_clean(name: str) -> None:
    checked = check_text(sample_text(name))
    assert checked.ok, checked.violations
    # The samples carry the auth annotations already; only the configured labels are added.
    assert [w.reason for w in checked.warnings] == ["LABELS_ADDED"]
    assert checked.obj["metadata"]["labels"] == {"aigc.gateway.io/template": "true"}


def _limit(key: str, value: Any) -> Callable[[dict], None]:
    return lambda o: container(o).setdefault("resources", {}).setdefault("limits", {}).__setitem__(key, value)


BAD: list[tuple[str, Callable[[dict], None], str, str]] = [
    ("replicas 3", lambda o: o["spec"].__setitem__("replicas", 3), "spec.replicas", "REPLICAS_NOT_ZERO"),
    ("replicas not a number", lambda o: o["spec"].__setitem__("replicas", "two"), "spec.replicas",
     "INVALID_REPLICAS"),
    ("General strategy", lambda o: o["spec"]["scaleStrategy"].__setitem__("scaleDownStrategyType", "General"),
     "spec.scaleStrategy.scaleDownStrategyType", "NOT_RESERVE_IDS"),
    ("no scale strategy", lambda o: o["spec"].pop("scaleStrategy"), "spec.scaleStrategy.scaleDownStrategyType",
     "NOT_RESERVE_IDS"),
    ("reserved ids on create", lambda o: o["spec"].__setitem__("reserveGameServerIds", [1, "3-4"]),
     "spec.reserveGameServerIds", "RESERVED_IDS_ON_CREATE"),
    ("Host without <id>", lambda o: set_conf(o, "Host", "instances-cpu.aigc.test"),
     "spec.network.networkConf[Host]", "MISSING_ID_PLACEHOLDER"),
    ("two <id> in Host", lambda o: set_conf(o, "Host", "i<id>-<id>.aigc.test"), "spec.network.networkConf[Host]",
     "INVALID_ID_PLACEHOLDER"),
    ("upper-case Host", lambda o: set_conf(o, "Host", "Instances<id>.aigc.test"), "spec.network.networkConf[Host]",
     "INVALID_HOST"),
    ("two Hosts", lambda o: o["spec"]["network"]["networkConf"].append({"name": "Host", "value": "b<id>.aigc.test"}),
     "spec.network.networkConf[Host]", "DUPLICATE_HOST"),
    ("no Port", lambda o: set_conf(o, "Port", None), "spec.network.networkConf[Port]", "PORT_REQUIRED"),
    ("bad Port", lambda o: set_conf(o, "Port", "http"), "spec.network.networkConf[Port]", "INVALID_PORT"),
    ("port out of range", lambda o: set_conf(o, "Port", "70000"), "spec.network.networkConf[Port]", "INVALID_PORT"),
    ("no Path", lambda o: set_conf(o, "Path", None), "spec.network.networkConf[Path]", "PATH_REQUIRED"),
    ("no PathType", lambda o: set_conf(o, "PathType", None), "spec.network.networkConf[PathType]",
     "PATH_TYPE_REQUIRED"),
    ("relative Path", lambda o: set_conf(o, "Path", "sd<id>"), "spec.network.networkConf[Path]", "INVALID_PATH"),
    ("HostPort network", lambda o: o["spec"]["network"].__setitem__("networkType", "Kubernetes-HostPort"),
     "spec.network.networkType", "NOT_INGRESS_NETWORK"),
    ("no network", lambda o: o["spec"].pop("network"), "spec.network", "NETWORK_REQUIRED"),
    ("auth-url elsewhere", lambda o: _auth(o, AUTH_URL_ANNOTATION, "https://evil.example/auth"), AUTH_URL_PATH,
     "AUTH_URL_MISMATCH"),
    ("auth-url with nginx variable", lambda o: _auth(o, AUTH_URL_ANNOTATION, "https://dashboard.aigc.test/auth;#"),
     AUTH_URL_PATH, "AUTH_URL_CHARACTERS"),
    # Issue 11: ingress-nginx refuses these auth-url characters (CVE-2025-24514); the routed host is $host.
    ("auth-url with a quote", lambda o: _auth(o, AUTH_URL_ANNOTATION, "https://dashboard.aigc.test/auth?rh=$host'"),
     AUTH_URL_PATH, "AUTH_URL_CHARACTERS"),
    ("auth-url with a brace", lambda o: _auth(o, AUTH_URL_ANNOTATION, "https://dashboard.aigc.test/auth?rh=${host}"),
     AUTH_URL_PATH, "AUTH_URL_CHARACTERS"),
    ("auth-url with a semicolon", lambda o: _auth(o, AUTH_URL_ANNOTATION,
                                                 "https://dashboard.aigc.test/auth?rh=$host;proxy_pass"),
     AUTH_URL_PATH, "AUTH_URL_CHARACTERS"),
    ("auth-url with a fixed routed host", lambda o: _auth(o, AUTH_URL_ANNOTATION,
                                                         "https://dashboard.aigc.test/auth?rh=instances1.aigc.test"),
     AUTH_URL_PATH, "AUTH_URL_MISMATCH"),
    # Issue 12 item 2: an Ingress without a host answers on every host; the owner check keys on hosts.
    ("no Host, <id> in the Path", lambda o: (set_conf(o, "Host", None), set_conf(o, "Path", "/sd<id>")),
     "spec.network.networkConf[Host]", "HOST_REQUIRED"),
    ("auth-signin elsewhere", lambda o: _auth(o, AUTH_SIGNIN_ANNOTATION, "https://other/sign-in"),
     f"spec.network.networkConf[Annotation][{AUTH_SIGNIN_ANNOTATION}]", "AUTH_SIGNIN_MISMATCH"),
    ("malformed annotation", lambda o: o["spec"]["network"]["networkConf"].append(
        {"name": "Annotation", "value": "a:b"}), "spec.network.networkConf[Annotation]", "MALFORMED_ANNOTATION"),
    ("snippet annotation", lambda o: o["spec"]["network"]["networkConf"].append(
        {"name": "Annotation", "value": "nginx.ingress.kubernetes.io/configuration-snippet: auth_request off;"}),
     "spec.network.networkConf[Annotation][nginx.ingress.kubernetes.io/configuration-snippet]",
     "SNIPPET_NOT_ALLOWED"),
    ('nvidia.com/gpu "half"', _limit("nvidia.com/gpu", "half"), GPU_PATH, "INVALID_QUANTITY"),
    ("nvidia.com/gpu 0.5", _limit("nvidia.com/gpu", "500m"), GPU_PATH, "INVALID_QUANTITY"),
    ("gpu-mem 1.5", _limit("aliyun.com/gpu-mem", 1.5),
     "spec.gameServerTemplate.spec.containers[0].resources.limits[aliyun.com/gpu-mem]", "INVALID_QUANTITY"),
    # The unit rules of the extended resources: plain counts, no suffix, within the API's int32.
    ("gpu-mem 3Gi", _limit("aliyun.com/gpu-mem", "3Gi"), GPU_MEM_PATH, "INVALID_QUANTITY"),
    ("gpu-mem 3e0", _limit("aliyun.com/gpu-mem", "3e0"), GPU_MEM_PATH, "INVALID_QUANTITY"),
    ("gpu-mem beyond int32", _limit("aliyun.com/gpu-mem", 2**31), GPU_MEM_PATH, "OUT_OF_RANGE"),
    ("gpu-mem beyond int32 as text", _limit("aliyun.com/gpu-mem", "3221225472"), GPU_MEM_PATH,
     "OUT_OF_RANGE"),
    ("nvidia.com/gpu 1k", _limit("nvidia.com/gpu", "1k"), GPU_PATH, "INVALID_QUANTITY"),
    ("nvidia.com/gpu beyond int32", _limit("nvidia.com/gpu", 2**40), GPU_PATH, "OUT_OF_RANGE"),
    ("port beyond int32", lambda o: set_conf(o, "Port", "99999999999"), "spec.network.networkConf[Port]",
     "INVALID_PORT"),
    ("cpu two", _limit("cpu", "two"), "spec.gameServerTemplate.spec.containers[0].resources.limits[cpu]",
     "INVALID_QUANTITY"),
    ("memory 4GB", _limit("memory", "4GB"), "spec.gameServerTemplate.spec.containers[0].resources.limits[memory]",
     "INVALID_QUANTITY"),
    ("no image", lambda o: container(o).pop("image"), "spec.gameServerTemplate.spec.containers[0].image",
     "IMAGE_REQUIRED"),
    ("no containers", lambda o: o["spec"]["gameServerTemplate"]["spec"].__setitem__("containers", []),
     "spec.gameServerTemplate.spec.containers", "REQUIRED"),
    ("disk without size", lambda o: o["spec"]["gameServerTemplate"]["volumeClaimTemplates"][0]["spec"].pop(
        "resources"), "spec.gameServerTemplate.volumeClaimTemplates[0].spec.resources.requests[storage]", "REQUIRED"),
    ("wrong kind", lambda o: o.__setitem__("kind", "StatefulSet"), "kind", "WRONG_KIND"),
    ("wrong apiVersion", lambda o: o.__setitem__("apiVersion", "apps/v1"), "apiVersion", "WRONG_API_VERSION"),
    ("namespace not allowed", lambda o: o["metadata"].__setitem__("namespace", "kube-system"),
     "metadata.namespace", "NAMESPACE_MISMATCH"),
    ("upper-case name", lambda o: o["metadata"].__setitem__("name", "Stable-Diffusion"), "metadata.name",
     "INVALID_NAME"),
    ("name starting with a digit", lambda o: o["metadata"].__setitem__("name", "1sd"), "metadata.name",
     "INVALID_NAME"),
    ("name too long", lambda o: o["metadata"].__setitem__("name", "s" * 53), "metadata.name", "INVALID_NAME"),
    ("no name", lambda o: o["metadata"].pop("name"), "metadata.name", "REQUIRED"),
    ("conflicting template label", lambda o: o["metadata"].__setitem__("labels", {"aigc.gateway.io/template": "no"}),
     "metadata.labels[aigc.gateway.io/template]", "LABEL_MISMATCH"),
    ("sort order not a number", lambda o: o["metadata"].__setitem__("annotations",
                                                                    {"aigc.gateway.io/sort-order": "first"}),
     "metadata.annotations[aigc.gateway.io/sort-order]", "INVALID_SORT_ORDER"),
    ("javascript icon", lambda o: o["metadata"].__setitem__("annotations",
                                                            {"aigc.gateway.io/icon-url": "javascript:alert(1)"}),
     "metadata.annotations[aigc.gateway.io/icon-url]", "INVALID_ICON_URL"),
]


def _auth(obj: dict, key: str, url: str) -> None:
    obj["spec"]["network"]["networkConf"] = [
        e for e in obj["spec"]["network"]["networkConf"] if not (e["name"] == "Annotation" and e["value"].startswith(key))
    ] + [{"name": "Annotation", "value": f"{key}: {url}"}]


@pytest.mark.parametrize("case,mutate,path,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_reports_the_field(case: str, mutate: Callable[[dict], None], path: str, reason: str) -> None:
    checked = check_obj(variant(mutate))
    assert not checked.ok
    assert (path, reason) in [(v.field, v.reason) for v in checked.violations], checked.violations
    # One problem, one violation: nothing else in the sample is reported.
    assert len(checked.violations) == 1, checked.violations


def test_namespace_outside_the_configured_list() -> None:
    checked = check_obj(sample(namespace="kube-system"), namespace="-")
    assert [(v.field, v.reason) for v in checked.violations] == [("metadata.namespace", "NAMESPACE_NOT_ALLOWED")]


def test_empty_namespace_list_allows_every_namespace() -> None:
    assert check_obj(sample(namespace="anything"), namespace="-", policy=Policy(domain="aigc.test")).ok


def test_every_violation_is_reported_at_once() -> None:
    def many(o: dict) -> None:
        o["spec"]["replicas"] = 3
        o["spec"]["scaleStrategy"]["scaleDownStrategyType"] = "General"
        set_conf(o, "Host", "instances.aigc.test")
        _limit("nvidia.com/gpu", "half")(o)
        o["metadata"]["name"] = "Upper"
    fields = {v.field for v in check_obj(variant(many)).violations}
    assert fields == {"spec.replicas", "spec.scaleStrategy.scaleDownStrategyType", "spec.network.networkConf[Host]",
                      GPU_PATH, "metadata.name"}


@pytest.mark.parametrize("text,reason", [
    ("apiVersion: [unclosed\n", "MANIFEST_SYNTAX"),
    ("kind: GameServerSet\n\tbad: tab\n", "MANIFEST_SYNTAX"),
    ("- a\n- b\n", "MANIFEST_SYNTAX"),
    ("a: &x [1]\nb: *x\n", "MANIFEST_SYNTAX"),
    ("a: 1\na: 2\n", "MANIFEST_SYNTAX"),
    ("a: 1\n---\nb: 2\n", "MANIFEST_SYNTAX"),
    ("", "MANIFEST_EMPTY"),
    ("x: " + "y" * (2 * 1024 * 1024), "MANIFEST_TOO_LARGE"),
])
def test_unreadable_manifest(text: str, reason: str) -> None:
    checked = check_text(text)
    assert checked.obj is None
    assert [(v.field, v.reason) for v in checked.violations] == [("source.manifest", reason)]


def test_yaml_error_names_the_line() -> None:
    text = sample_text().replace("  replicas: 0", "  replicas: [0")
    violation = check_text(text).violations[0]
    assert "line " in violation.description and violation.reason == "MANIFEST_SYNTAX"


def test_json_text_and_struct_are_accepted() -> None:
    assert check_text(json.dumps(sample())).ok
    struct = struct_pb2.Struct()
    struct.update(sample())
    parsed = manifest.parse_struct(struct, POLICY.max_manifest_bytes)
    # Struct numbers are doubles; replicas must come back as the integer 0.
    assert parsed.obj["spec"]["replicas"] == 0 and isinstance(parsed.obj["spec"]["replicas"], int)
    assert check_new(parsed, POLICY, "default").ok


def test_missing_auth_annotations_are_added_with_a_warning() -> None:
    def strip(o: dict) -> None:
        o["spec"]["network"]["networkConf"] = [e for e in o["spec"]["network"]["networkConf"]
                                               if e["name"] != "Annotation"]
    checked = check_obj(variant(strip), policy=Policy(domain="aigc.test", auth_url="https://gw.aigc.test/auth"))
    assert checked.ok, checked.violations
    added = {w.field: w.description for w in checked.warnings if w.reason == "AUTH_ANNOTATION_ADDED"}
    assert set(added) == {AUTH_URL_PATH, f"spec.network.networkConf[Annotation][{AUTH_SIGNIN_ANNOTATION}]"}
    values = [e["value"] for e in checked.obj["spec"]["network"]["networkConf"] if e["name"] == "Annotation"]
    assert f"{AUTH_URL_ANNOTATION}: https://gw.aigc.test/auth?rh=$host" in values
    assert f"{AUTH_SIGNIN_ANNOTATION}: https://dashboard.aigc.test/sign-in" in values


@pytest.mark.parametrize("configured, published, upgraded", [
    ("", "https://dashboard.aigc.test/auth", "https://dashboard.aigc.test/auth?rh=$host"),
    ("https://gw.aigc.test/auth?x=1", "https://gw.aigc.test/auth?x=1", "https://gw.aigc.test/auth?x=1&rh=$host"),
    ("https://gw.aigc.test/auth?rh=$host", "https://gw.aigc.test/auth", "https://gw.aigc.test/auth?rh=$host"),
])
def test_auth_url_without_the_routed_host_is_upgraded_with_a_warning(configured: str, published: str,
                                                                     upgraded: str) -> None:
    policy = Policy(namespaces=("default",), domain="aigc.test", auth_url=configured)
    assert policy.auth_url == upgraded  # a configured auth-url gets rh=$host too
    obj = variant(lambda o: _auth(o, AUTH_URL_ANNOTATION, published))
    # As found in the cluster (published before the routed-host check): unusable, and says how to fix it.
    report = rules.check(obj, policy, rules.Mode.EXISTING)
    assert [(v.field, v.reason) for v in report.violations] == [(AUTH_URL_PATH, "AUTH_URL_ROUTED_HOST_MISSING")]
    assert "rh=$host" in rules.unusable_reasons(report)[0]
    # Its next create or update adds rh=$host and says so.
    checked = check_obj(obj, policy=policy)
    assert checked.ok, checked.violations
    assert [(w.field, w.reason) for w in checked.warnings if w.reason.startswith("AUTH_")] == [
        (AUTH_URL_PATH, "AUTH_URL_ROUTED_HOST_ADDED")]
    values = [e["value"] for e in checked.obj["spec"]["network"]["networkConf"] if e["name"] == "Annotation"]
    assert values.count(f"{AUTH_URL_ANNOTATION}: {upgraded}") == 1
    assert not any(v.startswith(f"{AUTH_URL_ANNOTATION}: {published}") and v != f"{AUTH_URL_ANNOTATION}: {upgraded}"
                   for v in values)


HEADERS_PATH = f"spec.network.networkConf[Annotation][{AUTH_RESPONSE_HEADERS_ANNOTATION}]"


def _response_headers(value: str | None) -> Callable[[dict], None]:
    def mutate(obj: dict) -> None:
        obj["spec"]["network"]["networkConf"] = [
            e for e in obj["spec"]["network"]["networkConf"]
            if not (e["name"] == "Annotation" and e["value"].startswith(AUTH_RESPONSE_HEADERS_ANNOTATION))]
        if value is not None:
            obj["spec"]["network"]["networkConf"].append(
                {"name": "Annotation", "value": f"{AUTH_RESPONSE_HEADERS_ANNOTATION}: {value}"})
    return mutate


@pytest.mark.parametrize("published, normalised", [
    (None, "X-Auth-Request-User,X-Auth-Request-Email,Cookie"),  # no annotation: added
    ("X-Trace-Id", "X-Trace-Id,X-Auth-Request-User,X-Auth-Request-Email,Cookie"),  # names others: merged
    ("x-auth-request-user, X-Trace-Id", "x-auth-request-user,X-Trace-Id,X-Auth-Request-Email,Cookie"),
    ("X-Auth-Request-User", "X-Auth-Request-User,X-Auth-Request-Email,Cookie"),
    ("cookie, X-Auth-Request-User", "cookie,X-Auth-Request-User,X-Auth-Request-Email"),  # Cookie in any case
])
def test_identity_headers_are_always_named_in_auth_response_headers(published: str | None, normalised: str) -> None:
    """Issue 11: a header auth-response-headers does not name passes from the client to the instance unchanged
    (ingress-nginx and Traefik alike), so every template names the identity headers: published without them,
    it is unusable until its next create or update adds them with a warning."""
    obj = variant(_response_headers(published))
    report = rules.check(obj, POLICY, rules.Mode.EXISTING)
    assert [(v.field, v.reason) for v in report.violations] == [(HEADERS_PATH, "AUTH_RESPONSE_HEADERS_MISSING")]
    assert "X-Auth-Request-User" in rules.unusable_reasons(report)[0]
    assert [(w.field, w.reason) for w in report.warnings if w.reason.startswith("AUTH_")] == (
        [] if "cookie" in (published or "").lower() else [(HEADERS_PATH, "AUTH_RESPONSE_COOKIE_MISSING")])
    checked = check_obj(obj)
    assert checked.ok, checked.violations
    assert [(w.field, w.reason) for w in checked.warnings if w.reason.startswith("AUTH_")] == [
        (HEADERS_PATH, "AUTH_RESPONSE_HEADERS_ADDED")]
    values = [e["value"] for e in checked.obj["spec"]["network"]["networkConf"]
              if e["name"] == "Annotation" and e["value"].startswith(AUTH_RESPONSE_HEADERS_ANNOTATION)]
    assert values == [f"{AUTH_RESPONSE_HEADERS_ANNOTATION}: {normalised}"]
    # Normalised once is normalised: nothing more to add, and usable as found in the cluster.
    again = check_obj(checked.obj)
    assert again.ok and not [w for w in again.warnings if w.reason.startswith("AUTH_")]
    assert rules.check(checked.obj, POLICY, rules.Mode.EXISTING).violations == []


def test_auth_response_headers_naming_the_identity_headers_are_kept_as_written() -> None:
    checked = check_obj(variant(_response_headers("X-Auth-Request-Email , COOKIE, x-auth-request-user")))
    assert checked.ok and not [w for w in checked.warnings if w.reason.startswith("AUTH_")]
    assert f"{AUTH_RESPONSE_HEADERS_ANNOTATION}: X-Auth-Request-Email , COOKIE, x-auth-request-user" in [
        e["value"] for e in checked.obj["spec"]["network"]["networkConf"]]


def test_a_template_published_without_cookie_stays_usable_and_its_next_write_adds_it() -> None:
    """A template published before the gateway required `Cookie` (the identity headers named): the proxy passes
    the client's whole Cookie header, the gateway's session included, to its instances. Found in the cluster it
    stays usable (its instances work as before) with AUTH_RESPONSE_COOKIE_MISSING among the rules' warnings; a
    create or update (and ValidateTemplate of it as an update) adds Cookie and says so; a manifest that would
    be written without it is refused (normalisation never leaves one)."""
    obj = variant(_response_headers("X-Auth-Request-User,X-Auth-Request-Email"))
    report = rules.check(obj, POLICY, rules.Mode.EXISTING)
    assert report.ok and rules.unusable_reasons(report) == []
    assert [(w.field, w.reason) for w in report.warnings] == [(HEADERS_PATH, "AUTH_RESPONSE_COOKIE_MISSING")]
    assert messages.describe(obj, POLICY, messages.Counts(), with_manifest=False).usable
    checked = check_obj(obj)
    assert checked.ok, checked.violations
    added = [w for w in checked.warnings if w.reason.startswith("AUTH_")]
    assert [(w.field, w.reason) for w in added] == [(HEADERS_PATH, "AUTH_RESPONSE_HEADERS_ADDED")]
    assert added[0].description.startswith("added Cookie: the instance now gets the client's cookies without")
    assert f"{AUTH_RESPONSE_HEADERS_ANNOTATION}: X-Auth-Request-User,X-Auth-Request-Email,Cookie" in [
        e["value"] for e in checked.obj["spec"]["network"]["networkConf"]]
    for mode in (rules.Mode.CREATE, rules.Mode.UPDATE):
        assert [(v.field, v.reason) for v in rules.check(obj, POLICY, mode).violations
                if v.reason.startswith("AUTH_")] == [(HEADERS_PATH, "AUTH_RESPONSE_COOKIE_MISSING")]


def test_proxy_buffer_size_is_added_when_missing_and_an_admins_own_is_kept() -> None:
    """The auth answer carries the instance's own cookies, which ingress-nginx reads into the auth location's
    proxy_buffer_size (4k by default); tests/edge/test_cookies.py shows the 500 without it."""
    key = "nginx.ingress.kubernetes.io/proxy-buffer-size"

    def without(o: dict) -> None:
        o["spec"]["network"]["networkConf"] = [e for e in o["spec"]["network"]["networkConf"]
                                               if not str(e.get("value", "")).startswith(key)]

    def own(o: dict) -> None:
        without(o)
        o["spec"]["network"]["networkConf"].append({"name": "Annotation", "value": f"{key}: 32k"})

    checked = check_obj(variant(without))
    assert checked.ok, checked.violations
    assert [(w.field, w.reason) for w in checked.warnings if w.reason == "PROXY_BUFFER_SIZE_ADDED"] == [
        (f"spec.network.networkConf[Annotation][{key}]", "PROXY_BUFFER_SIZE_ADDED")]
    values = [e["value"] for e in checked.obj["spec"]["network"]["networkConf"] if e["name"] == "Annotation"]
    assert [v for v in values if v.startswith(key)] == [f"{key}: 16k"]
    kept = check_obj(variant(own))
    assert not [w for w in kept.warnings if w.reason == "PROXY_BUFFER_SIZE_ADDED"]
    assert [e["value"] for e in kept.obj["spec"]["network"]["networkConf"]
            if str(e.get("value", "")).startswith(key)] == [f"{key}: 32k"]


@pytest.mark.parametrize("value", ["X-Auth-Request-User;X-Auth-Request-Email", "X-Auth-Request-User,X.Y"])
def test_auth_response_headers_ingress_nginx_would_refuse_are_reported(value: str) -> None:
    checked = check_obj(variant(_response_headers(value)))
    assert (HEADERS_PATH, "AUTH_RESPONSE_HEADERS_INVALID") in [(v.field, v.reason) for v in checked.violations]
    assert not checked.ok


def test_unknown_fields_are_kept() -> None:
    obj = variant(lambda o: (o["spec"].__setitem__("futureField", {"x": [1, 2]}),
                             container(o).__setitem__("xExtra", True)))
    checked = check_obj(obj)
    assert checked.ok
    assert checked.obj["spec"]["futureField"] == {"x": [1, 2]} and container(checked.obj)["xExtra"] is True


def test_replicas_left_out_becomes_zero_and_server_fields_are_dropped() -> None:
    def kubectl_output(o: dict) -> None:
        o["spec"].pop("replicas")
        o["metadata"].update(uid="abc", resourceVersion="12", creationTimestamp="2024-01-01T00:00:00Z")
        o["status"] = {"replicas": 0}
    checked = check_obj(variant(kubectl_output))
    assert checked.ok
    assert checked.obj["spec"]["replicas"] == 0
    assert "uid" not in checked.obj["metadata"] and "status" not in checked.obj
    assert {"REPLICAS_DEFAULTED", "SERVER_FIELDS_IGNORED"} <= {w.reason for w in checked.warnings}


def test_no_disk_is_a_warning_not_a_violation() -> None:
    checked = check_obj(variant(lambda o: o["spec"]["gameServerTemplate"].pop("volumeClaimTemplates")))
    assert checked.ok
    assert "NO_PERSISTENT_DISK" in {w.reason for w in checked.warnings}


def test_existing_template_reports_why_it_is_unusable() -> None:
    obj = variant(lambda o: (o["spec"].__setitem__("replicas", 4),
                             o["spec"]["scaleStrategy"].__setitem__("scaleDownStrategyType", "General")))
    report = rules.check(obj, POLICY, rules.Mode.EXISTING)
    reasons = rules.unusable_reasons(report)
    assert len(reasons) == 1 and "ReserveIds" in reasons[0]  # live replicas are fine for an existing template


def test_reserved_ids_of_an_existing_template_are_checked() -> None:
    obj = variant(lambda o: o["spec"].__setitem__("reserveGameServerIds", [0, "2-4", "x", "5-3", -1]))
    report = rules.check(obj, POLICY, rules.Mode.EXISTING)
    assert [v.field for v in report.violations] == [f"spec.reserveGameServerIds[{i}]" for i in (2, 3, 4)]


def test_gpu_mem_with_a_unit_says_to_write_a_plain_number() -> None:
    [violation] = check_obj(variant(_limit("aliyun.com/gpu-mem", "3Gi"))).violations
    assert violation.field == GPU_MEM_PATH
    assert "plain number" in violation.description and "write 3 for 3 GiB" in violation.description
    # The plain forms are the count of GiB: "3", 3 and a JSON 3.0 all mean 3 GiB.
    for value in ("3", 3, 3.0):
        checked = check_obj(variant(_limit("aliyun.com/gpu-mem", value)))
        assert checked.ok, (value, checked.violations)


def test_replicas_beyond_int32_of_an_existing_template() -> None:
    report = rules.check(variant(lambda o: o["spec"].__setitem__("replicas", 2**31)), POLICY, rules.Mode.EXISTING)
    assert [(v.field, v.reason) for v in report.violations] == [("spec.replicas", "INVALID_REPLICAS")]
