"""`meshctl up`: the whole mesh on one machine, no Docker.

Starts its own authenticated nats-server (or uses the user's NATS_URL), the four services
(two instances of orders and inventory) against an embedded registry in the
run dir, and the Envoy edge with its meta server and endpoint sync in this
process; waits until every instance is healthy and the edge routes to each
public cluster; prints a table; then streams the processes' logs until
Ctrl-C / SIGTERM (or `meshctl down`), when it stops everything in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from mesh.discovery.embedded import ensure_private_dir
from mesh.discovery.registry import Instance, Registry
from mesh.edge.admin import EnvoyAdmin, prepare_socket, routable_hosts, socket_in
from mesh.edge.browsers import NO_CORS, EdgeCors
from mesh.edge.jwt_authn import EdgeAuthOptions, jwks_sources, login_required
from mesh.edge.limits import edge_limits_from_env
from mesh.edge.meta import EdgeMeta
from mesh.edge.model import EdgeModel, build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS, local_options, render_files
from mesh.edge.sync import EndpointSync
from mesh.events.nats_auth import DASHBOARD, MESH_TOOLS, EventIdentity
from mesh.events.nats_connect import NatsClientAuth, redact_urls
from mesh.events.streams import StreamSpec
from mesh.local.nats import LocalNats, prepare_local_nats
from mesh.local.observe import Observability, ObserveOptions
from mesh.local.ports import port_free
from mesh.local.progress import StartupProgress
from mesh.local.prometheus import PrometheusTargets
from mesh.local.supervisor import Child, Supervisor, exit_text
from mesh.local.topology import (
    DATA_DIR,
    ProcessSpec,
    ServiceSpec,
    Topology,
    service_processes,
)
from mesh.local.up_output import LeavableStdout
from mesh.local.up_record import (
    STATE_FILE,
    InvalidRecord,
    is_running,
    read_record,
    running_pid,
    write_record,
)
from mesh.private_dir import private_dir
from mesh.release.controller import ReleaseController, start_releases
from mesh.security.identity_files import IdentityFileRenewer
from mesh.security.local import local_pki
from mesh.settings import Settings
from mesh.tools import envoy_binary
from mesh.traffic.file_store import FilePolicyStore

# What `up` prints once every instance serves (`meshctl up --detach` waits for it).
READY_LINE = "mesh is up"
PROCESSES_FILE = "processes.json"  # the supervisor's view of each child, for `meshctl status`


class UpError(RuntimeError):
    """The mesh could not be brought up; the message says what failed and why."""


@dataclass
class UpOptions:
    run_dir: Path = Path(".run")
    edge_port: int = 8080
    nats_url: str = "nats://127.0.0.1:4222"
    services: tuple[ServiceSpec, ...] = ()  # from the topology file (mesh.toml)
    ready_timeout_s: float = 60.0
    grace_s: float = 15.0
    warm_spares: bool = True  # one idle pre-imported interpreter per service: fast restarts
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    observe: ObserveOptions = field(default_factory=ObserveOptions)
    # True: NATS_URL is the user's server (their credentials, started by them);
    # False: `up` starts its own authenticated nats-server (mesh/local/nats.py) with
    # the project's event identities and streams (from its topology file).
    nats_external: bool = False
    event_identities: tuple[EventIdentity, ...] = ()
    streams: tuple[StreamSpec, ...] = ()
    edge_tls_port: int = 8443  # the edge's TLS listener (mTLS on)
    # The interpreter that runs the services and the trace sink (they run from the
    # current directory, so it must have the project's packages: another venv's made by
    # `make install PYTHON=...`; `bench side-by-side --b-python` compares two). Children
    # on another interpreter get no warm spare: a restart of one starts cold.
    python: str = sys.executable
    # Another source tree the services and the trace sink run from (None: the current
    # directory's), as a release runs its new version (`topology.module_argv`): `bench
    # side-by-side --b-ref` compares two commits. This process (the edge's config, the
    # supervisor) stays the current tree's. Such children get no warm spare either.
    source: Path | None = None
    # The project's directory (the topology file's): the services run in it, so that
    # `python -m <module>` finds the project's modules wherever `meshctl up` was started
    # (None: this process's directory).
    project_dir: Path | None = None
    # What the edge serves: the project's contracts (`[edge] descriptors` in mesh.toml,
    # default this checkout's), its end users' token issuer (`[edge.auth]`) and the page
    # origins browsers may call it from (`[edge.cors]`).
    edge_descriptors: Path = DESCRIPTORS
    edge_auth: EdgeAuthOptions = EdgeAuthOptions()  # noqa: RUF009 (frozen: shared safely)
    edge_cors: EdgeCors = NO_CORS

    @property
    def edge_dir(self) -> Path:
        return self.run_dir.resolve() / "edge"

    @property
    def edge_admin(self) -> EnvoyAdmin:
        """The edge's admin, on its Unix socket (mesh/edge/admin.py: in the run directory, or
        in /tmp/meshctl-<uid> when that one is too deep for a socket's path)."""
        return EnvoyAdmin(socket_in(self.edge_dir))


