"""Pure domain modules of the instance service: names, template reading, state derivation, invariants, access."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aigc_gateway import okg
from aigc_gateway.accelerator import ECI_LABEL
from aigc_gateway.api.v1 import common_pb2, instance_pb2
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from aigc_gateway.identity import Principal
from aigc_gateway.names import (
    TemplateRef,
)
from aigc_gateway.okg import SlotState
from aigc_gateway.services.instance import access, invariants, messages, status, templates
from aigc_gateway.services.instance.allocator import Spec

State = instance_pb2.Instance.State
REF = TemplateRef("games", "sd-cpu")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def gss(**spec: object) -> dict:
    base = {
        "metadata": {"name": "sd-cpu", "namespace": "games", "generation": 4, "labels": {"app": "aigc"},
                     "annotations": {okg.RESERVE_ANNOTATION: "1,4-7"}, "resourceVersion": "99"},
        "spec": {"replicas": 3, "reserveGameServerIds": [1, "4-7"],
                 "scaleStrategy": {"scaleDownStrategyType": "ReserveIds"},
                 "gameServerTemplate": {
                     "metadata": {"labels": {}},
                     "spec": {"containers": [{"name": "sd", "resources": {"limits": {"cpu": "2", "memory": "4Gi"}}}]},
                     "volumeClaimTemplates": [{"metadata": {"name": "user-data"},
                                               "spec": {"resources": {"requests": {"storage": "50Gi"}},
                                                        "storageClassName": "essd"}}]},
                 "network": {"networkConf": [{"name": "Path", "value": "/"}]}},
        "status": {"observedGeneration": 4, "replicas": 3},
    }
    base["spec"].update(spec)
    return base


# (resource names: tests/unit/test_names.py)


# -- templates ---------------------------------------------------------------------------------------------

def test_spec_reads_ranges_and_the_write_uses_ints_and_the_version_read() -> None:
    obj = gss()
    assert templates.spec_of(REF, obj) == Spec.of(3, {1, 4, 5, 6, 7})
    body = templates.with_spec(obj, Spec.of(4, {1, 4, 5, 6}))
    assert body["spec"]["reserveGameServerIds"] == [1, 4, 5, 6] and body["spec"]["replicas"] == 4
    assert body["metadata"]["resourceVersion"] == "99" and "status" not in body
    assert obj["spec"]["replicas"] == 3  # the object read is untouched


def test_settled_needs_the_controller_to_have_seen_the_spec() -> None:
    assert templates.settled(gss())
    lagging = gss()
    lagging["metadata"]["generation"] = 5
    assert not templates.settled(lagging)
    unapplied = gss(reserveGameServerIds=[1, "4-8"])
    assert not templates.settled(unapplied)
    fresh = gss(replicas=0, reserveGameServerIds=None)
    fresh["metadata"]["annotations"] = {}
    fresh["status"]["replicas"] = 0
    assert templates.settled(fresh)


def test_only_reserve_ids_templates_are_usable() -> None:
    templates.check_usable(REF, gss())
    with pytest.raises(FailedPrecondition) as err:
        templates.check_usable(REF, gss(scaleStrategy={"scaleDownStrategyType": "General"}))
    assert err.value.reason == "NOT_RESERVE_IDS"
    with pytest.raises(FailedPrecondition):
        templates.check_usable(REF, gss(scaleStrategy={}))
    with pytest.raises(FailedPrecondition) as bad:
        templates.spec_of(REF, gss(reserveGameServerIds=["x"]))
    assert bad.value.reason == "RESERVE_LIST_INVALID"


def test_templates_are_filtered_by_namespace_and_labels() -> None:
    assert okg.is_template(gss(), [], {"app": "aigc"})
    assert not okg.is_template(gss(), ["other"], {})
    assert not okg.is_template(gss(), [], {"app": "else"})


@pytest.mark.parametrize("limits, labels, expected", [
    ({"cpu": "2", "memory": "4Gi"}, {}, {"type": "CPU", "cpu": "2", "memory": "4Gi", "eci": False}),
    ({"nvidia.com/gpu": "1"}, {}, {"type": "GPU", "gpu_count": 1}),
    ({"aliyun.com/gpu-mem": 3}, {}, {"type": "SHARED_GPU", "gpu_memory_gib": 3}),
    ({"nvidia.com/gpu": 1}, {ECI_LABEL: "true"}, {"type": "GPU", "eci": True, "eci_instance_type": ""}),
    ({"cpu": "2"}, {}, {"type": "CPU", "eci_instance_type": ""}),  # an ECI type only on ECI pods
    # Beyond the message's int32 (written around the template service): the kind, no count, no failed read.
    ({"aliyun.com/gpu-mem": 3 * 2**30}, {}, {"type": "SHARED_GPU", "gpu_memory_gib": 0}),
    ({"nvidia.com/gpu": "99999999999"}, {}, {"type": "GPU", "gpu_count": 0}),
])
def test_accelerator(limits: dict, labels: dict, expected: dict) -> None:
    obj = gss()
    obj["spec"]["gameServerTemplate"]["spec"]["containers"][0]["resources"] = {"limits": limits}
    obj["spec"]["gameServerTemplate"]["metadata"]["labels"] = labels
    acc = templates.accelerator(obj)
    assert {k: acc[k] for k in expected} == expected
    common_pb2.Accelerator(type=common_pb2.Accelerator.Type.Value(acc["type"]),
                           **{k: v for k, v in acc.items() if k != "type"})


# -- state derivation --------------------------------------------------------------------------------------

def pod(phase: str = "Running", ready: bool = True, **status: object) -> dict:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": {"name": "sd-cpu-0", "namespace": "games"},
            "status": {"phase": phase, "conditions": conditions, **status}}


def game_server(ready_network: bool = True) -> dict:
    return {"status": {"currentState": "Ready", "networkStatus": {
        "currentNetworkState": "Ready" if ready_network else "NotReady",
        "externalAddresses": [{"endPoint": "instances0-cpu.aigc.test"}]}}}


def derive(slot: SlotState, seen: status.Observed, changed: bool = False, template: dict | None = None) -> status.View:
    return status.derive(slot, changed, template or gss(), seen, 0)


def test_running_needs_a_ready_pod_and_a_ready_network() -> None:
    view = derive(SlotState.LIVE, status.Observed(game_server(), pod()))
    assert (view.state, view.message, view.access_uri) == (State.RUNNING, "Ready", "https://instances0-cpu.aigc.test/")
    waiting = derive(SlotState.LIVE, status.Observed(game_server(False), pod()))
    assert waiting.state == State.STARTING and waiting.access_uri == ""


def test_a_pod_parked_or_updated_by_a_rollout() -> None:
    """Issue 14: a pod the hold hook parks (GameServer PreUpdate) is still Ready, so running; one being updated in
    place is NotReady until its container runs the new image: restarting, not 'not answering'."""
    parked = game_server()
    parked["status"]["currentState"] = "PreUpdate"
    assert derive(SlotState.LIVE, status.Observed(parked, pod())).state == State.RUNNING
    updating = game_server()
    updating["status"]["currentState"] = "Updating"
    view = derive(SlotState.LIVE, status.Observed(updating, pod(ready=False)))
    assert (view.state, view.reason) == (State.RESTARTING, "Updating")


def test_no_pod_yet_is_installing_or_resuming() -> None:
    assert derive(SlotState.LIVE, status.Observed()).state == State.INSTALLING
    assert derive(SlotState.LIVE, status.Observed(), changed=True).state == State.RESUMING


def test_unschedulable_on_a_gpu_template_waits_for_a_gpu_node() -> None:
    template = gss()
    template["spec"]["gameServerTemplate"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    pending = pod("Pending", False)
    pending["status"]["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                            "message": "0/3 nodes are available"})
    view = derive(SlotState.LIVE, status.Observed(None, pending), template=template)
    assert view.state == State.STARTING and view.message.startswith("Waiting for a GPU node")
    assert view.reason == "Unschedulable"


def test_pulling_event_is_the_message_while_pending() -> None:
    events = [{"reason": "Scheduled", "message": "assigned"},
              {"reason": "Pulling", "message": 'Pulling image "sd:v1"'}]
    view = derive(SlotState.LIVE, status.Observed(None, pod("Pending", False), events))
    assert (view.state, view.message, view.source) == (State.STARTING, 'Pulling image "sd:v1"', "event")


def test_crash_loop_is_crashed_with_the_exit_code() -> None:
    crashing = pod("Running", False, containerStatuses=[{
        "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])
    view = derive(SlotState.LIVE, status.Observed(game_server(), crashing))
    assert view.state == State.CRASHED and "137" in view.message


def test_paused_pausing_restarting_uninstalling() -> None:
    assert derive(SlotState.PAUSED, status.Observed(None, pod())).state == State.PAUSING
    assert derive(SlotState.PAUSED, status.Observed()).state == State.PAUSED
    deleting = pod()
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert derive(SlotState.LIVE, status.Observed(game_server(), deleting)).state == State.RESTARTING
    assert derive(SlotState.RELEASING, status.Observed()).state == State.UNINSTALLING


def test_the_states_shown_are_the_contracts() -> None:
    """status.State mirrors Instance.State (messages.py sets the field by name)."""
    assert {s.name: s.value for s in status.State} == dict(instance_pb2.Instance.State.items())


def test_instance_message_carries_disks_and_times() -> None:
    row = InstanceRow(namespace="games", template="sd-cpu", id=0, slot="LIVE", owner="alice", orphaned=False,
                      created_at=T0, updated_at=T0, state_changed_at=T0)
    claims = {"user-data-sd-cpu-0": {"metadata": {"uid": "u-1"}, "status": {"phase": "Bound"}}}
    view = derive(SlotState.LIVE, status.Observed(game_server(), pod()))
    message = messages.to_proto(REF.instance(0), row, view, gss(), claims)
    assert message.owner == "alice" and message.state == State.RUNNING
    assert message.accelerator.type == common_pb2.Accelerator.CPU
    disk = message.disks[0]
    assert (disk.claim_name, disk.claim_uid, disk.phase, disk.size) == ("user-data-sd-cpu-0", "u-1", "Bound", "50Gi")
    assert message.create_time.ToDatetime(tzinfo=UTC) == T0
    assert not message.HasField("last_access_time")


# -- invariants --------------------------------------------------------------------------------------------

def record(i: int, state: SlotState, owner: str | None, since: datetime = T0,
           changed: datetime | None = None) -> invariants.SlotRecord:
    return invariants.SlotRecord(i, state, owner, since, changed or since)


def snapshot(spec: Spec | None, slots: list[invariants.SlotRecord], claims: dict[str, datetime],
             pods: set[int] = frozenset(), now: datetime = T0 + timedelta(hours=1)) -> invariants.Snapshot:
    return invariants.Snapshot(REF, spec, {s.id: s for s in slots}, ["data"],
                               {n: invariants.Claim(n, t) for n, t in claims.items()}, frozenset(pods), 0, now)


def codes(snap: invariants.Snapshot) -> list[tuple[int, str]]:
    return [(f.id, f.code) for f in invariants.check(snap)]


def test_a_consistent_template_has_no_findings() -> None:
    slots = [record(0, SlotState.LIVE, "a"), record(1, SlotState.PAUSED, "b"), record(2, SlotState.FREE, None)]
    claims = {"data-sd-cpu-0": T0, "data-sd-cpu-1": T0}
    assert codes(snapshot(Spec.of(1, {1, 2}), slots, claims, {0})) == []


def test_each_invariant_is_reported() -> None:
    slots = [record(0, SlotState.LIVE, "a"), record(1, SlotState.PAUSED, "b", changed=T0 + timedelta(minutes=10)),
             record(2, SlotState.FREE, None), record(3, SlotState.LIVE, "c", since=T0 + timedelta(minutes=30))]
    claims = {"data-sd-cpu-0": T0, "data-sd-cpu-2": T0, "data-sd-cpu-3": T0}
    found = codes(snapshot(Spec.of(1, {1, 2, 6}), slots, claims, {0, 3}))
    assert (1, "PVC_MISSING") in found  # a paused instance lost its disk
    assert (2, "PVC_NOT_RELEASED") in found  # FREE but the disk is still there
    assert (3, "LIVE_MISMATCH") in found  # recorded LIVE, not live in (R, X)
    assert (3, "PVC_REUSED") in found  # its disk predates its owner
    assert (4, "HOLE") in found and (5, "HOLE") in found
    assert (6, "UNTRACKED_RESERVED") in found


def test_missing_template_and_owner_state_mismatch() -> None:
    bad = invariants.SlotRecord(0, SlotState.FREE, "x", T0, T0)
    assert codes(snapshot(None, [bad], {})) == [(-1, "TEMPLATE_MISSING"), (0, "OWNER_STATE")]


def test_a_live_instance_gets_a_grace_period_for_its_disk() -> None:
    young = record(0, SlotState.LIVE, "a", since=T0)
    assert codes(snapshot(Spec.of(1), [young], {}, now=T0 + timedelta(seconds=10))) == []
    assert codes(snapshot(Spec.of(1), [young], {}, now=T0 + timedelta(minutes=5))) == [(0, "PVC_MISSING")]


def test_a_paused_instance_owes_a_disk_once_it_was_live_for_the_grace() -> None:
    """Paused a second after its install (before the controller made its pod, bench/kill_storm.py): no disk was
    made and none is owed, however long it stays paused. Paused after the grace: its disk is owed."""
    early = record(0, SlotState.PAUSED, "a", since=T0, changed=T0 + timedelta(seconds=1))
    late = record(1, SlotState.PAUSED, "b", since=T0, changed=T0 + timedelta(minutes=3))
    assert codes(snapshot(Spec.of(0, {0, 1}), [early, late], {}, now=T0 + timedelta(hours=5))) == [(1, "PVC_MISSING")]


# -- access ------------------------------------------------------------------------------------------------

def row(slot: str, owner: str | None) -> InstanceRow:
    return InstanceRow(namespace="games", template="sd-cpu", id=0, slot=slot, owner=owner)


def test_owners_act_on_their_own_admins_on_any() -> None:
    alice, bob = Principal("alice"), Principal("bob")
    admin = Principal("root", admin=True)
    ref = REF.instance(0)
    assert access.check(alice, ref, row("LIVE", "alice")).owner == "alice"
    with pytest.raises(PermissionDenied):
        access.check(bob, ref, row("LIVE", "alice"))
    assert access.check(admin, ref, row("PAUSED", "alice"))
    with pytest.raises(NotFound):
        access.check(alice, ref, row("RELEASING", None))
    assert access.check(admin, ref, row("RELEASING", None))
    for who in (alice, admin):
        with pytest.raises(NotFound):
            access.check(who, ref, row("FREE", None))
        with pytest.raises(NotFound):
            access.check(who, ref, None)


def test_installing_for_someone_else_needs_admin() -> None:
    assert access.install_owner(Principal("alice"), "") == "alice"
    assert access.install_owner(Principal("root", admin=True), "bob") == "bob"
    with pytest.raises(PermissionDenied):
        access.install_owner(Principal("alice"), "bob")
    with pytest.raises(InvalidArgument):
        access.install_owner(Principal("service:template", kind="service", admin=True), "")


def test_not_ready_after_having_been_ready_is_not_ready_not_starting() -> None:
    starting = pod("Running", False, containerStatuses=[{"state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}}])
    starting["status"]["conditions"][0]["lastTransitionTime"] = "2026-01-01T00:00:01Z"
    assert derive(SlotState.LIVE, status.Observed(game_server(), starting)).state == State.STARTING
    stopped = pod("Running", False, containerStatuses=[{"state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}}])
    stopped["status"]["conditions"][0]["lastTransitionTime"] = "2026-01-01T00:09:00Z"
    assert derive(SlotState.LIVE, status.Observed(game_server(), stopped)).state == State.NOT_READY


def test_a_paused_pod_still_stopping_after_resume_is_resuming_not_restarting() -> None:
    from datetime import datetime

    stopping = pod()
    stopping["metadata"]["deletionTimestamp"] = "2026-11-28T12:00:00Z"
    resumed_at = datetime(2026, 11, 28, 12, 0, 5, tzinfo=UTC)
    view = status.derive(SlotState.LIVE, True, gss(), status.Observed(game_server(), stopping), 0, live_since=resumed_at)
    assert view.state == State.RESUMING
    restarted_later = status.derive(SlotState.LIVE, True, gss(), status.Observed(game_server(), stopping), 0,
                                    live_since=datetime(2026, 11, 28, 11, 0, tzinfo=UTC))
    assert restarted_later.state == State.RESTARTING


def test_the_grace_period_is_not_taken_for_a_later_delete() -> None:
    """deletionTimestamp is the end of the grace period: a pause at 12:00:00 with 30 s of grace shows
    12:00:30, and a resume at 12:00:02 must still read as RESUMING."""
    from datetime import datetime

    stopping = pod()
    stopping["metadata"]["deletionTimestamp"] = "2026-11-28T12:00:30Z"
    stopping["metadata"]["deletionGracePeriodSeconds"] = 30
    resumed_at = datetime(2026, 11, 28, 12, 0, 2, tzinfo=UTC)
    observed = status.Observed(game_server(), stopping)
    assert status.derive(SlotState.LIVE, True, gss(), observed, 0, live_since=resumed_at).state == State.RESUMING
    restarted = dict(stopping, metadata=dict(stopping["metadata"], deletionTimestamp="2026-11-28T12:00:33Z"))
    assert status.derive(SlotState.LIVE, True, gss(), status.Observed(game_server(), restarted), 0,
                         live_since=resumed_at).state == State.RESTARTING
