"""ValidateTemplate answers OK with `valid=false` (its documented contract); CreateTemplate must refuse
exactly the same manifests with exactly the same violations, and write nothing. Checked on every invalid
manifest of the validation table, on a real template server and real PostgreSQL (no cluster: an invalid
manifest must be refused before any Kubernetes call, so the server's kubeconfig does not even exist).
The same comparison for UpdateTemplate runs on the test bed (test_templates_testbed.py)."""
from __future__ import annotations

import json

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aigc_gateway.api.v1 import template_pb2

from .conftest import source_text
from .samples import variant
from .test_validation import BAD

Violations = list[tuple[str, str, str]]


def refusal(err: grpc.aio.AioRpcError) -> Violations:
    out: Violations = []
    for detail in rpc_status.from_call(err).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [(v.field, v.reason, v.description) for v in bad.field_violations]
    return out


def reported(reply: template_pb2.ValidateTemplateResponse) -> Violations:
    return [(v.field, v.reason, v.description) for v in reply.violations]


TEXTS = [  # manifests that cannot even be read, as text
    ("bad YAML", "kind: [\n"),
    ("empty", ""),
    ("a list", "- a\n- b\n"),
]


@pytest.fixture
async def api(template_api):
    # The table's policy: namespaces default and aigc, domain aigc.test.
    return await template_api("default", namespaces=["default", "aigc"], domain="aigc.test")


async def _compare(api, text: str, case: str) -> Violations:
    source = source_text(text)
    validated = await api.stub.ValidateTemplate(template_pb2.ValidateTemplateRequest(parent=api.parent,
                                                                                     source=source),
                                                metadata=api.admin)
    assert not validated.valid and validated.violations, case
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.CreateTemplate(template_pb2.CreateTemplateRequest(parent=api.parent, source=source),
                                      metadata=api.admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err.value.details())
    assert refusal(err.value) == reported(validated), case
    return reported(validated)


@pytest.mark.parametrize("case,mutate,path,reason", BAD, ids=[b[0] for b in BAD])
async def test_create_refuses_with_exactly_the_violations_validate_reports(api, case, mutate, path,
                                                                           reason) -> None:
    found = await _compare(api, json.dumps(variant(mutate)), case)
    assert (path, reason) in [(f, r) for f, r, _ in found]


@pytest.mark.parametrize("case,text", TEXTS, ids=[t[0] for t in TEXTS])
async def test_unreadable_manifests_are_refused_alike(api, case: str, text: str) -> None:
    assert [f for f, _, _ in await _compare(api, text, case)] == ["source.manifest"]