def topology_events(
    topology: Topology, settings: Settings
) -> tuple[tuple[EventIdentity, ...], tuple[StreamSpec, ...]]:
    """What `up`'s own nats-server is configured with for `topology`: the services'
    event identities, and the streams of the domains its event types name (within the
    settings' stream limits), whose subjects those identities are allowed."""
    streams = topology.streams(
        max_bytes=settings.stream_max_bytes, max_msgs=settings.stream_max_msgs
    )
    return topology.event_identities(), streams


def free_port_options(options: UpOptions) -> UpOptions:
    """The same mesh with every port picked by the kernel (next to another mesh, in tests)."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    nats_url = options.nats_url if options.nats_external else f"nats://127.0.0.1:{pick()}"
    return replace(
        options,
        nats_url=nats_url,
        edge_port=pick(),
        edge_tls_port=pick(),
        services=tuple(replace(s, grpc_port=0, admin_port=0) for s in options.services),
        observe=replace(options.observe, trace_sink_port=0, dashboard_port=0),
    )


def _reachable(url: str, timeout: float = 0.5) -> bool:
    parsed = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout
        ):
            return True
    except OSError:
        return False


async def _poll(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll an async predicate until true or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)  # polling interval, not synchronisation
    raise UpError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class LocalMesh:
    """Everything `meshctl up` starts, and the order it stops them in."""

    def __init__(self, options: UpOptions, registry: Registry, supervisor: Supervisor) -> None:
        self.o = options
        self.registry = registry
        self.sup = supervisor
        self.meta: EdgeMeta | None = None
        self.sync: EndpointSync | None = None
        self.nats_child: Child | None = None
        self.envoy_child: Child | None = None
        self._edge_seen = "Envoy's admin was never asked"  # what `_edge_ready` saw last
        self.cert_renewer: IdentityFileRenewer | None = None
        self.nats_url = options.nats_url
        self.nats_local: LocalNats | None = None
        self.clusters: list[str] = []
        self.edge_model: EdgeModel | None = None
        self.observe = Observability(options.observe, options.run_dir.resolve())
        self.progress = StartupProgress(supervisor)
        self.prometheus: PrometheusTargets | None = None
        self.releases: ReleaseController | None = None

    def preflight(self) -> None:
        """What must hold before anything starts (UpError saying why). Run before `start`,
        outside the stop a started mesh is owed: a refusal then has nothing to stop."""
        run = self.o.run_dir.resolve()
        try:
            prepare_socket(socket_in(self.o.edge_dir))
        except ValueError as exc:
            raise UpError(str(exc)) from None  # before anything starts
        ensure_private_dir(run / "registry")  # 0700: who can write it can register
        # The services' databases hold their secrets (signing keys, password hashes):
        # up's own data directory is 0700, an older run's 0755 narrowed too.
        private_dir(run / DATA_DIR, narrow=True)
        busy = [
            p
            for s in self.o.services
            for p in (s.grpc_port, s.admin_port)
            if p and not port_free(p)
        ]
        for p in (self.o.edge_port, self.o.edge_tls_port):
            if not port_free(p):
                busy.append(p)
        if busy:  # before anything starts (a screen of NATS starting and stopping hid it)
            raise UpError(
                f"ports already in use: {sorted(busy)} (is another `meshctl up` running?"
                " `meshctl down` stops it)"
            )

    async def start(self) -> None:
        """Start everything, once `preflight` has passed."""
        run = self.o.run_dir.resolve()
        await self._start_nats(run)
        base_env = {k: v for k, v in self.o.env.items() if not k.startswith("MESH_GRPC")}
        await self.observe.start_sink(
            self.sup, self.o.env, python=self.o.python, source=self.o.source
        )
        base_env.update(self.observe.service_env(base_env))
        self.pki = local_pki(run, self.o.env, [s.name for s in self.o.services])  # mTLS
        base_env.update(self.pki.env)
        self.cert_renewer = self.pki.renewer  # Envoy reads its certificate from files
        if self.cert_renewer is not None:
            self.cert_renewer.start()
        # One secret per run that the services derive their signing keys from (page
        # tokens); a user's own MESH_SERVICE_SECRET wins. Never written to disk.
        if not base_env.get("MESH_SERVICE_SECRET"):
            base_env["MESH_SERVICE_SECRET"] = secrets.token_urlsafe(32)
        specs = service_processes(
            run, base_env, nats_url=self.nats_url, services=self.o.services,
            python=self.o.python, source=self.o.source, project_dir=self.o.project_dir,
        )  # fmt: skip
        self.progress.step(f"starting {len(specs)} service instances")
        for spec in specs:
            if self.nats_local is not None:  # each service its own NATS identity
                spec = replace(spec, env=self.nats_local.with_identity(spec.env, spec.service))
            await self.sup.start(spec)
        self.prometheus = PrometheusTargets(
            self.registry, [s.name for s in self.o.services], run / "prometheus"
        )
        await self.prometheus.start()
        self.progress.step("starting the Envoy edge and its meta server")
        await self._start_edge(run)
        await self.observe.start_dashboard(
            self.registry,
            self.sup,
            [s.name for s in self.o.services],
            nats_url=self.nats_url,
            # Our own NATS: the dashboard's read-only monitor identity; a user's NATS: as
            # before, no credentials of ours.
            nats_auth=(
                self.nats_local.client_auth(DASHBOARD.name)
                if self.nats_local is not None
                else NatsClientAuth()
            ),
            edge_admin=self.o.edge_admin,
            edge_port=self.o.edge_port,
        )

    async def _start_nats(self, run: Path) -> None:
        """The user's NATS when they named one; otherwise our own, authenticated server
        (mesh/local/nats.py), never whatever else answers on 4222."""
        if self.o.nats_external:
            if not _reachable(self.nats_url):
                raise UpError(f"NATS_URL={redact_urls(self.nats_url)} is not reachable")
            self.progress.step(f"using the NATS server at {redact_urls(self.nats_url)}")
            return
        parsed = urllib.parse.urlsplit(self.nats_url)
        if not self.o.event_identities:
            # A project without events: the server still runs (`meshctl events tail`,
            # the dashboard), authenticated, with no identity for any service; a service
            # that connects anyway is refused ("Authorization Violation"), never let in.
            self.progress.step(
                "the topology names no event_identities: no service gets NATS credentials"
            )
        self.nats_local = prepare_local_nats(
            run / "nats",
            preferred_port=parsed.port or 4222,
            identities=(*self.o.event_identities, *MESH_TOOLS),
            streams=self.o.streams,
        )
        self.nats_url = self.nats_local.url
        spec = ProcessSpec(name="nats", argv=self.nats_local.argv, env=dict(self.o.env))
        self.progress.step(f"starting nats-server on {self.nats_url}")
        self.nats_child = await self.sup.start(spec)

        async def up() -> bool:
            return _reachable(self.nats_url, 0.2)

        await _poll(up, 10, f"nats-server on {self.nats_url}")

    async def _start_edge(self, run: Path) -> None:
        edge_dir = self.o.edge_dir
        private_dir(edge_dir, narrow=True)  # its admin socket and keys' paths: ours only
        fds = load_descriptor_set(self.o.edge_descriptors)
        model = build_model(fds.file)
        self.clusters = model.clusters
        self.edge_model = model
        self.meta = EdgeMeta(fds, model, self.registry)
        await self.meta.start()
        options = local_options(
            edge_dir,
            listen_port=self.o.edge_port,
            meta_port=self.meta.port,
            **self.observe.edge_options(self.o.env),
            tls_listen_port=self.o.edge_tls_port,
            **self.pki.edge_options,
            limits=edge_limits_from_env(self.o.env),
            descriptor_path=str(self.o.edge_descriptors),
            auth=self.o.edge_auth,
            cors=self.o.edge_cors,
        )
        config, _ = render_files(edge_dir, options, self.o.edge_descriptors)
        self.policies = FilePolicyStore(run / "registry")  # traffic policies: subsets, faults
        self.sync = EndpointSync(
            self.registry,
            model.clusters,
            Path(options.eds_dir),
            policies=self.policies,
            port_clusters=jwks_sources(options.auth),
        )
        await self.sync.start()
        await self._wait_for_issuer(options.auth)
        spec = ProcessSpec(
            name="envoy",
            argv=(
                envoy_binary(),
                "-c",
                str(config),
                "--use-dynamic-base-id",
                "--log-level",
                "warn",
            ),
            env=dict(self.o.env),
        )
        self.envoy_child = await self.sup.start(spec)
        self.releases = start_releases(self, run)  # `meshctl release` (mesh/release/)
        await self.releases.start()

    async def _wait_for_issuer(self, auth: EdgeAuthOptions) -> None:
        """Until the end users' token issuer (when it is in the topology) has a healthy
        instance in the edge's JWKS endpoints file: Envoy's first JWKS fetch then finds it,
        instead of failing and logging a warning every second until the issuer is up (six
        on a cold start). The file, not the registry: the endpoint sync writes it a moment
        after the registry lists the instance, and an Envoy started in that moment failed
        its first fetch. The services start meanwhile; it costs Envoy's own start (~0.3 s)
        on the total. Gives up quietly after the ready timeout, or once a process will not
        come back: Envoy then starts anyway and keeps refetching, and `wait_ready` says
        what is missing and why."""
        service = auth.jwks_service
        if service not in {s.name for s in self.o.services} or self.sync is None:
            return
        sync = self.sync

        def written() -> bool:
            return all(sync.snapshots.get(cluster) for cluster in jwks_sources(auth))

        if written():
            return
        self.progress.step(f"waiting for {service} (the token issuer) before starting Envoy")

        async def issuer_up_or_a_process_gone() -> bool:
            return self.sup.exited.is_set() or written()

        with contextlib.suppress(UpError):  # timed out: Envoy starts anyway (see above)
            await _poll(issuer_up_or_a_process_gone, self.o.ready_timeout_s, service)

    async def wait_ready(self) -> dict[str, list[Instance]]:
        """Every instance healthy and routed by the edge; says which ones it still waits
        for, and on a timeout names them with their last log lines."""
        found: dict[str, list[Instance]] = {}
        progress = self.progress

        async def all_registered() -> bool:
            for svc in self.o.services:  # first, so that a report names only the unhealthy
                found[svc.name] = await self.registry.healthy(svc.name)
            if self.sup.exited.is_set():
                raise UpError(progress.exited_report())
            return progress.waiting_for(found) == []

        try:
            await _poll(all_registered, self.o.ready_timeout_s, "every instance to be healthy")
        except UpError as exc:
            raise UpError(f"{exc}\n{progress.timeout_report(found)}") from None
        progress.step("waiting for the Envoy edge to route to every public service")
        await self.wait_edge_routes()
        if self.o.warm_spares:
            await self.sup.warm_spares()
        return found

    async def wait_edge_routes(self) -> None:
        """Until the edge routes to every public service started; a timeout's UpError
        says what Envoy's admin said last."""
        try:
            await _poll(self._edge_ready, self.o.ready_timeout_s, "the Envoy edge to be ready")
        except UpError as exc:
            envoy = self.envoy_child
            restarted = ""
            if envoy is not None and envoy.restarts:
                restarted = (
                    f"; Envoy was restarted {envoy.restarts} time(s) (it last ended with"
                    f" {exit_text(envoy.last_exit)}); its last lines:\n{envoy.tail(15)}"
                )
            raise UpError(f"{exc}: {self._edge_seen}{restarted}") from None

    async def _edge_ready(self) -> bool:
        """Envoy is LIVE and routes to an instance of every public service started; what
        it said last is kept in `_edge_seen` for a timeout's message."""
        import aiohttp

        admin = EnvoyAdmin(self.o.edge_admin.socket_path, timeout_s=1)
        try:
            state = (await admin.get("/ready")).strip()
            if state != "LIVE":
                self._edge_seen = f"Envoy's admin says {state or 'nothing'} (not LIVE)"
                return False
            healthy = routable_hosts(await admin.clusters())
        except aiohttp.ClientResponseError as exc:  # /ready answers 503 until LIVE
            self._edge_seen = f"Envoy is not ready (its admin's /ready answers {exc.status})"
            return False
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._edge_seen = f"Envoy's admin does not answer ({type(exc).__name__}: {exc})"
            return False
        started = {s.name for s in self.o.services}  # a reduced topology routes fewer
        missing = [c for c in self.clusters if c in started and healthy.get(c, 0) < 1]
        self._edge_seen = (
            f"Envoy routes to no healthy instance of {', '.join(missing)}"
            " (its health checks, mTLS as the edge identity, fail or have not run)"
        )
        return not missing

    async def stop(self) -> None:
        services = {s.name for s in self.o.services}
        if self.cert_renewer is not None:
            await self.cert_renewer.close()
        await self.observe.stop()
        if self.releases is not None:
            await self.releases.stop()
        # Services drain and deregister first, then the edge, then the broker.
        await self.sup.stop_all(
            self.o.grace_s,
            order=(lambda c: c.spec.service in services, lambda c: c is self.envoy_child),
        )
        if self.envoy_child is not None:
            # Envoy leaves its admin socket behind: one in /tmp/meshctl-<uid> (a deep
            # checkout's, mesh/edge/admin.py) would stay there for good.
            socket_in(self.o.edge_dir).unlink(missing_ok=True)
        if self.prometheus is not None:
            await self.prometheus.stop()
        if self.sync is not None:
            await self.sync.stop()
        if self.meta is not None:
            await self.meta.stop()
        # A killed instance could not deregister: on Consul its entry would stay
        # until the agent reaps it (the embedded registry expires it by lease, and
        # ignores ids this object did not register).
        for child in self.sup.children:
            if child.spec.service:
                with contextlib.suppress(Exception):
                    await self.registry.deregister(child.spec.env["MESH_INSTANCE_ID"])


