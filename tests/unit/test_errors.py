"""Pure checks of the request and error helpers."""
from __future__ import annotations

from google.protobuf import struct_pb2

from aigc_gateway.api.v1 import audit_pb2, template_pb2
from aigc_gateway.calls import nul_field


def test_nul_field_finds_the_path() -> None:
    assert nul_field(audit_pb2.ListAuditEventsRequest(actor="ok", action="a\x00b")) == "action"
    assert nul_field(audit_pb2.ListAuditEventsRequest(actor="fine")) is None
    obj = struct_pb2.Struct()
    obj.update({"metadata": {"name": "x\x00"}})
    request = template_pb2.CreateTemplateRequest(parent="namespaces/a", source=template_pb2.TemplateSource(object=obj))
    assert nul_field(request) == "source.object.fields[metadata].struct_value.fields[name].string_value"
    assert nul_field(template_pb2.CreateTemplateRequest(parent="namespaces/a\x00")) == "parent"
