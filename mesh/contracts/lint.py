"""Rules every contract under `protos/` keeps.

- package: `<org>.<name>.v<N>`, one major version per package.
- documented: the package statement, every service, RPC, message, field,
  oneof, enum, enum value and extension has a leading comment. The comments
  are the API docs (they reach the generated `.pyi` and reflection).
- http: every RPC of a public service (no `option (mesh.api.v1.internal)`)
  has a `google.api.http` binding under `/api/v<N>/`, N its package's major;
  internal services (payments, inventory's ReservationService, the test
  PingService) have none, so the edge can never expose them by accident.
- policy: every RPC of an internal service names its callers (its own
  `option (mesh.api.v1.callers)` or the service's `default_callers`); every
  RPC of a public service declares its end-user auth (`mesh.api.v1.auth`),
  and ACCESS_ROLES names at least one role. Nothing is reachable by default
  without someone having said who may reach it.
- naming: fields and oneofs lower_snake_case; messages, enums, services and
  RPCs PascalCase; enum values UPPER_SNAKE_CASE prefixed by their enum's
  name, the zero value `<PREFIX>_UNSPECIFIED` (protobuf style guide).

A project adds its own rules (`rules=`: functions of one file returning
violations); the shop's live in `services/tools/contract_lint.py`, which is what
`make lint` runs.

Documentation needs source info: lint a set built with `--include_source_info`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

from mesh.api import options
from mesh.contracts import codegen
from mesh.contracts import descriptors as d

FieldProto = descriptor_pb2.FieldDescriptorProto

_PACKAGE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\.v(?P<major>[1-9][0-9]*)$")
_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_PASCAL = re.compile(r"^[A-Z][a-zA-Z0-9]*$")
_UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
_FILE_PACKAGE = 2  # FileDescriptorProto.package, for the package statement's comment


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str  # package | documented | http | policy | naming | a project rule's name
    element: str  # "shop.users.v1.User field 2 'email'"
    message: str

    def __str__(self) -> str:
        return f"{self.element}: {self.message} [{self.rule}]"


class MissingSourceInfo(ValueError):
    """The descriptor set has no comments to check: build it with source info."""


# A project's own rule: the violations of one contract file.
FileRule = Callable[[descriptor_pb2.FileDescriptorProto], Iterable[Violation]]


def lint(
    fds: descriptor_pb2.FileDescriptorSet,
    files: Collection[str],
    rules: Sequence[FileRule] = (),
) -> list[Violation]:
    """Every violation in the contract `files` (names as in the set) of `fds`: the
    mesh's rules, then each of `rules`."""
    out: list[Violation] = []
    for f in fds.file:
        if f.name in files:
            out.extend(_file(f))
            for rule in rules:
                out.extend(rule(f))
    return out


def lint_tree(
    proto_root: Path = codegen.PROTO_ROOT, rules: Sequence[FileRule] = ()
) -> list[Violation]:
    """Compile the contracts under proto_root with source info and lint them."""
    fds = codegen.build_descriptor_set(proto_root, source_info=True)
    return lint(fds, codegen.proto_files(proto_root), rules)


