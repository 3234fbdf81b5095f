"""Walk a FileDescriptorSet: the shared vocabulary of the breaking check and the lint.

Both need every message and enum of a file under its full name, nested ones
included, with the `source_code_info` path that locates it (for comments).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from mesh.api.options import method_options

FieldProto = descriptor_pb2.FieldDescriptorProto

# Field numbers of descriptor.proto, as used in SourceCodeInfo.Location.path.
FILE_MESSAGE = 4
FILE_ENUM = 5
FILE_SERVICE = 6
FILE_EXTENSION = 7
MESSAGE_FIELD = 2
MESSAGE_NESTED = 3
MESSAGE_ENUM = 4
MESSAGE_EXTENSION = 6
MESSAGE_ONEOF = 8
ENUM_VALUE = 2
SERVICE_METHOD = 2

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
    path: tuple[int, ...]  # where SourceCodeInfo locates it

    @property
    def is_map_entry(self) -> bool:
        """protoc's synthetic `XxxEntry` of a map field: not written by anyone."""
        return self.proto.options.map_entry


@dataclass(frozen=True, slots=True)
class Enum:
    full_name: str
    proto: descriptor_pb2.EnumDescriptorProto
    file: str
    path: tuple[int, ...]


def messages(f: descriptor_pb2.FileDescriptorProto) -> Iterator[Message]:
    """Every message of a file, nested ones after their parent."""

    def walk(
        protos: Iterable[descriptor_pb2.DescriptorProto], scope: str, path: tuple[int, ...]
    ) -> Iterator[Message]:
        for i, m in enumerate(protos):
            here = (*path, i)
            yield Message(f"{scope}.{m.name}", m, f.name, here)
            yield from walk(m.nested_type, f"{scope}.{m.name}", (*here, MESSAGE_NESTED))

    yield from walk(f.message_type, f.package, (FILE_MESSAGE,))


def enums(f: descriptor_pb2.FileDescriptorProto) -> Iterator[Enum]:
    """Every enum of a file: top-level ones, then those nested in messages."""
    for i, e in enumerate(f.enum_type):
        yield Enum(f"{f.package}.{e.name}", e, f.name, (FILE_ENUM, i))
    for m in messages(f):
        for i, e in enumerate(m.proto.enum_type):
            yield Enum(f"{m.full_name}.{e.name}", e, f.name, (*m.path, MESSAGE_ENUM, i))


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


def real_oneof(message: descriptor_pb2.DescriptorProto, field: FieldProto) -> str | None:
    """Name of the oneof a field belongs to, ignoring proto3 `optional`'s synthetic one."""
    if not field.HasField("oneof_index") or field.proto3_optional:
        return None
    return message.oneof_decl[field.oneof_index].name


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
