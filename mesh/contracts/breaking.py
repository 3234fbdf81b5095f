"""Breaking-change detection: released contracts (the baseline) against today's.

A released package may grow (new messages, fields, enum values, RPCs,
bindings) but nothing a client built against the baseline relies on may
change; a change like that needs a new major package (`shop.orders.v2`)
beside the old one.

`buf breaking` (category FILE, see `buf.yaml`) checks the wire, JSON and the
generated Python: numbers, names, types, cardinality, oneofs, streaming,
files. `compare` keeps only what buf does not know, because it lives in
custom options buf treats as opaque:

- an HTTP binding (`google.api.http`) removed or changed: REST clients break;
- a public service that became internal: the edge stops serving it;
- a custom option (extension, e.g. `internal`) renumbered, retargeted or
  retyped: the options already compiled into clients stop meaning the same.

`check` runs both. `compare` is pure: descriptor sets in, a list of
`Breakage` out. Recording and loading the baseline lives in
`mesh.contracts.baseline`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import descriptor_pb2

from mesh.api import options
from mesh.contracts import buf
from mesh.contracts import descriptors as d

FileProto = descriptor_pb2.FileDescriptorProto


@dataclass(frozen=True, slots=True)
class Breakage:
    """One change that breaks clients of a released package (a rule buf lacks)."""

    package: str  # shop.users.v1
    element: str  # "shop.users.v1.UserService rpc GetUser"
    problem: str  # "HTTP binding GET /api/v1/users/{user_id} removed"

    def __str__(self) -> str:
        return f"{self.element}: {self.problem}"


def check(
    baseline: Mapping[str, descriptor_pb2.FileDescriptorSet],
    current: descriptor_pb2.FileDescriptorSet,
) -> list[str]:
    """Every breaking change, buf's first then the project's, one line each."""
    return [*map(str, buf.breaking(baseline, current)), *map(str, compare(baseline, current))]


def compare(
    baseline: Mapping[str, descriptor_pb2.FileDescriptorSet],
    current: descriptor_pb2.FileDescriptorSet,
) -> list[Breakage]:
    """The project's breaking rules over the released packages, in a stable order.

    `baseline` maps each released package to its descriptor set (its files
    and their imports); `current` holds today's files. A package gone from
    `current` is buf's finding (its files were deleted), not repeated here.
    """
    now = d.by_package(current.file)
    out: list[Breakage] = []
    for package in sorted(baseline):
        old = [f for f in baseline[package].file if f.package == package]
        new = now.get(package)
        if new:
            out.extend(Breakage(package, e, p) for e, p in _package(old, new))
    return out


Finding = tuple[str, str]  # (element, problem)


def _package(old: Sequence[FileProto], new: Sequence[FileProto]) -> Iterator[Finding]:
    yield from _services(old, new)
    yield from _extensions(old, new)


def _services(old: Sequence[FileProto], new: Sequence[FileProto]) -> Iterator[Finding]:
    current = {f"{f.package}.{s.name}": s for f in new for s in f.service}
    for f in old:
        for s in f.service:
            name = f"{f.package}.{s.name}"
            now = current.get(name)
            if now is None:
                continue  # removed: buf's SERVICE_NO_DELETE
            if options.is_internal(now) and not options.is_internal(s):
                yield f"service {name}", "became internal (the edge stops serving it)"
            methods = {m.name: m for m in now.method}
            for m in s.method:
                if m.name not in methods:
                    continue  # removed: buf's RPC_NO_DELETE
                kept = {d.binding(r) for r in d.http_rules(methods[m.name])}
                for verb, path in (d.binding(r) for r in d.http_rules(m)):
                    if (verb, path) not in kept:
                        yield f"{name} rpc {m.name}", f"HTTP binding {verb} {path} removed"


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