def _file(f: descriptor_pb2.FileDescriptorProto) -> Iterator[Violation]:
    if not f.HasField("source_code_info"):
        raise MissingSourceInfo(f"{f.name}: no source info (protoc --include_source_info)")
    comments = {
        tuple(loc.path): loc.leading_comments
        for loc in f.source_code_info.location
        if loc.leading_comments.strip()
    }

    def undocumented(path: tuple[int, ...], element: str) -> Iterator[Violation]:
        if path not in comments:
            yield Violation("documented", element, "has no leading comment")

    package = _PACKAGE.match(f.package)
    if not package:
        yield Violation(
            "package", f"package {f.package or '(none)'}", "must be <org>.<name>.v<N> (versioned)"
        )
    yield from undocumented((_FILE_PACKAGE,), f"package {f.package} in {f.name}")
    major = int(package["major"]) if package else None

    for i, s in enumerate(f.service):
        name = f"{f.package}.{s.name}"
        yield from undocumented((d.FILE_SERVICE, i), f"service {name}")
        yield from _pascal(s.name, f"service {name}")
        internal = options.is_internal(s)
        for j, m in enumerate(s.method):
            element = f"{name} rpc {m.name}"
            yield from undocumented((d.FILE_SERVICE, i, d.SERVICE_METHOD, j), element)
            yield from _pascal(m.name, element)
            yield from _http(element, m, internal, major)
            yield from _policy(element, s, m, internal)

    for msg in d.messages(f):
        if msg.is_map_entry:
            continue  # written by protoc for a map field, documented there
        yield from undocumented(msg.path, f"message {msg.full_name}")
        yield from _pascal(msg.proto.name, f"message {msg.full_name}")
        for k, field in enumerate(msg.proto.field):
            element = f"{msg.full_name} field {field.number} '{field.name}'"
            yield from undocumented((*msg.path, d.MESSAGE_FIELD, k), element)
            yield from _field(field, element)
        for k, oneof in enumerate(msg.proto.oneof_decl):
            if any(x.proto3_optional and x.oneof_index == k for x in msg.proto.field):
                continue  # synthetic oneof of a proto3 `optional` field
            element = f"{msg.full_name} oneof '{oneof.name}'"
            yield from undocumented((*msg.path, d.MESSAGE_ONEOF, k), element)
            if not _SNAKE.match(oneof.name):
                yield Violation("naming", element, "oneof names are lower_snake_case")
        for k, ext in enumerate(msg.proto.extension):
            element = f"extension {msg.full_name}.{ext.name}"
            yield from undocumented((*msg.path, d.MESSAGE_EXTENSION, k), element)
            yield from _field(ext, element)

    for i, ext in enumerate(f.extension):
        element = f"extension {f.package}.{ext.name}"
        yield from undocumented((d.FILE_EXTENSION, i), element)
        yield from _field(ext, element)

    for e in d.enums(f):
        yield from undocumented(e.path, f"enum {e.full_name}")
        yield from _pascal(e.proto.name, f"enum {e.full_name}")
        prefix = _upper_snake(e.proto.name) + "_"
        for k, v in enumerate(e.proto.value):
            element = f"{e.full_name} value {v.number} '{v.name}'"
            yield from undocumented((*e.path, d.ENUM_VALUE, k), element)
            if not _UPPER_SNAKE.match(v.name) or not v.name.startswith(prefix):
                yield Violation("naming", element, f"enum values are UPPER_SNAKE_CASE, {prefix}*")
            if v.number == 0 and v.name != f"{prefix}UNSPECIFIED":
                yield Violation("naming", element, f"the zero value is {prefix}UNSPECIFIED")


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


def _policy(
    element: str,
    service: descriptor_pb2.ServiceDescriptorProto,
    method: descriptor_pb2.MethodDescriptorProto,
    internal: bool,
) -> Iterator[Violation]:
    if internal:
        if options.callers_of(method, service) is None:
            yield Violation(
                "policy",
                element,
                "internal RPC names no callers: add option (mesh.api.v1.callers) "
                "or the service's (mesh.api.v1.default_callers)",
            )
        return
    auth = options.auth_of(method)
    if auth is None:
        yield Violation(
            "policy",
            element,
            "public RPC declares no end-user auth: add option (mesh.api.v1.auth)",
        )
    elif auth.access is options.Access.ROLES and not auth.roles:
        yield Violation("policy", element, "ACCESS_ROLES names no roles")


def _field(field: FieldProto, element: str) -> Iterator[Violation]:
    if not _SNAKE.match(field.name):
        yield Violation("naming", element, "field names are lower_snake_case")


def _pascal(name: str, element: str) -> Iterator[Violation]:
    if not _PASCAL.match(name):
        yield Violation("naming", element, "names of types, services and RPCs are PascalCase")


def _upper_snake(name: str) -> str:
    """OrderStatus -> ORDER_STATUS."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def main(argv: Sequence[str] | None = None, rules: Sequence[FileRule] = ()) -> int:
    parser = argparse.ArgumentParser(description="lint the contracts under protos/")
    parser.add_argument("--proto-root", type=Path, default=codegen.PROTO_ROOT)
    args = parser.parse_args(argv)
    violations = lint_tree(args.proto_root, rules)
    for v in violations:
        print(v)
    print(f"{len(codegen.proto_files(args.proto_root))} files, {len(violations)} violations")
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
