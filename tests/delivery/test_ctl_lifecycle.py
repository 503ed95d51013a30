"""aigcctl, run as the separate process an admin runs, drives a whole template and instance
lifecycle against the real services on the test bed; every JSON output parses; failures end
with the documented exit codes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.plugins.kube import load_sample

from .conftest import ctl_addresses, parsed, run_ctl
from .stack import SAMPLE, stack_settings

pytestmark = pytest.mark.testbed


@pytest.fixture
async def cli(start_gateway, database_url, issuer, testbed, k8s_namespace, logto, tmp_path: Path):
    settings = stack_settings(database_url, issuer, testbed.kubeconfig, k8s_namespace, logto)
    gw = await start_gateway("template", "instance", "auth", "usersync", settings=settings)
    flags = [*ctl_addresses(gw), "--namespace", k8s_namespace]

    async def run(*args: str, user: str | None = "admin", **kw: Any):
        token = issuer.mint(user, roles=["admin"] if user == "admin" else []) if user else ""
        return await run_ctl(*flags, *args, token=token, **kw)  # args last: they override

    run.issuer = issuer  # type: ignore[attr-defined]
    return run


async def test_template_and_instance_lifecycle(cli, testbed, k8s_namespace: str, tmp_path: Path) -> None:
    ns = k8s_namespace
    manifest = tmp_path / "template.yaml"
    obj = load_sample(SAMPLE, "${DOMAIN}", ns)  # keep the placeholder: aigcctl fills it
    manifest.write_text(yaml.safe_dump(obj))

    # Publish (--var fills ${DOMAIN}); list and get parse; a second apply is an update.
    applied = parsed(await cli("templates", "apply", "-f", str(manifest), "--var", f"DOMAIN={testbed.domain}",
                               "-o", "json"))
    assert applied["template"]["name"] == f"namespaces/{ns}/templates/{SAMPLE}"
    assert [t["name"].rsplit("/", 1)[1] for t in parsed(await cli("templates", "list", "-o", "json"))] == [SAMPLE]
    got = parsed(await cli("templates", "get", SAMPLE, "-o", "yaml", "-o", "json"))
    assert got["usable"] is True, got
    again = await cli("templates", "apply", "-f", str(manifest), "--var", f"DOMAIN={testbed.domain}")
    assert again.code == 0 and "updated" in again.stdout, again
    preview = parsed(await cli("templates", "preview-update", "-f", str(manifest), "--var",
                               f"DOMAIN={testbed.domain}", "-o", "json"))
    assert preview["restartsInstances"] is False

    # validate: an invalid manifest is a check failure (11), with the field named.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**obj, "spec": {**obj["spec"], "replicas": 3}}))
    invalid = await cli("templates", "validate", "-f", str(bad), "--var", "DOMAIN=x.test", "-o", "json")
    assert invalid.code == 11, invalid
    assert any("replicas" in v["field"] for v in json.loads(invalid.stdout)["violations"])

    # A user installs, with live progress on stderr and the final instance as JSON on stdout.
    installed = parsed(await cli("instances", "install", SAMPLE, "-o", "json", "--timeout", "120", user="alice"))
    assert installed["state"] == "RUNNING" and installed["owner"] == "alice"
    name = installed["name"]
    short = f"{SAMPLE}/{installed['id']}"
    twice = await cli("instances", "install", SAMPLE, user="alice")
    assert twice.code == 5 and name in twice.stderr, twice  # ALREADY_EXISTS names the instance
    listed = parsed(await cli("instances", "list", "-o", "json", user="alice"))
    assert [i["name"] for i in listed] == [name]
    assert parsed(await cli("instances", "pause", short, "-o", "json", user="alice"))["state"] == "PAUSED"
    assert parsed(await cli("instances", "resume", short, "-o", "json", user="alice"))["state"] == "RUNNING"
    assert parsed(await cli("instances", "restart", short, "-o", "json", user="alice"))["state"] == "RUNNING"
    usage = parsed(await cli("instances", "quota", "-o", "json", user="alice"))  # no limits configured
    assert usage["user"] == "alice" and [(u["limit"], u.get("usage", 0), u.get("unlimited")) for u in usage["limits"]] \
        == [("installed", 1, True), ("running", 1, True), ("gpus", 0, True), ("gpu_memory_gib", 0, True)]
    events = await cli("instances", "watch", short, "-o", "json", "--timeout", "3", user="alice")
    assert events.code == 0, events
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    assert lines and lines[0]["instance"]["name"] == name

    # Admin views: table output, doctor, audit.
    table = await cli("instances", "list", "-A")
    assert table.code == 0 and "RUNNING" in table.stdout and "alice" in table.stdout, table
    doctor = parsed(await cli("doctor", "-o", "json"))
    assert doctor["services"] == dict.fromkeys(["template", "instance", "auth", "usersync"], "SERVING")
    assert doctor["consistency"]["consistent"] is True
    audit = parsed(await cli("audit", "list", "--action", "InstanceService.PauseInstance", "-o", "json"))
    assert [(e["actor"], e["resource"], e["outcome"]) for e in audit] == [("alice", name, "SUCCESS")]
    tail = await cli("audit", "tail", "--no-follow", "--lines", "5", "-o", "json")
    assert tail.code == 0 and len([json.loads(x) for x in tail.stdout.splitlines()]) == 5, tail

    # Uninstall (waits until the instance is gone), then the template.
    deleted = parsed(await cli("instances", "delete", short, "--yes", "-o", "json", user="alice"))
    assert deleted == {"name": name, "deleted": True}
    gone = await cli("instances", "get", short, user="alice")
    assert gone.code == 4, gone

    # An image change rolls out by the chosen policy (docs/upgrade.md): manual needs no --allow-restart and is
    # recorded; immediate without it is refused (FAILED_PRECONDITION, 3); a policy aigcctl does not know is usage (2).
    image = tmp_path / "image.yaml"
    image.write_text(manifest.read_text().replace(":v1.0.0-cpu", ":v2.0.0-cpu"))
    flags = ("templates", "apply", "-f", str(image), "--var", f"DOMAIN={testbed.domain}")
    assert (await cli(*flags, "--rollout-policy", "immediate")).code == 3
    assert (await cli(*flags, "--rollout-policy", "sometimes")).code == 2
    rolled = parsed(await cli(*flags, "--rollout-policy", "manual", "--rollout-idle-after", "30m", "-o", "json"))
    assert (rolled["template"]["rolloutPolicy"], rolled["template"]["rolloutIdleAfter"]) == ("MANUAL", "1800s")
    assert (await cli("templates", "delete", SAMPLE, "--yes")).code == 0
    assert parsed(await cli("templates", "list", "-o", "json")) == []


async def test_exit_codes_and_credentials(cli, tmp_path: Path) -> None:
    assert (await cli("templates", "get", "no-such-template")).code == 4
    unauthenticated = await cli("templates", "list", user=None)
    assert unauthenticated.code == 6 and "UNAUTHENTICATED" in unauthenticated.stderr
    assert (await cli("audit", "list", user="alice")).code == 7
    assert (await cli("instances", "get", "not-a-name")).code == 2
    assert (await cli("templates", "list", "--template-addr", "127.0.0.1:1", "--request-timeout", "2")).code == 9

    # A token file, and JSON from `whoami` and `import-logto` as admin.
    token = tmp_path / "token"
    token.write_text(cli.issuer.mint("admin", roles=["admin"]) + "\n")
    me = parsed(await cli("whoami", "-o", "json", "--token-file", str(token), user=None))
    assert me["subject"] == "admin" and me["admin"] is True
    report = parsed(await cli("import-logto", "--dry-run", "-o", "json"))
    assert report["dryRun"] is True