def edge_notes(
    services: Iterable[str],
    model: EdgeModel | None,
    descriptors: Path = DESCRIPTORS,
    auth: EdgeAuthOptions = EdgeAuthOptions(),  # noqa: B008 (frozen: shared safely)
    cors: EdgeCors = NO_CORS,
) -> list[str]:
    """What a user should know of the edge (`model`, read from `descriptors`): a line for
    each service of the topology it does not route, and why (its contracts are all
    internal, `meshproto.api.v1.internal`, or the set has none of them: a project's own
    contracts need their own set, `[edge] descriptors`); and one when the token issuer
    is not in the topology: until an instance of it registers, every call needing a
    login (or bearing a token) answers 401, and Envoy logs its failed key fetch every
    second (`failed_refetch_s`), which the line explains. An edge with no issuer at all
    (`jwks_service=""`) fetches nothing: a line only if some method needs a login. And
    which page origins browsers may call the edge from, when `[edge.cors]` lists any."""
    if model is None:  # no edge started
        return []
    names = set(services)
    internal = set(model.internal_clusters)
    out = []
    for name in sorted(names - set(model.clusters)):
        if name in internal:
            out.append(f"{name} is internal: not routed by the edge")
        else:
            out.append(f"{name} is not routed by the edge: no contract of it in {descriptors}")
    if auth.enabled and not auth.jwks_service:
        if login_required(model):
            out.append(
                "the edge trusts no token issuer (mesh.toml's [edge] names no [edge.auth]):"
                " methods that need a login answer 401"
            )
    elif auth.enabled and auth.jwks_service not in names:
        refused = "methods that need a login" if login_required(model) else "calls with a token"
        out.append(
            f"the edge's token issuer {auth.jwks_service!r} is not in this topology: {refused}"
            " answer 401, and Envoy logs a failed key fetch every second (name your issuer"
            " in mesh.toml's [edge.auth])"
        )
    if cors.origins:
        out.append(f"browsers: pages of {', '.join(cors.origins)} may call the edge (CORS)")
    return out


