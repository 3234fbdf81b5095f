"""Walk a FileDescriptorSet: the shared vocabulary of the project's contract rules.

buf checks names, comments and the wire (mesh.contracts.buf); what is left here
reads `google.api.http` (buf treats custom options as opaque; the mesh's own
options are read by `mesh.api.options`) and walks messages under their full
names, nested ones included.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from mesh.api.options import method_options

FieldProto = descriptor_pb2.FieldDescriptorProto

_SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in FieldProto.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}


@dataclass(frozen=True, slots=True)
class Message:
    full_name: str  # shop.orders.v1.Order
    proto: descriptor_pb2.DescriptorProto
    file: str  # shop/orders/v1/orders.proto

    @property
    def is_map_entry(self) -> bool:
        """protoc's synthetic `XxxEntry` of a map field: not written by anyone."""
        return self.proto.options.map_entry


def messages(f: descriptor_pb2.FileDescriptorProto) -> Iterator[Message]:
    """Every message of a file, nested ones after their parent."""

    def walk(protos: Iterable[descriptor_pb2.DescriptorProto], scope: str) -> Iterator[Message]:
        for m in protos:
            yield Message(f"{scope}.{m.name}", m, f.name)
            yield from walk(m.nested_type, f"{scope}.{m.name}")

    yield from walk(f.message_type, f.package)


def by_package(
    files: Iterable[descriptor_pb2.FileDescriptorProto],
) -> dict[str, list[descriptor_pb2.FileDescriptorProto]]:
    """Files grouped by proto package, in their original order."""
    out: dict[str, list[descriptor_pb2.FileDescriptorProto]] = {}
    for f in files:
        out.setdefault(f.package, []).append(f)
    return out


def type_name(field: FieldProto) -> str:
    """`int64`, `string`, or the full name of a message or enum (no leading dot)."""
    if field.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM, FieldProto.TYPE_GROUP):
        return field.type_name.lstrip(".")
    return _SCALARS[field.type]


def http_rules(method: descriptor_pb2.MethodDescriptorProto) -> list[http_pb2.HttpRule]:
    """The method's `google.api.http` rule and its additional bindings (none: [])."""
    # Parsed again: a set read before annotations_pb2 was imported keeps it unknown.
    options = method_options(method)
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule = options.Extensions[annotations_pb2.http]
    return [rule, *rule.additional_bindings]


def binding(rule: http_pb2.HttpRule) -> tuple[str, str]:
    """(VERB, path) of one rule: ("GET", "/api/v1/users/{user_id}")."""
    verb = rule.WhichOneof("pattern")
    if verb == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    if verb is None:
        return "", ""
    return verb.upper(), str(getattr(rule, verb))
