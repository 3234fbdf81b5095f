"""What `meshctl up` runs, as data: the project's `mesh.toml`.

The mesh knows no application: a project names its services in a small TOML
file at its root, and `meshctl up|status|demo|events tail` read it
(`--topology PATH`, default `./mesh.toml`):

    event_types = "services.common.event_types:EVENTS"   # optional: for `events tail`
    # optional: who publishes/consumes what on NATS (`meshctl up` renders the server's
    # permissions from it; without it no service gets NATS credentials from `up`)
    event_identities = "services.common.event_identities:SHOP_EVENTS"
    demo = "services.tools.demo"                          # optional: `meshctl demo` runs it

    [services.orders]
    module = "services.orders"     # run as `python -m services.orders`
    instances = 2                  # default 1
    grpc_port = 50052              # the first instance's ports; 0 = a free port
    admin_port = 9102
    env = { ORDERS_CALL_TIMEOUT_S = "3" }   # optional, added to the instance's environment
    migrations = "services.orders.store:migrations"  # optional: `meshctl release` checks them

    [edge]                                   # optional: what the edge serves (default: the shop's)
    descriptors = "gen/descriptors.binpb"    # the project's contracts (`meshctl contracts build`)
    [edge.auth]                              # who issues end-user tokens (all three keys;
                                             # without it the project's edge trusts none)
    issuer = "notes/accounts"                # the tokens' `iss`
    audiences = ["notes"]                    # accepted `aud` values
    jwks_service = "accounts"                # serves /.well-known/jwks.json on its admin port
    jwks_path = "/.well-known/jwks.json"     # optional
    [edge.cors]                              # optional: pages that may call the edge from
                                             # a browser (mesh/edge/browsers.py)
    origins = ["https://notes.example.com", "http://localhost:5173"]
    max_age_s = 600                          # optional: how long a preflight's answer lasts

Services start in file order. The first instance of each service takes its
fixed ports; extra instances take free ports and are found through the
registry. Errors name the file and the key (`mesh.toml: services.orders.instances:
expected an integer >= 1, got 0`), and unknown keys are errors too, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.addresses import is_dns_label
from mesh.edge.browsers import (
    DEFAULT_MAX_AGE_S,
    MAX_AGE_LIMIT_S,
    NO_CORS,
    EdgeCors,
    origin_problem,
)
from mesh.edge.jwt_authn import NO_ISSUER, EdgeAuthOptions
from mesh.events.nats_auth import MESH_TOOLS, EventIdentity, GrantError, permissions
from mesh.events.streams import StreamSpec, default_streams
from mesh.events.types import EventTypes, load_event_types

DEFAULT_TOPOLOGY = Path("mesh.toml")
DATA_DIR = "data"  # in the run directory: the services' SQLite files (MESH_DATA_DIR)

# The longest service name: Kubernetes names its objects `<name>-<track>` (a track is at
# most 20 characters, mesh/k8s/options.py) and `<name>-postgres` (whose StatefulSet's
# revision label adds an 11-character hash), and each must fit 63 characters.
MAX_SERVICE_NAME = 42
# Instances of one service, in mesh.toml and in a release (`--instances`).
MAX_INSTANCES = 64
# Names the mesh gives its own parts, which a service or an event identity must not
# take: the edge's and a developer's process's identities (mesh.api.options.EDGE,
# mesh.security.end_user.MESH_CLIENT: both trusted to carry end users), the CA's files
# (mesh.security.pki.CA_NAME), Consul's identity and NATS's Services in Kubernetes
# (mesh.k8s.infra), and meshctl's own NATS identities (nats_auth.MESH_TOOLS). Spelled out
# here, as mesh/k8s and mesh/security import this module; a test checks them against
# their sources.
RESERVED_NAMES = frozenset(
    {"edge", "mesh-client", "ca", "consul", "nats", "nats-headless", *(t.name for t in MESH_TOOLS)}
)
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOP_KEYS = {"event_types", "event_identities", "demo", "services", "edge"}
_SERVICE_KEYS = {"module", "instances", "grpc_port", "admin_port", "env", "migrations"}
_EDGE_KEYS = {"descriptors", "auth", "cors"}
_CORS_KEYS = {"origins", "max_age_s"}
_AUTH_KEYS = {"issuer", "audiences", "jwks_service", "jwks_path"}
_AUTH_REQUIRED = ("issuer", "audiences", "jwks_service")
_DEFAULT_JWKS_PATH = EdgeAuthOptions().jwks_path


class TopologyError(ValueError):
    """The topology file is missing or wrong; the message names the file and the key."""


_Fail = Callable[[str, str], TopologyError]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    grpc_port: int
    admin_port: int
    instances: int = 1
    module: str = ""  # run as `python -m <module>`
    env: Mapping[str, str] = field(default_factory=dict)
    migrations: str = ""  # "package.module:function" returning the service's migrations


@dataclass(frozen=True, slots=True)
class EdgeSpec:
    """What the edge serves for the project (`[edge]`): its contracts' descriptor set
    and who issues its end users' tokens. Without the table, the edge serves this
    checkout's contracts (`envoy/descriptors.binpb`, the shop's) and trusts the shop's
    issuer (`EdgeAuthOptions()`): a project of its own names both, or its services run
    on the mesh without being routed. A table naming its descriptors without
    `[edge.auth]` is an edge that trusts no issuer (`NO_ISSUER`): public methods
    answer anyone, the others 401. `[edge.cors]`: the page origins browsers may call
    the edge from (none: no CORS)."""

    descriptors: str = ""  # a path from the project's directory, or package:resource
    auth: EdgeAuthOptions = EdgeAuthOptions()  # noqa: RUF009 (frozen: shared safely)
    cors: EdgeCors = NO_CORS


@dataclass(frozen=True, slots=True)
class Topology:
    """A parsed `mesh.toml`."""

    path: Path
    services: tuple[ServiceSpec, ...]
    event_types_ref: str = ""  # "package.module:NAME"
    demo_module: str = ""
    event_identities_ref: str = ""  # "package.module:NAME" of EventIdentity entries
    edge: EdgeSpec = EdgeSpec()

    @property
    def root(self) -> Path:
        """The project's directory (the file's), where its modules import from."""
        return self.path.resolve().parent

    def event_types(self) -> EventTypes | None:
        """The project's event registry, imported now (None if the file names none)."""
        if not self.event_types_ref:
            return None
        if str(self.root) not in sys.path:
            sys.path.insert(0, str(self.root))  # the project's modules, as `python -m` sees them
        try:
            return load_event_types(self.event_types_ref)
        except ValueError as exc:
            raise TopologyError(f"{self.path}: event_types: {exc}") from exc

    def streams(self, *, max_bytes: int = -1, max_msgs: int = -1) -> tuple[StreamSpec, ...]:
        """The streams of the domains its event types name, and the dead letters', within
        `max_bytes` / `max_msgs` (the settings' stream limits where a server is made)."""
        types = self.event_types()
        domains = types.domains if types is not None else ()
        return tuple(default_streams(domains, max_bytes=max_bytes, max_msgs=max_msgs))

    def edge_descriptors(self) -> Path:
        """The descriptor set the edge serves, checked to be there and to parse: the
        project's (`[edge] descriptors`), or this checkout's when the file names none."""
        from google.protobuf.message import DecodeError

        from mesh.edge.model import load_descriptor_set
        from mesh.edge.render import DESCRIPTORS, descriptor_source

        ref = self.edge.descriptors
        if not ref:
            return DESCRIPTORS
        try:
            path = descriptor_source(ref)
            path = path if path.is_absolute() else self.root / path
            load_descriptor_set(path)
        except (OSError, DecodeError) as exc:
            raise TopologyError(
                f"{self.path}: edge.descriptors: {exc} (`meshctl contracts build` writes"
                " a project's set from its protos)"
            ) from None
        return path

    def event_identities(self) -> tuple[EventIdentity, ...]:
        """The project's NATS identities, imported now (empty if the file names none)."""
        if not self.event_identities_ref:
            return ()
        if str(self.root) not in sys.path:
            sys.path.insert(0, str(self.root))
        module_name, _, attr = self.event_identities_ref.partition(":")
        try:
            value = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise TopologyError(f"{self.path}: event_identities: {exc}") from exc
        if not isinstance(value, tuple | list) or not all(
            isinstance(i, EventIdentity) for i in value
        ):
            raise TopologyError(
                f"{self.path}: event_identities: {self.event_identities_ref} is not a sequence"
                " of mesh.events.nats_auth.EventIdentity"
            )
        self._check_identities(tuple(value))
        return tuple(value)

    def _check_identities(self, identities: tuple[EventIdentity, ...]) -> None:
        """Each identity a usable name (`<name>.nk`, the Secret `<name>-nats`: 58
        characters), none of the mesh's own, each once; every subject it publishes or
        consumes held by a stream of the event types' domains. Checked here because NATS's
        authorization cannot be rendered otherwise: `events credentials`, `k8s secrets`
        and `up` failed with "no stream holds subject" while `k8s render` went on."""
        where = f"{self.path}: event_identities"
        seen: set[str] = set()
        streams = self.streams()
        for ident in identities:
            problem = name_problem(ident.name, 58)
            if problem:
                raise TopologyError(f"{where}: {problem}")
            if ident.name in seen:
                raise TopologyError(f"{where}: {ident.name!r} is given more than once")
            seen.add(ident.name)
            try:
                permissions(ident, streams)
            except GrantError as exc:
                types = self.event_types()
                domains = ", ".join(types.domains) if types is not None else "none"
                raise TopologyError(
                    f"{where}: {ident.name}: {exc}: the streams are the domains of the"
                    f" event types (event_types = {self.event_types_ref or 'not given'};"
                    f" domains: {domains})"
                ) from None


