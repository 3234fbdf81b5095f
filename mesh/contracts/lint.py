"""Rules every contract under `protos/` keeps: buf's, then the project's own.

`buf lint` (rules in `buf.yaml`: STANDARD + COMMENTS) checks naming, versioned
packages, enum zero values and that every element is documented (the
comments are the API docs: they reach the generated `.pyi` and reflection).
Comment rules need source info, so `lint_tree` builds the set with it.

What buf does not know stays here:

- package: `shop.<name>.v<N>`, one major version per package.
- http: every RPC of a public service (no `option (shop.api.v1.internal)`)
  has a `google.api.http` binding under `/api/v<N>/`, N its package's major;
  internal services (payments, inventory's ReservationService, the test
  PingService) have none, so the edge can never expose them by accident.
- no-float: no `float`/`double` (nor their wrapper types) anywhere: money is
  integer minor units plus a currency (shop.common.v1.Money), and nothing
  else in the shop needs binary floating point either.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

from mesh.contracts import buf, codegen
from mesh.contracts import descriptors as d

FieldProto = descriptor_pb2.FieldDescriptorProto

_PACKAGE = re.compile(r"^shop\.[a-z][a-z0-9_]*\.v(?P<major>[1-9][0-9]*)$")
_FLOATS = {FieldProto.TYPE_FLOAT, FieldProto.TYPE_DOUBLE}
_FLOAT_WRAPPERS = {".google.protobuf.FloatValue", ".google.protobuf.DoubleValue"}


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str  # package | http | no-float | buf <RULE>
    element: str  # "shop.users.v1.User field 2 'email'" (buf: "<file>:<line>")
    message: str

    def __str__(self) -> str:
        return f"{self.element}: {self.message} [{self.rule}]"


def lint(fds: descriptor_pb2.FileDescriptorSet, files: Collection[str]) -> list[Violation]:
    """The project's own rules over the contract `files` (names as in the set) of `fds`."""
    out: list[Violation] = []
    for f in fds.file:
        if f.name in files:
            out.extend(_file(f))
    return out


def lint_tree(proto_root: Path = codegen.PROTO_ROOT) -> list[Violation]:
    """Compile the contracts under proto_root with source info; buf's findings, then ours."""
    fds = codegen.build_descriptor_set(proto_root, source_info=True)
    return check(fds, codegen.proto_files(proto_root))


class MissingSourceInfo(ValueError):
    """The descriptor set has no comments: buf's comment rules would pass silently."""


def check(fds: descriptor_pb2.FileDescriptorSet, files: Collection[str]) -> list[Violation]:
    """`buf lint` and the project's rules over `files` of `fds` (built with source info)."""
    for f in fds.file:
        if f.name in files and not f.HasField("source_code_info"):
            raise MissingSourceInfo(f"{f.name}: no source info (protoc --include_source_info)")
    found = [
        Violation(f"buf {f.rule}", f"{f.path}:{f.line}" if f.line else f.path, f.message)
        for f in buf.lint(fds, files)
    ]
    return [*found, *lint(fds, files)]


def _file(f: descriptor_pb2.FileDescriptorProto) -> Iterator[Violation]:
    package = _PACKAGE.match(f.package)
    if not package:
        yield Violation(
            "package", f"package {f.package or '(none)'}", "must be shop.<name>.v<N> (versioned)"
        )
    major = int(package["major"]) if package else None

    for s in f.service:
        name = f"{f.package}.{s.name}"
        internal = d.is_internal(s)
        for m in s.method:
            yield from _http(f"{name} rpc {m.name}", m, internal, major)

    for msg in d.messages(f):
        for field in msg.proto.field:
            yield from _no_float(field, f"{msg.full_name} field {field.number} '{field.name}'")
        for ext in msg.proto.extension:
            yield from _no_float(ext, f"extension {msg.full_name}.{ext.name}")
    for ext in f.extension:
        yield from _no_float(ext, f"extension {f.package}.{ext.name}")


def _http(
    element: str, method: descriptor_pb2.MethodDescriptorProto, internal: bool, major: int | None
) -> Iterator[Violation]:
    rules = d.http_rules(method)
    if internal:
        for rule in rules:
            verb, path = d.binding(rule)
            yield Violation(
                "http", element, f"internal service has HTTP binding {verb} {path}: remove it"
            )
        return
    if not rules:
        yield Violation("http", element, "public RPC has no google.api.http binding")
        return
    if major is None:
        return  # unversioned package: reported by the package rule
    for rule in rules:
        verb, path = d.binding(rule)
        if not path.startswith(f"/api/v{major}/") and path != f"/api/v{major}":
            yield Violation(
                "http", element, f"HTTP binding {verb} {path} is not under /api/v{major}/"
            )


def _no_float(field: FieldProto, element: str) -> Iterator[Violation]:
    if field.type in _FLOATS or field.type_name in _FLOAT_WRAPPERS:
        yield Violation(
            "no-float",
            element,
            f"is {d.type_name(field)}: money and amounts are integers "
            "(shop.common.v1.Money: minor units + currency), never floating point",
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="lint the contracts under protos/")
    parser.add_argument("--proto-root", type=Path, default=codegen.PROTO_ROOT)
    args = parser.parse_args(argv)
    violations = lint_tree(args.proto_root)
    for v in violations:
        print(v)
    print(f"{len(codegen.proto_files(args.proto_root))} files, {len(violations)} violations")
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