def table(
    instances: Mapping[str, list[Instance]],
    edge_port: int,
    nats_url: str,
    notes: Sequence[str] = (),
) -> str:
    """What `meshctl up` prints once the mesh is up: the instances, where the edge and
    NATS are, and `notes` (what to know of the edge: `edge_notes`)."""
    rows = [("service", "instance", "grpc", "admin", "version")]
    for name in sorted(instances):
        for i in sorted(instances[name], key=lambda i: i.id):
            rows.append((name, i.id, i.address, i.meta.get("admin_port", "-"), i.version))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    nats = redact_urls(nats_url)
    lines.append(f"edge (gRPC + REST): http://127.0.0.1:{edge_port}   nats: {nats}")
    lines.extend(notes)
    return "\n".join(lines)


def make_run_dir(run_dir: Path) -> None:
    """`up`'s run directory, made 0700 when it is made here: the mesh's state (its logs,
    traces, databases, keys) is its user's. One that exists is left as it is (it may be a
    directory the user chose; the secrets below it are in 0700 directories anyway)."""
    private_dir(run_dir, narrow=False)


async def run_up(options: UpOptions, registry: Registry) -> int:
    """Bring the mesh up and keep it in the foreground until a signal, or until the reader
    of its output leaves (`mesh.local.up_output`); returns an exit code."""
    stop = asyncio.Event()
    out = LeavableStdout(sys.stdout, stop.set)
    unwatch = out.watch_pipe(asyncio.get_running_loop())
    try:
        with contextlib.redirect_stdout(out):
            return await _run_up(options, registry, stop)
    finally:
        unwatch()


