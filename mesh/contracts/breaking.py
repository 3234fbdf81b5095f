"""Breaking-change detection: released contracts (the baseline) against today's.

In the spirit of `buf breaking`, package by package. A released package may
grow (new messages, fields, enum values, RPCs, bindings) but nothing a client
built against the baseline relies on may change: not the wire (numbers,
types, cardinality, oneofs, streaming), not JSON/REST (field and enum value
names, HTTP bindings), not the generated Python (files, type names). A change
like that needs a new major package (`shop.orders.v2`) beside the old one.

`compare` is pure: descriptor sets in, a list of `Breakage` out. Recording
and loading the baseline lives in `mesh.contracts.baseline`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import descriptor_pb2

from mesh.api import options
from mesh.contracts import descriptors as d

FileProto = descriptor_pb2.FileDescriptorProto
FieldProto = descriptor_pb2.FieldDescriptorProto


@dataclass(frozen=True, slots=True)
class Breakage:
    """One change that breaks clients of a released package."""

    package: str  # shop.orders.v1
    element: str  # "shop.orders.v1.Order field 4 'total_cents'"
    problem: str  # "type changed from int64 to string"

    def __str__(self) -> str:
        return f"{self.element}: {self.problem}"


def compare(
    baseline: Mapping[str, descriptor_pb2.FileDescriptorSet],
    current: descriptor_pb2.FileDescriptorSet,
) -> list[Breakage]:
    """Every breaking change of the released packages, in a stable order.

    `baseline` maps each released package to its descriptor set (its files
    and their imports); `current` holds today's files (imports may be there
    too: only the released packages are looked at).
    """
    now = d.by_package(current.file)
    out: list[Breakage] = []
    for package in sorted(baseline):
        old = [f for f in baseline[package].file if f.package == package]
        new = now.get(package)
        if not new:
            out.append(Breakage(package, f"package {package}", "removed"))
            continue
        out.extend(Breakage(package, e, p) for e, p in _package(old, new))
    return out


Finding = tuple[str, str]  # (element, problem)


def _package(old: Sequence[FileProto], new: Sequence[FileProto]) -> Iterator[Finding]:
    new_files = {f.name for f in new}
    for f in old:
        if f.name not in new_files:
            # Generated Python modules are per file: `orders_pb2` would vanish.
            yield f"file {f.name}", "removed (its generated module goes with it)"
    yield from _messages(old, new)
    yield from _enums(old, new)
    yield from _services(old, new)
    yield from _extensions(old, new)


def _moved(kind: str, name: str, old_file: str, new_file: str) -> Iterator[Finding]:
    if old_file != new_file:
        # Same wire format, but `from shop.x.v1 import a_pb2` no longer finds it.
        yield f"{kind} {name}", f"moved from {old_file} to {new_file}"


# Messages and fields


def _messages(old: Sequence[FileProto], new: Sequence[FileProto]) -> Iterator[Finding]:
    current = {m.full_name: m for f in new for m in d.messages(f)}
    for f in old:
        for m in d.messages(f):
            now = current.get(m.full_name)
            if now is None:
                yield f"message {m.full_name}", "removed"
                continue
            yield from _moved("message", m.full_name, m.file, now.file)
            yield from _fields(m.full_name, m.proto, now.proto)


def _fields(
    name: str, old: descriptor_pb2.DescriptorProto, new: descriptor_pb2.DescriptorProto
) -> Iterator[Finding]:
    by_number = {f.number: f for f in new.field}
    by_name = {f.name: f for f in new.field}
    for f in old.field:
        element = f"{name} field {f.number} '{f.name}'"
        now = by_number.get(f.number)
        if now is None:
            moved = by_name.get(f.name)
            if moved is not None:
                yield element, f"renumbered from {f.number} to {moved.number}"
            else:
                yield element, "removed"
            continue
        yield from _field(element, old, f, new, now)


def _field(
    element: str,
    old_message: descriptor_pb2.DescriptorProto,
    old: FieldProto,
    new_message: descriptor_pb2.DescriptorProto,
    new: FieldProto,
) -> Iterator[Finding]:
    if old.name != new.name:
        # Same number keeps the binary wire working, but JSON, REST
        # transcoding and generated attribute names all use the name.
        yield element, f"renamed to '{new.name}'"
    elif old.HasField("json_name") and new.HasField("json_name") and old.json_name != new.json_name:
        yield element, f"JSON name changed from '{old.json_name}' to '{new.json_name}'"
    if d.type_name(old) != d.type_name(new):
        yield element, f"type changed from {d.type_name(old)} to {d.type_name(new)}"
    if _cardinality(old) != _cardinality(new):
        yield element, f"cardinality changed from {_cardinality(old)} to {_cardinality(new)}"
    was, now = d.real_oneof(old_message, old), d.real_oneof(new_message, new)
    if was != now:
        yield element, f"oneof membership changed from {_oneof(was)} to {_oneof(now)}"


def _cardinality(field: FieldProto) -> str:
    if field.label == FieldProto.LABEL_REPEATED:
        return "repeated"
    if field.label == FieldProto.LABEL_REQUIRED:
        return "required"
    # proto3 `optional` tracks presence: generated code grows HasField for it.
    return "optional" if field.proto3_optional else "singular"


def _oneof(name: str | None) -> str:
    return f"oneof '{name}'" if name else "no oneof"


# Enums


def _enums(old: Sequence[FileProto], new: Sequence[FileProto]) -> Iterator[Finding]:
    current = {e.full_name: e for f in new for e in d.enums(f)}
    for f in old:
        for e in d.enums(f):
            now = current.get(e.full_name)
            if now is None:
                yield f"enum {e.full_name}", "removed"
                continue
            yield from _moved("enum", e.full_name, e.file, now.file)
            yield from _values(e.full_name, e.proto, now.proto)


def _values(
    name: str, old: descriptor_pb2.EnumDescriptorProto, new: descriptor_pb2.EnumDescriptorProto
) -> Iterator[Finding]:
    by_name = {v.name: v.number for v in new.value}
    by_number: dict[int, list[str]] = {}
    for v in new.value:
        by_number.setdefault(v.number, []).append(v.name)
    for v in old.value:
        element = f"{name} value {v.number} '{v.name}'"
        if v.name in by_name:
            if by_name[v.name] != v.number:
                yield element, f"renumbered from {v.number} to {by_name[v.name]}"
        elif v.number in by_number:
            # JSON carries enum values by name: old clients cannot read the new one.
            renamed = " or ".join(f"'{n}'" for n in by_number[v.number])
            yield element, f"renamed to {renamed}"
        else:
            yield element, "removed"


# Services and RPCs


def _services(old: Sequence[FileProto], new: Sequence[FileProto]) -> Iterator[Finding]:
    current = {f"{f.package}.{s.name}": (f.name, s) for f in new for s in f.service}
    for f in old:
        for s in f.service:
            name = f"{f.package}.{s.name}"
            if name not in current:
                yield f"service {name}", "removed"
                continue
            new_file, now = current[name]
            yield from _moved("service", name, f.name, new_file)
            if options.is_internal(now) and not options.is_internal(s):
                yield f"service {name}", "became internal (the edge stops serving it)"
            yield from _methods(name, s, now)


def _methods(
    service: str,
    old: descriptor_pb2.ServiceDescriptorProto,
    new: descriptor_pb2.ServiceDescriptorProto,
) -> Iterator[Finding]:
    current = {m.name: m for m in new.method}
    for m in old.method:
        element = f"{service} rpc {m.name}"
        now = current.get(m.name)
        if now is None:
            yield element, "removed"
            continue
        for side, was, becomes in (
            ("request", m.input_type, now.input_type),
            ("response", m.output_type, now.output_type),
        ):
            if was != becomes:
                yield (
                    element,
                    f"{side} type changed from {was.lstrip('.')} to {becomes.lstrip('.')}",
                )
        for side, was_stream, is_stream in (
            ("request", m.client_streaming, now.client_streaming),
            ("response", m.server_streaming, now.server_streaming),
        ):
            if was_stream != is_stream:
                yield (
                    element,
                    f"{side} streaming changed from {_arity(was_stream)} to {_arity(is_stream)}",
                )
        kept = {d.binding(r) for r in d.http_rules(now)}
        for verb, path in (d.binding(r) for r in d.http_rules(m)):
            if (verb, path) not in kept:
                yield element, f"HTTP binding {verb} {path} removed"


def _arity(streaming: bool) -> str:
    return "stream" if streaming else "single message"


# Extensions (custom options such as mesh.api.v1.internal)


def _extensions(old: Sequence[FileProto], new: Sequence[FileProto]) -> Iterator[Finding]:
    current = {f"{f.package}.{x.name}": x for f in new for x in f.extension}
    for f in old:
        for x in f.extension:
            name = f"{f.package}.{x.name}"
            element = f"extension {name}"
            now = current.get(name)
            if now is None:
                yield element, "removed"
                continue
            if now.number != x.number:
                yield element, f"renumbered from {x.number} to {now.number}"
            if now.extendee != x.extendee:
                yield (
                    element,
                    f"extendee changed from {x.extendee.lstrip('.')} to {now.extendee.lstrip('.')}",
                )
            if d.type_name(now) != d.type_name(x):
                yield element, f"type changed from {d.type_name(x)} to {d.type_name(now)}"
