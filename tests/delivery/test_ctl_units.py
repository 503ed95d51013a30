"""aigcctl's pure logic: exit codes, error details, names, manifests, settings, output, waiting."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import timestamp_pb2

from aigc_gateway.api.v1 import audit_pb2, instance_pb2, template_pb2
from aigc_gateway.ctl import render
from aigc_gateway.ctl.cmd_audit import new_events, parse_since
from aigc_gateway.ctl.exitcodes import CallFailed, Exit, Failure, exit_code
from aigc_gateway.ctl.main import hoist_global_options
from aigc_gateway.ctl.manifests import load, parse_vars
from aigc_gateway.ctl.names import instance_name, short, template_name, template_parent
from aigc_gateway.ctl.settings import DEFAULT_ADDRESSES, resolve
from aigc_gateway.ctl.waiting import GONE, State, settle
from aigc_gateway.errors import AlreadyExists, InvalidArgument, ResourceExhausted, Violation

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"


# -- exit codes ------------------------------------------------------------------

def test_every_grpc_code_has_a_documented_exit_code() -> None:
    expected = {
        "OK": 0, "CANCELLED": 1, "UNKNOWN": 1, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 9, "NOT_FOUND": 4,
        "ALREADY_EXISTS": 5, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 3,
        "ABORTED": 5, "OUT_OF_RANGE": 3, "UNIMPLEMENTED": 10, "INTERNAL": 1, "UNAVAILABLE": 9, "DATA_LOSS": 1,
        "UNAUTHENTICATED": 6,
    }
    assert {c.name: int(exit_code(c)) for c in grpc.StatusCode} == expected
    # The numbers are documented in the CLI's help and docs/delivery.md: they must stay distinct.
    doc = Path(__file__).resolve().parents[2] / "docs" / "delivery.md"
    documented = doc.read_text()
    for code in Exit:
        assert f"| {int(code)} |" in documented, f"exit code {int(code)} ({code.name}) missing from {doc}"


def test_call_failed_decodes_the_gateways_error_details() -> None:
    status = InvalidArgument("manifest is invalid", reason="INVALID_MANIFEST", violations=[
        Violation("spec.replicas", "must be 0", "NOT_ZERO"),
        Violation("spec.scaleStrategy", "must be ReserveIds")]).to_status()
    failed = CallFailed(grpc.StatusCode.INVALID_ARGUMENT, status.message)
    failed._decode(status)
    assert failed.exit == Exit.INVALID
    assert failed.violations == [("spec.replicas", "must be 0"), ("spec.scaleStrategy", "must be ReserveIds")]
    lines = failed.describe()
    assert lines[0] == "error: INVALID_ARGUMENT: manifest is invalid [INVALID_MANIFEST]"
    assert "  - spec.replicas: must be 0" in lines

    exists = AlreadyExists("already installed", reason="INSTANCE_EXISTS",
                           metadata={"instance": "namespaces/d/templates/t/instances/3"}).to_status()
    failed = CallFailed(grpc.StatusCode.ALREADY_EXISTS, exists.message)
    failed._decode(exists)
    assert failed.metadata == {"instance": "namespaces/d/templates/t/instances/3"}
    assert failed.exit == Exit.CONFLICT

    slow = ResourceExhausted("quota", retry_after=2.5).to_status()
    failed = CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, slow.message)
    failed._decode(slow)
    assert failed.retry_after == pytest.approx(2.5)


# -- argument handling ---------------------------------------------------------------

def test_global_options_are_accepted_after_the_command() -> None:
    assert hoist_global_options(["templates", "list", "-o", "json", "-A"]) == ["-o", "json", "templates", "list", "-A"]
    assert hoist_global_options(["instances", "get", "t/1", "--output=yaml", "-n", "ns", "--tls"]) == [
        "--output=yaml", "-n", "ns", "--tls", "instances", "get", "t/1"]
    # After `--` nothing is moved; command options with values stay where they are.
    assert hoist_global_options(["templates", "apply", "-f", "-", "--", "-o"]) == [
        "templates", "apply", "-f", "-", "--", "-o"]


def test_resource_names() -> None:
    assert template_name("sd-cpu", "team-a") == "namespaces/team-a/templates/sd-cpu"
    assert template_name("namespaces/x/templates/y", "ignored") == "namespaces/x/templates/y"
    assert instance_name("sd-cpu/3", "default") == "namespaces/default/templates/sd-cpu/instances/3"
    assert instance_name("namespaces/a/templates/b/instances/0", "x") == "namespaces/a/templates/b/instances/0"
    assert template_parent(None, "ns") == "namespaces/ns/templates/-"
    assert template_parent(None, "ns", all_namespaces=True) == "namespaces/-/templates/-"
    assert short("namespaces/default/templates/sd/instances/3") == "default/sd/3"
    for bad in ("sd-cpu", "sd-cpu/x", "/3", "namespaces/a/templates/b/instances/x"):
        with pytest.raises(Failure) as info:
            instance_name(bad, "default")
        assert info.value.exit == Exit.USAGE
    for bad in ("Bad_Name", "namespaces/a/templates/-", "a/b"):
        with pytest.raises(Failure):
            template_name(bad, "default")


def test_manifests_fill_placeholders_and_split_documents(tmp_path: Path) -> None:
    sample = SAMPLES / "stable-diffusion-cpu.yaml"
    with pytest.raises(Failure) as info:
        load(str(sample), {})
    assert "DOMAIN" in str(info.value) and info.value.exit == Exit.USAGE
    [one] = load(str(sample), parse_vars(["DOMAIN=aigc.example"]))
    assert "${DOMAIN}" not in one.text and "aigc.example" in one.text
    assert one.name == yaml.safe_load(one.text)["metadata"]["name"]

    both = tmp_path / "two.yaml"
    both.write_text(sample.read_text() + "\n---\n" + (SAMPLES / "stable-diffusion-gpu.yaml").read_text())
    docs = load(str(both), {"DOMAIN": "d.test"})
    assert [d.source for d in docs] == [f"{both} (document 1)", f"{both} (document 2)"]
    assert [yaml.safe_load(d.text)["metadata"]["name"] for d in docs] == [d.name for d in docs]

    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("kind: GameServerSet\nmetadata: {}\n")
    with pytest.raises(Failure, match="metadata.name"):
        load(str(nameless), {})
    with pytest.raises(Failure, match="NAME=VALUE"):
        parse_vars(["DOMAIN"])


# -- settings ----------------------------------------------------------------------

def test_settings_precedence_and_token_sources(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-file\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"servers": {"template": "file:1", "instance": "file:2"},
                                      "namespace": "from-file", "token_file": "token"}))
    env = {"AIGCCTL_CONFIG": str(config), "AIGCCTL_INSTANCE": "env:2", "HOME": str(tmp_path)}
    s = resolve(environ=env)
    assert s.addresses == {**DEFAULT_ADDRESSES, "template": "file:1", "instance": "env:2"}
    assert s.address("audit") == "file:1"  # AuditService follows the template address
    assert (s.namespace, s.token) == ("from-file", "from-file")  # token_file relative to the config file
    s = resolve(environ={**env, "AIGC_TOKEN": "from-env"}, addresses={"instance": "flag:2"}, namespace="flag")
    assert (s.addresses["instance"], s.namespace, s.token) == ("flag:2", "flag", "from-env")
    assert "from-env" not in repr(s)  # the token never shows in a repr (tracebacks, logs)
    other = tmp_path / "other"
    other.write_text("from-flag")
    assert resolve(environ={**env, "AIGC_TOKEN": "x"}, token_file=str(other)).token == "from-flag"

    config.write_text("servers: {tempalte: x:1}\n")
    with pytest.raises(Failure) as info:
        resolve(environ=env)
    assert info.value.exit == Exit.USAGE
    with pytest.raises(Failure, match="does not exist"):
        resolve(environ={"AIGCCTL_CONFIG": str(tmp_path / "missing.yaml")})
    empty = tmp_path / "empty-token"
    empty.write_text("  \n")
    with pytest.raises(Failure, match="empty"):
        resolve(environ={"HOME": str(tmp_path)}, token_file=str(empty))


# -- output --------------------------------------------------------------------------

def _template(name: str, live: int) -> template_pb2.Template:
    t = template_pb2.Template(name=f"namespaces/default/templates/{name}", display_name=name.upper(),
                              live_instance_count=live, usable=live % 2 == 0)
    t.create_time.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    return t


def test_json_and_yaml_output_parse_with_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    items = [_template("a", 0), _template("b", 3)]
    render.emit(items, "json")
    data = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in data] == ["namespaces/default/templates/a", "namespaces/default/templates/b"]
    assert data[0]["liveInstanceCount"] == 0 and data[0]["pausedInstanceCount"] == 0  # defaults present
    assert data[1]["createTime"] == "2026-01-02T03:04:05Z"
    render.emit(items[1], "yaml")
    assert yaml.safe_load(capsys.readouterr().out)["displayName"] == "B"


def test_table_output_shows_the_columns(capsys: pytest.CaptureFixture[str]) -> None:
    from aigc_gateway.ctl.cmd_templates import COLUMNS

    render.emit([_template("sd-cpu", 2), _template("sd-gpu", 1)], "table", COLUMNS)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["NAME", "DISPLAY"]
    assert out[1].split()[0] == "default/sd-cpu" and "SD-CPU" in out[1]
    assert "no:" in out[2]  # an unusable template says so


# -- waiting -------------------------------------------------------------------------

def _event(state: int, message: str = "") -> instance_pb2.InstanceEvent:
    return instance_pb2.InstanceEvent(instance=instance_pb2.Instance(name="n", state=state), message=message)


def test_settle_reaches_the_target_and_reports_each_event() -> None:
    seen: list[int] = []
    events = [_event(State.INSTALLING), _event(State.STARTING), _event(State.RUNNING), _event(State.PAUSING)]
    outcome = settle(iter(events), State.RUNNING, on_event=lambda e: seen.append(e.instance.state))
    assert outcome.done and outcome.instance.state == State.RUNNING
    assert seen == [State.INSTALLING, State.STARTING, State.RUNNING]  # stops at the target


def test_settle_stops_on_a_crash_and_on_a_stream_that_ends() -> None:
    crashed = settle(iter([_event(State.STARTING), _event(State.CRASHED, "OOMKilled")]), State.RUNNING)
    assert not crashed.done and "OOMKilled" in crashed.reason
    ended = settle(iter([_event(State.PAUSING)]), State.PAUSED)
    assert not ended.done and "PAUSED" in ended.reason


def test_settle_restart_ignores_the_old_running_pod() -> None:
    running_first = [_event(State.RUNNING), _event(State.RESTARTING), _event(State.STARTING), _event(State.RUNNING)]
    seen: list[int] = []
    outcome = settle(iter(running_first), State.RUNNING, require_change=True,
                     on_event=lambda e: seen.append(e.instance.state))
    assert outcome.done and len(seen) == 4
    # Without require_change the first RUNNING would have ended the wait.
    early: list[int] = []
    settle(iter(running_first), State.RUNNING, on_event=lambda e: early.append(e.instance.state))
    assert early == [State.RUNNING]
    # The RPC's own answer (RESTARTING) already counts as the change.
    outcome = settle(iter([_event(State.RUNNING)]), State.RUNNING, require_change=True,
                     first=instance_pb2.Instance(state=State.RESTARTING))
    assert outcome.done


def test_settle_gone_waits_for_the_end_of_the_stream() -> None:
    outcome = settle(iter([_event(State.UNINSTALLING), _event(State.UNINSTALLING)]), GONE)
    assert outcome.done


# -- audit -----------------------------------------------------------------------------

def test_parse_since() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-04-30T10:00:00", now) == datetime(2026, 4, 30, 10, tzinfo=UTC)
    with pytest.raises(Failure):
        parse_since("yesterday", now)


def test_tail_prints_each_event_once_oldest_first() -> None:
    def ev(n: int) -> audit_pb2.AuditEvent:
        return audit_pb2.AuditEvent(name=f"auditEvents/{n}", time=timestamp_pb2.Timestamp(seconds=n))

    seen: set[str] = set()
    assert [e.name for e in new_events([ev(3), ev(2), ev(1)], seen)] == ["auditEvents/1", "auditEvents/2",
                                                                        "auditEvents/3"]
    assert [e.name for e in new_events([ev(5), ev(4), ev(3), ev(2)], seen)] == ["auditEvents/4", "auditEvents/5"]
    assert new_events([ev(5), ev(4)], seen) == []