async def _run_up(options: UpOptions, registry: Registry, stop: asyncio.Event) -> int:
    run = options.run_dir.resolve()
    make_run_dir(run)
    state = run / STATE_FILE
    pid = running_up(run)
    if pid is not None and pid != os.getpid():
        raise UpError(f"meshctl up is already running (pid {pid}); `meshctl down` stops it")
    sup = Supervisor(state_file=run / PROCESSES_FILE)
    mesh = LocalMesh(options, registry, sup)
    mesh.preflight()  # a refusal has nothing to stop
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    write_record(run, edge_port=options.edge_port)
    try:
        await mesh.start()
        ready = asyncio.create_task(mesh.wait_ready())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stopped in done:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpError):
                await ready
            return 0
        stopped.cancel()
        notes = edge_notes(
            (s.name for s in options.services),
            mesh.edge_model,
            options.edge_descriptors,
            options.edge_auth,
            options.edge_cors,
        )
        print(table(ready.result(), options.edge_port, mesh.nats_url, notes), flush=True)
        print("\n".join(mesh.observe.table_lines()), flush=True)
        admin = options.edge_admin.socket_path
        print(f"edge admin (your account only): curl --unix-socket {admin} http://edge/clusters")
        if mesh.prometheus is not None:
            print(f"prometheus scrape config: {mesh.prometheus.config_file}", flush=True)
        print(f"{READY_LINE}; Ctrl-C (or `meshctl down`) stops it", flush=True)
        # A failed instance is restarted by the supervisor; one that crash-loops is given
        # up on alone: the rest of the mesh keeps serving until a signal.
        await stop.wait()
        return 0
    finally:
        print("stopping the mesh...", flush=True)
        await mesh.stop()
        state.unlink(missing_ok=True)
        print("mesh stopped", flush=True)


