"""An id becomes FREE only once its disks are gone for good: the old pod gone too, the controller done.

The chaos bench (docs/chaos.md, `--release-wait 2`) once saw a FREE id keep a disk that the next owner then
mounted (PVC_REUSED). The mechanism, held here deterministically on the test bed's real controllers:

- the kubernetes.io/pvc-protection finalizer holds a PVC only while a *scheduled* pod uses it, so the disk of a
  pod still Pending without a node (an unbound disk under load; here a nodeSelector no node has) is gone as soon
  as it is deleted;
- until it has applied the write that reserved the id, the Advanced StatefulSet still counts the id, and for a
  Pending pod it makes missing PVCs again (`createMissingPersistentVolumeClaims`): a disk made after release
  "confirmed" the id's disks gone. The hold is a ValidatingAdmissionPolicy refusing updates of the template's
  Advanced StatefulSet, so kruise-game cannot pass the reserve on.

The old release freed the id as soon as the PVC read 404, with the pod still there.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.identity import Principal
from aigc_gateway.names import TemplateRef
from aigc_gateway.services.instance import faults
from aigc_gateway.services.instance.lifecycle import Lifecycle

from ..plugins.gateway import make_settings
from ..plugins.kube import Game, load_sample, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template, held, instance_overrides, wait_slot

pytestmark = pytest.mark.testbed

CLAIM = f"user-data-{SAMPLE}-0"


@asynccontextmanager
async def statefulset_held(game: Game, name: str) -> AsyncIterator[None]:
    """Refuse every update of the Advanced StatefulSet ``name`` in the test's namespace for the block."""
    adm = client.AdmissionregistrationV1Api(game.core.api_client)
    policy = f"aigc-test-hold-{game.namespace}"
    await adm.create_validating_admission_policy({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["apps.kruise.io"], "apiVersions": ["*"],
                                                         "operations": ["UPDATE"], "resources": ["statefulsets"]}]},
                 "validations": [{"expression": f"object.metadata.name != '{name}'",
                                  "message": "held by the test"}]}})
    await adm.create_validating_admission_policy_binding({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": game.namespace}}}}})
    try:
        async def refused() -> bool:  # the apiserver applies a new policy once its informer has it
            try:
                await game.custom.patch_namespaced_custom_object(
                    "apps.kruise.io", "v1beta1", game.namespace, "statefulsets", name,
                    {"metadata": {"annotations": {"aigc-gateway.test/probe": "1"}}},
                    _content_type="application/merge-patch+json")
            except ApiException as exc:
                return "held by the test" in (exc.body or "")
            return False
        await wait_for(refused, 30, what="the hold on the Advanced StatefulSet to be in force")
        yield
    finally:
        await adm.delete_validating_admission_policy_binding(policy)
        await adm.delete_validating_admission_policy(policy)
        await _nudge(game, name)


async def _nudge(game: Game, name: str) -> None:
    """Wake kruise-game's GameServerSet controller once the hold is gone. Its every refused update during the
    hold doubled the item's retry delay (controller-runtime's per-item back-off, 5 ms to 1,000 s), so after a
    long hold on a loaded machine its next try came later than the test's wait (a full run saw it). A change of
    the objects it watches queues the GameServerSet again at once; new writes for it find the hold gone."""
    async def touched() -> bool:
        try:
            for group, version, plural in (("apps.kruise.io", "v1beta1", "statefulsets"),
                                           ("game.kruise.io", "v1alpha1", "gameserversets")):
                await game.custom.patch_namespaced_custom_object(
                    group, version, game.namespace, plural, name,
                    {"metadata": {"annotations": {"aigc-gateway.test/nudge": "1"}}},
                    _content_type="application/merge-patch+json")
        except ApiException as exc:
            if "held by the test" in (exc.body or ""):
                return False  # the apiserver's policy informer has not seen the deletion yet
            raise
        return True
    await wait_for(touched, 30, what="the hold on the Advanced StatefulSet to be lifted")


async def test_an_id_stays_releasing_while_its_pending_pod_can_bring_its_disk_back(
        testbed: Testbed, game: Game, issuer, database_url, start_gateway, client_for, database: Database) -> None:
    template = load_sample(SAMPLE, testbed.domain, game.namespace)
    template["spec"]["gameServerTemplate"]["spec"]["nodeSelector"] = {"aigc-gateway.test/node": "none"}
    await game.create_gss(template)
    settings = make_settings(database_url, issuer, **instance_overrides(testbed, game.namespace,
                                                                        release_wait_seconds=2))
    gw = await start_gateway("instance", settings=settings)
    c = client_for(gw.channel("instance"))

    alice = await c.install("alice")
    assert alice.id == 0

    async def pending_with_disk() -> bool:
        pod = (await game.pods(SAMPLE)).get(0)
        return pod is not None and not pod.spec.node_name and CLAIM in await game.pvcs()
    await wait_for(pending_with_disk, 60, what="alice's pod Pending without a node, with its disk")
    alice_disk = (await game.pvcs())[CLAIM].metadata.uid

    async with statefulset_held(game, SAMPLE):
        gone = await c.uninstall("alice", alice.name)
        assert gone.state == State.UNINSTALLING
        # Her PVC was deleted and, unprotected, is gone; her pod is still there (the controller cannot scale it
        # away) and the StatefulSet may make the disk again for it at any moment: the id is not FREE.
        assert (await game.pods(SAMPLE)).get(0) is not None
        async with database.session() as session:
            assert (await session.get(InstanceRow, (c.namespace, SAMPLE, 0))).slot == "RELEASING"

    await wait_slot(database, c.namespace, 0, "FREE")  # the reconciler, once the pod and its disks are gone
    assert 0 not in await game.pods(SAMPLE) and CLAIM not in await game.pvcs()
    bob = await c.install("bob")
    assert bob.id == 0

    async def has_claim() -> bool:
        return CLAIM in await game.pvcs()
    await wait_for(has_claim, 60, what="bob's disk")
    assert (await game.pvcs())[CLAIM].metadata.uid != alice_disk
    report = await c.wait_consistent()  # no PVC_REUSED, no PVC_NOT_RELEASED
    assert report.templates_checked == 1



async def test_a_delete_answers_once_the_owner_is_removed_and_the_release_goes_on_after_the_answer(
        testbed: Testbed, game: Game, issuer, database_url, start_gateway, client_for, database: Database) -> None:
    """The default `release_wait_seconds: 0`: DeleteInstance answers UNINSTALLING without waiting for the disk,
    and the same process frees the id after the answer. The reconciler is kept out of it (one pass an hour, the
    first at start, before the install), so FREE here can only come from the delete's own follow-up."""
    await game.create_gss(load_sample(SAMPLE, testbed.domain, game.namespace))
    settings = make_settings(database_url, issuer, **instance_overrides(
        testbed, game.namespace, release_wait_seconds=0, reconcile_interval_seconds=3600))
    gw = await start_gateway("instance", settings=settings)
    c = client_for(gw.channel("instance"))

    alice = await c.install("alice")
    await wait_for(lambda: _has(game, CLAIM), 60, what="alice's disk")
    gone = await c.uninstall("alice", alice.name)
    assert (gone.state, gone.owner) == (State.UNINSTALLING, "alice")
    await wait_slot(database, c.namespace, alice.id, "FREE")
    assert CLAIM not in await game.pvcs() and alice.id not in await game.pods(SAMPLE)


async def _has(game: Game, claim: str) -> bool:
    return claim in await game.pvcs()


async def test_a_release_slowed_after_it_read_the_slot_never_deletes_the_next_owners_disk(
        testbed: Testbed, game: Game, database: Database, lifecycle: Lifecycle,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """docs/chaos.md's PVC_MISSING (a PAUSED instance without its disk after `kube-restart`), forced. Alice's
    delete reads her id RELEASING and is held there (`release.after_read`; in the full runs: its calls waiting
    for a restarting apiserver). Meanwhile another release (the reconciler's) frees the id and bob installs on
    it: his disk has alice's disk's name. Alice's release then goes on. It deleted bob's disk by name; bob's
    next pause would have left him PAUSED without it. It must leave bob's disk alone."""
    await create_template(game, testbed)
    ref = TemplateRef(game.namespace, SAMPLE)
    iref = ref.instance(int((await lifecycle.install(ref, "alice"))["row"]["id"]))
    assert iref.id == 0
    await wait_for(lambda: _has(game, CLAIM), 60, what="alice's disk")

    monkeypatch.setenv(faults.HOLD_ENV, "release.after_read")
    monkeypatch.setenv(faults.HOLD_DIR_ENV, str(tmp_path))
    alices: asyncio.Task[Any] = asyncio.create_task(lifecycle.uninstall(iref, Principal("alice")))
    await held(monkeypatch, tmp_path, "release.after_read", alices)

    await wait_for(lambda: lifecycle.release(iref, 5), 120, what="id 0 freed by another release")
    assert (await lifecycle.install(ref, "bob"))["row"]["id"] == 0
    await wait_for(lambda: _has(game, CLAIM), 60, what="bob's disk")
    bobs_disk = (await game.pvcs())[CLAIM].metadata.uid

    (tmp_path / "release.after_read.release").touch()
    effect, freed = await alices
    assert (effect["row"]["owner"], freed) == ("alice", False)  # her answer; the id was freed by another

    disk = (await game.pvcs())[CLAIM]
    assert (disk.metadata.uid, disk.metadata.deletion_timestamp) == (bobs_disk, None)
    async with database.session() as session:
        row = await session.get(InstanceRow, (game.namespace, SAMPLE, 0))
        assert (row.slot, row.owner) == ("LIVE", "bob")
