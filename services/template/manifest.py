"""A GameServerSet manifest from a request: YAML or JSON text, or a protobuf Struct, into a plain dict.

Parsing never raises: problems come back as field violations so that
ValidateTemplate can report them together with every other problem.
Unknown fields are kept as they are; nothing here knows the GameServerSet schema.
"""
from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml
from google.protobuf import json_format, struct_pb2

from aigc_gateway.errors import Violation

Obj = dict[str, Any]


@dataclass
class Parsed:
    obj: Obj | None
    violations: list[Violation] = field(default_factory=list)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (a few lines of anchors can expand to gigabytes once serialised)
    and duplicate keys (PyYAML silently keeps the last one; kubectl refuses them)."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            # PyYAML's stubs leave Parser.peek_event unannotated (untyped_calls_exclude does not reach an
            # inherited method called on our subclass).
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError("while composing", None, "YAML aliases (*name) are not accepted",
                                       event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable keys are refused by the JSON round trip later
            if key in seen:
                raise yaml.MarkedYAMLError("while constructing a mapping", node.start_mark,
                                           f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"not valid YAML or JSON: {where}{problem}"


def parse_text(text: str, max_bytes: int, field_path: str = "source.manifest") -> Parsed:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return Parsed(None, [Violation(field_path, f"the manifest is {size} bytes; the limit is {max_bytes}",
                                       "MANIFEST_TOO_LARGE")])
    if not text.strip():
        return Parsed(None, [Violation(field_path, "the manifest is empty", "MANIFEST_EMPTY")])
    try:
        documents = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.YAMLError as exc:
        return Parsed(None, [Violation(field_path, _yaml_problem(exc), "MANIFEST_SYNTAX")])
    except RecursionError:
        return Parsed(None, [Violation(field_path, "the manifest is nested too deeply", "MANIFEST_SYNTAX")])
    if len(documents) != 1:
        return Parsed(None, [Violation(field_path, f"expected exactly one YAML document, found {len(documents)}",
                                       "MANIFEST_SYNTAX")])
    return _object(documents[0], field_path)


def parse_struct(struct: struct_pb2.Struct, max_bytes: int, field_path: str = "source.object") -> Parsed:
    size = struct.ByteSize()
    if size > max_bytes:
        return Parsed(None, [Violation(field_path, f"the manifest is {size} bytes; the limit is {max_bytes}",
                                       "MANIFEST_TOO_LARGE")])
    return _object(from_struct(struct), field_path)


def _object(value: Any, field_path: str) -> Parsed:
    if not isinstance(value, dict):
        return Parsed(None, [Violation(field_path, "the manifest must be a mapping (a GameServerSet object)",
                                       "MANIFEST_SYNTAX")])
    try:
        # Round-trip through JSON: YAML dates, sets or binary values have no JSON form and the apiserver
        # would refuse them anyway; this also turns every key into a string.
        return Parsed(json.loads(json.dumps(value, default=_refuse)))
    except (TypeError, ValueError) as exc:
        return Parsed(None, [Violation(field_path, f"the manifest holds a value JSON cannot carry: {exc}",
                                       "MANIFEST_SYNTAX")])


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} {value!r}; quote it to make it a string")


def from_struct(struct: struct_pb2.Struct) -> Obj:
    """A Struct as a dict, with integral numbers back as ints (Struct carries every number as a double,
    and `replicas: 0.0` is not an integer to the apiserver)."""
    obj: Obj = _ints(json_format.MessageToDict(struct))
    return obj


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def to_struct(obj: Obj) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(obj)
    return struct