def running_up(run_dir: Path) -> int | None:
    """The pid of the `meshctl up` running in `run_dir`, if one is (mesh/local/up_record.py:
    a stale or invalid record names none)."""
    return running_pid(run_dir)


def run_down(run_dir: Path, timeout_s: float = 30.0) -> int:
    """Stop a `meshctl up` started elsewhere (another terminal or `--detach`); only the
    process that wrote `up.json` is signalled (mesh/local/up_record.py)."""
    state = run_dir.resolve() / STATE_FILE
    try:
        record = read_record(state)
    except InvalidRecord as exc:
        print(f"meshctl down: {exc}; nothing was signalled (remove it if no `meshctl up`"
              f" runs in {run_dir})", file=sys.stderr)  # fmt: skip
        return 1
    if record is None:
        print(f"no mesh is running (no {state})")
        return 0
    pid = record.pid
    if not is_running(record):
        state.unlink(missing_ok=True)
        print(f"no mesh is running; removing stale {state} (pid {pid} is gone or is"
              " another process now)")  # fmt: skip
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(record):
            print(f"mesh (pid {pid}) stopped")
            return 0
        time.sleep(0.1)  # polling for the process to exit
    print(f"mesh (pid {pid}) did not stop within {timeout_s:.0f}s")
    return 1
