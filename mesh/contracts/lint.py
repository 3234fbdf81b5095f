"""Rules every contract under `protos/` keeps: buf's, then the mesh's, then the project's.

`buf lint` (rules in `buf.yaml`: STANDARD + COMMENTS) checks naming, versioned
packages matching their directories, enum zero values and that every element
is documented (the comments are the API docs: they reach the generated `.pyi`
and reflection). Comment rules need source info, so `lint_tree` builds the set
with it, and `check` refuses a set without it (buf would pass silently).

What buf does not know stays here:

- package: `<org>.<name>.v<N>`, one major version per package (the major is
  what the HTTP rule checks bindings against).
- http: every RPC of a public service (no `option (meshproto.api.v1.internal)`)
  has a `google.api.http` binding under `/api/v<N>/`, N being the package's
  major version; internal services have no HTTP bindings at all.
- policy: every RPC of an internal service names its callers (its own
  `option (meshproto.api.v1.callers)` or the service's `default_callers`); every
  RPC of a public service declares its end-user auth (`meshproto.api.v1.auth`),
  and ACCESS_ROLES names at least one role. Nothing is reachable by default
  without someone having said who may reach it.

A project adds its own rules (`rules=`: functions of one file returning
violations); the shop's live in `services/tools/contract_lint.py`, which is what
`make lint` runs. Limits: buf has no rule for comments on the package statement
or on extensions, so those are not checked.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

from mesh.api import options
from mesh.cli_args import path_arg
from mesh.contracts import buf, codegen
from mesh.contracts import descriptors as d

FieldProto = descriptor_pb2.FieldDescriptorProto

_PACKAGE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\.v(?P<major>[1-9][0-9]*)$")


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str  # package | http | policy | buf <RULE> | a project rule's name
    element: str  # "shop.users.v1.User field 2 'email'" (buf: "<file>:<line>")
    message: str

    def __str__(self) -> str:
        return f"{self.element}: {self.message} [{self.rule}]"


# A project's own rule: the violations of one contract file.
FileRule = Callable[[descriptor_pb2.FileDescriptorProto], Iterable[Violation]]


def lint(
    fds: descriptor_pb2.FileDescriptorSet,
    files: Collection[str],
    rules: Sequence[FileRule] = (),
) -> list[Violation]:
    """The mesh's own rules, then each of `rules`, over the contract `files` of `fds`."""
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
    """Compile the contracts under proto_root with source info; buf's findings, then ours."""
    fds = codegen.build_descriptor_set(proto_root, source_info=True)
    return check(fds, codegen.proto_files(proto_root), rules)


class MissingSourceInfo(ValueError):
    """The descriptor set has no comments: buf's comment rules would pass silently."""


def check(
    fds: descriptor_pb2.FileDescriptorSet,
    files: Collection[str],
    rules: Sequence[FileRule] = (),
) -> list[Violation]:
    """`buf lint`, the mesh's rules and `rules` over `files` of `fds` (with source info)."""
    for f in fds.file:
        if f.name in files and not f.HasField("source_code_info"):
            raise MissingSourceInfo(f"{f.name}: no source info (protoc --include_source_info)")
    found = [
        Violation(f"buf {f.rule}", f"{f.path}:{f.line}" if f.line else f.path, f.message)
        for f in buf.lint(fds, files)
    ]
    return [*found, *lint(fds, files, rules)]


def _file(f: descriptor_pb2.FileDescriptorProto) -> Iterator[Violation]:
    package = _PACKAGE.fullmatch(f.package)
    if not package:
        yield Violation(
            "package", f"package {f.package or '(none)'}", "must be <org>.<name>.v<N> (versioned)"
        )
    major = int(package["major"]) if package else None

    for s in f.service:
        name = f"{f.package}.{s.name}"
        internal = options.is_internal(s)
        for m in s.method:
            element = f"{name} rpc {m.name}"
            yield from _http(element, m, internal, major)
            yield from _policy(element, s, m, internal)


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
                "internal RPC names no callers: add option (meshproto.api.v1.callers) "
                "or the service's (meshproto.api.v1.default_callers)",
            )
        return
    auth = options.auth_of(method)
    if auth is None:
        yield Violation(
            "policy",
            element,
            "public RPC declares no end-user auth: add option (meshproto.api.v1.auth)",
        )
    elif auth.access is options.Access.ROLES and not auth.roles:
        yield Violation("policy", element, "ACCESS_ROLES names no roles")


def main(argv: Sequence[str] | None = None, rules: Sequence[FileRule] = ()) -> int:
    parser = argparse.ArgumentParser(description="lint the contracts under protos/")
    parser.add_argument("--proto-root", type=path_arg, default=codegen.PROTO_ROOT)
    args = parser.parse_args(argv)
    try:  # as `meshctl contracts build` says it: a root to name, or protoc's own lines
        codegen.project_proto_files(args.proto_root)
        violations = lint_tree(args.proto_root, rules)
    except codegen.CodegenError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    for v in violations:
        print(v)
    print(f"{len(codegen.proto_files(args.proto_root))} files, {len(violations)} violations")
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