# Runs a module from another source tree, as `python -m` would from that tree: the
# tree is the working directory and first on sys.path, the module's own arguments
# follow it (`python -c RUN_FROM <tree> <module> [args...]`). Packages not in the tree
# (the venv's: grpc, the generated stubs...) still come from the interpreter's venv.
RUN_FROM: str = (
    "import os, runpy, sys; root, module = sys.argv[1], sys.argv[2]; os.chdir(root);"
    " sys.path[0] = root; sys.argv = [module, *sys.argv[3:]];"
    " runpy.run_module(module, run_name='__main__', alter_sys=True)"
)


def module_argv(
    python: str, module: str, *args: str, source: Path | None = None
) -> tuple[str, ...]:
    """`python -m module args...`; with `source`, the same run from that source tree
    (`RUN_FROM`: a release's other version, `bench side-by-side --b-ref`)."""
    if source is None:
        return (python, "-m", module, *args)
    return (python, "-c", RUN_FROM, str(source), module, *args)


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process to supervise: a name for its log prefix, argv, environment and the
    directory it runs in (`cwd`; None: the supervisor's)."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    service: str = ""
    cwd: str | None = None


def load_topology(path: Path = DEFAULT_TOPOLOGY) -> Topology:
    """Parse and check a topology file. A file that cannot be read (a directory, not
    UTF-8, not ours to read) is a TopologyError naming it, as a wrong key is."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TopologyError(
            f"{path}: no such topology file (write a mesh.toml, or pass --topology PATH)"
        ) from None
    except IsADirectoryError:
        raise TopologyError(f"{path}: a directory, not a topology file") from None
    except UnicodeDecodeError as exc:
        raise TopologyError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); TOML files are UTF-8"
        ) from None
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path}: not valid TOML: {exc}") from exc
    return parse_topology(doc, path)


def parse_topology(doc: Mapping[str, Any], path: Path) -> Topology:
    """Check a decoded topology document; `path` names the file in errors."""

    def fail(key: str, problem: str) -> TopologyError:
        return TopologyError(f"{path}: {key}: {problem}")

    _unknown(doc, _TOP_KEYS, "", fail)
    services_doc = doc.get("services")
    if not isinstance(services_doc, dict) or not services_doc:
        raise fail("services", "expected at least one [services.<name>] table")
    services = []
    for name, table in services_doc.items():
        key = f"services.{name}"
        problem = name_problem(name, MAX_SERVICE_NAME)
        if problem:
            raise fail(key, problem)
        if not isinstance(table, dict):
            raise fail(key, "expected a table")
        _unknown(table, _SERVICE_KEYS, key, fail)
        module = table.get("module")
        if not isinstance(module, str) or not _MODULE.fullmatch(module):
            raise fail(f"{key}.module", f"expected a Python module name, got {module!r}")
        instances = _int(table.get("instances", 1), 1, MAX_INSTANCES, f"{key}.instances", fail)
        grpc_port = _int(table.get("grpc_port", 0), 0, 65535, f"{key}.grpc_port", fail)
        admin_port = _int(table.get("admin_port", 0), 0, 65535, f"{key}.admin_port", fail)
        env = table.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(v, str) and _ENV_NAME.fullmatch(k) for k, v in env.items()
        ):
            raise fail(f"{key}.env", 'expected a table of NAME = "string" pairs')
        migrations = table.get("migrations", "")
        if not isinstance(migrations, str) or (migrations and not _REF.fullmatch(migrations)):
            raise fail(f"{key}.migrations", f"expected 'package.module:NAME', got {migrations!r}")
        services.append(
            ServiceSpec(name, grpc_port, admin_port, instances, module, dict(env), migrations)
        )
    ports = [p for s in services for p in (s.grpc_port, s.admin_port) if p]
    if len(ports) != len(set(ports)):
        dup = sorted({p for p in ports if ports.count(p) > 1})
        raise fail("services", f"port(s) {dup} given to more than one service")
    event_types = doc.get("event_types", "")
    if not isinstance(event_types, str) or (event_types and not _REF.fullmatch(event_types)):
        raise fail("event_types", f"expected 'package.module:NAME', got {event_types!r}")
    identities = doc.get("event_identities", "")
    if not isinstance(identities, str) or (identities and not _REF.fullmatch(identities)):
        raise fail("event_identities", f"expected 'package.module:NAME', got {identities!r}")
    demo = doc.get("demo", "")
    if not isinstance(demo, str) or (demo and not _MODULE.fullmatch(demo)):
        raise fail("demo", f"expected a Python module name, got {demo!r}")
    edge = EdgeSpec() if "edge" not in doc else _edge(doc["edge"], fail)
    return Topology(path, tuple(services), event_types, demo, identities, edge)


def _edge(table: Any, fail: _Fail) -> EdgeSpec:
    """`[edge]`, `[edge.auth]` and `[edge.cors]`. The issuer's keys come all together:
    a project naming its issuer but keeping the shop's audience (or its JWKS service)
    would trust tokens it never meant to. The JWKS service may be outside the file (an
    issuer another project runs, found in the same registry): `meshctl up` says so.
    Without `descriptors` the edge is the shop's, and so is its issuer by default."""
    if not isinstance(table, dict):
        raise fail("edge", "expected a table")
    _unknown(table, _EDGE_KEYS, "edge", fail)
    descriptors = table.get("descriptors", "")
    if not isinstance(descriptors, str):
        raise fail("edge.descriptors", f"expected a path, got {descriptors!r}")
    cors = _cors(table.get("cors", {}), fail)
    auth_doc = table.get("auth")
    if auth_doc is None:  # a project's own edge with no issuer: no token verifies
        return EdgeSpec(descriptors, NO_ISSUER if descriptors else EdgeAuthOptions(), cors)
    if not isinstance(auth_doc, dict):
        raise fail("edge.auth", "expected a table")
    _unknown(auth_doc, _AUTH_KEYS, "edge.auth", fail)
    missing = [k for k in _AUTH_REQUIRED if k not in auth_doc]
    if missing:
        raise fail(f"edge.auth.{missing[0]}", f"missing (give {', '.join(_AUTH_REQUIRED)})")
    issuer, audiences = auth_doc["issuer"], auth_doc["audiences"]
    if not isinstance(issuer, str) or not issuer:
        raise fail("edge.auth.issuer", f"expected the tokens' iss, got {issuer!r}")
    if (
        not isinstance(audiences, list)
        or not audiences
        or not all(isinstance(a, str) and a for a in audiences)
    ):
        raise fail("edge.auth.audiences", f"expected a list of aud values, got {audiences!r}")
    jwks_service = auth_doc["jwks_service"]
    if not isinstance(jwks_service, str) or name_problem(jwks_service, MAX_SERVICE_NAME):
        raise fail("edge.auth.jwks_service", f"expected a service name, got {jwks_service!r}")
    jwks_path = auth_doc.get("jwks_path", _DEFAULT_JWKS_PATH)
    if not isinstance(jwks_path, str) or not jwks_path.startswith("/"):
        raise fail("edge.auth.jwks_path", f"expected a path starting with /, got {jwks_path!r}")
    auth = EdgeAuthOptions(
        issuer=issuer,
        audiences=tuple(audiences),
        jwks_service=jwks_service,
        jwks_path=jwks_path,
    )
    return EdgeSpec(descriptors, auth, cors)


def _cors(table: Any, fail: _Fail) -> EdgeCors:
    if not isinstance(table, dict):
        raise fail("edge.cors", "expected a table")
    _unknown(table, _CORS_KEYS, "edge.cors", fail)
    origins = table.get("origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise fail("edge.cors.origins", f"expected a list of origins, got {origins!r}")
    for origin in origins:
        problem = origin_problem(origin)
        if problem is not None:
            raise fail("edge.cors.origins", f"{origin!r}: {problem}")
    max_age = _int(
        table.get("max_age_s", DEFAULT_MAX_AGE_S), 0, MAX_AGE_LIMIT_S, "edge.cors.max_age_s", fail
    )
    return EdgeCors(tuple(origins), max_age)


def name_problem(name: str, max_len: int = 63) -> str:
    """What is wrong with `name` as a service or event identity name ("" if nothing): it
    becomes a DNS label (`<name>.<trust domain>`, Kubernetes' objects, which also want a
    letter first) and a file name (`<name>.crt`, `<name>.nk`), and must not be one of the
    mesh's own (`RESERVED_NAMES`)."""
    if not is_dns_label(name, max_len) or not name[0].isalpha():
        return (
            f"{name!r}: a name is lower case letters, digits and '-', at most {max_len}"
            " characters, starting with a letter and ending with a letter or digit"
        )
    if name in RESERVED_NAMES:
        reserved = ", ".join(sorted(RESERVED_NAMES))
        return f"{name!r} is reserved for the mesh's own (reserved: {reserved})"
    return ""


def _unknown(table: Mapping[str, Any], known: set[str], where: str, fail: _Fail) -> None:
    extra = sorted(set(table) - known)
    if extra:
        key = f"{where}.{extra[0]}" if where else extra[0]
        raise fail(key, f"unknown key (expected one of {', '.join(sorted(known))})")


def _int(value: Any, low: int, high: int, key: str, fail: _Fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise fail(key, f"expected an integer from {low} to {high}, got {value!r}")
    return value


def service_processes(
    run_dir: Path,
    base_env: Mapping[str, str],
    *,
    nats_url: str,
    services: tuple[ServiceSpec, ...],
    python: str,
    source: Path | None,
    project_dir: Path | None,
) -> list[ProcessSpec]:
    """One ProcessSpec per instance, all sharing the run dir's registry and data dir,
    each run as `<python> -m <module>` (`UpOptions.python`) in the project's directory
    (`project_dir`, the topology file's: where `python -m` finds the project's modules,
    wherever `meshctl up` was started; None: the supervisor's), or from the source tree
    `source` when one is given (`UpOptions.source`, `module_argv`).

    Instances of one service share its database (one SQLite file in WAL mode,
    or the `<SERVICE>_DATABASE_URL` the user set): a service's data is the
    service's, not the instance's.
    """
    out = []
    for svc in services:
        if not svc.module:
            raise TopologyError(f"service {svc.name}: no module to run")
        for i in range(1, svc.instances + 1):
            first = i == 1
            env = {
                **base_env,
                **svc.env,
                "MESH_REGISTRY_DIR": str(run_dir / "registry"),
                "MESH_DATA_DIR": str(run_dir / DATA_DIR),
                "MESH_GRPC_PORT": str(svc.grpc_port if first else 0),
                "MESH_ADMIN_PORT": str(svc.admin_port if first else 0),
                "MESH_INSTANCE_ID": f"{svc.name}-{i}",
                "NATS_URL": nats_url,
                "PYTHONUNBUFFERED": "1",
            }
            out.append(
                ProcessSpec(
                    name=f"{svc.name}-{i}",
                    argv=module_argv(python, svc.module, source=source),
                    env=env,
                    service=svc.name,
                    cwd=None if project_dir is None else str(project_dir),
                )
            )
    return out
