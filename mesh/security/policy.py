"""The caller policy declared in the contracts, for the server and for people.

`method_callers(full_method)` is what a mesh server's caller-policy interceptor
(interceptors/policy.py) asks: the `(meshproto.api.v1.callers)` of the method, else
its service's `default_callers`, read from the default descriptor pool (the
generated modules a server imports register there). `policy_matrix` lists the
same for every RPC of a descriptor set: `meshctl policy` prints it and the
README carries it (a test keeps the two in step).

Methods without a declaration (grpc.health, reflection) answer None: any mesh
identity may call them (probers and Envoy's health checks hold identities).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

from interceptors.policy import CallerPolicyServerInterceptor, OnDenied
from mesh.api import options
from mesh.cli_options import given
from mesh.security.pki import service_of

MATRIX_START = "<!-- policy-matrix:start (rendered by `meshctl policy --markdown`) -->"
MATRIX_END = "<!-- policy-matrix:end -->"


@functools.lru_cache(maxsize=4096)
def method_callers(full_method: str) -> frozenset[str] | None:
    """Allowed caller identities of `/pkg.Service/Method`; None: not declared (or unknown)."""
    method = options.find_method(full_method)
    return None if method is None else options.callers_of(method)


def caller_policy(
    trust_domain: str, on_denied: OnDenied | None = None
) -> CallerPolicyServerInterceptor:
    """The server interceptor enforcing the contracts' policy for `trust_domain`'s identities."""
    return CallerPolicyServerInterceptor(
        method_callers, lambda peer: service_of(peer, trust_domain), on_denied=on_denied
    )


@dataclass(frozen=True, slots=True)
class PolicyRow:
    service: str  # full name, e.g. shop.payments.v1.PaymentService
    method: str
    internal: bool
    callers: frozenset[str] | None


def policy_matrix(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> list[PolicyRow]:
    rows = []
    for f in files:
        for svc in f.service:
            full = f"{f.package}.{svc.name}" if f.package else svc.name
            internal = options.is_internal(svc)
            for m in svc.method:
                rows.append(PolicyRow(full, m.name, internal, options.callers_of(m, svc)))
    return sorted(rows, key=lambda r: (r.service, r.method))


def _callers(row: PolicyRow) -> str:
    if row.callers is None:
        return "any mesh identity (not declared)"
    if options.ANY_CALLER in row.callers:
        return "any mesh identity"
    return ", ".join(sorted(row.callers))


def render_markdown(rows: list[PolicyRow]) -> str:
    lines = ["| service | method | callers |", "|---|---|---|"]
    for r in rows:
        svc = f"`{r.service}`" + (" (internal)" if r.internal else "")
        lines.append(f"| {svc} | `{r.method}` | {_callers(r)} |")
    return "\n".join(lines)


def render_text(rows: list[PolicyRow]) -> str:
    width = max((len(f"{r.service}/{r.method}") for r in rows), default=10)
    out = [f"{'method':<{width}}  callers"]
    for r in rows:
        name = f"{r.service}/{r.method}"
        out.append(f"{name:<{width}}  {_callers(r)}{'  [internal]' if r.internal else ''}")
    return "\n".join(out)


def load_rows(descriptors: Path | None = None) -> list[PolicyRow]:
    from mesh.edge.model import load_descriptor_set
    from mesh.edge.render import DESCRIPTORS

    return policy_matrix(load_descriptor_set(descriptors or DESCRIPTORS).file)


def cmd_policy(args: argparse.Namespace) -> int:
    from mesh.local.topology import load_topology

    descriptors = Path(args.descriptors) if args.descriptors else None
    topology = Path(args.topology)
    # The project's own contracts, if named. A --topology given must be one (a missing
    # file printed the shop's policy until 7 Dec 2026); only ./mesh.toml may be absent.
    if descriptors is None and (given(args.topology) or topology.is_file()):
        descriptors = load_topology(topology).edge_descriptors()
    try:
        rows = load_rows(descriptors)
    except (OSError, DecodeError) as exc:  # a directory, a file that is no set: a traceback
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"meshctl policy: {descriptors}: not a descriptor set ({what}; `meshctl contracts"
              " build` writes a project's)", file=sys.stderr)  # fmt: skip
        return 2
    print(render_markdown(rows) if args.markdown else render_text(rows))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `policy` to meshctl's commands."""
    p = subparsers.add_parser("policy", help="who may call what (from the contracts)")
    p.add_argument("--markdown", action="store_true", help="as the README's table")
    p.add_argument(
        "--descriptors",
        default="",
        help="a descriptor set (default: mesh.toml's [edge] descriptors, else envoy/'s)",
    )
    p.set_defaults(fn=cmd_policy)
