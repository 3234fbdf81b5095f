"""What `meshctl up` starts so the mesh can be seen: the trace sink and the dashboard.

`LocalMesh` calls this in a few places (start the sink before the services, give
them and Envoy its address, start the dashboard once the mesh is up, stop it);
the logic lives here.

- The sink is a supervised child process (`python -m mesh.local.traces`), not a
  gRPC server inside `meshctl up`: forking children after gRPC threads exist is
  unsafe, and its CPU stays apart from the edge's meta server.
- Services get the standard OTEL_* variables pointing at it (OTLP/gRPC,
  plaintext on loopback), unless the user's environment already chose an
  exporter or endpoint: then theirs wins and the sink only receives Envoy's spans.
- Each port is the configured one when free, else one the kernel picks
  (another mesh, a user's collector on 4317); the table prints the real ones.
- One admin token per run (MESH_ADMIN_TOKEN, from `secrets`) lets the dashboard
  act on a service's admin port (retry a parked saga); it is never printed.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.discovery.registry import Registry
from mesh.edge.admin import EnvoyAdmin
from mesh.events.nats_connect import NatsClientAuth
from mesh.local.dashboard.collect import Collector
from mesh.local.dashboard.server import Dashboard
from mesh.local.supervisor import Supervisor
from mesh.local.topology import ProcessSpec, module_argv
from mesh.local.traces.store import DB_NAME, DEFAULT_MAX_AGE_S, DEFAULT_MAX_SPANS
from mesh.settings import Settings

# The user's own tracing choice, which the local defaults never override.
_USER_TRACING = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


@dataclass(frozen=True, slots=True)
class ObserveOptions:
    trace_sink_port: int = 4317  # 0: a free port
    trace_max_spans: int = DEFAULT_MAX_SPANS
    trace_max_age_s: float = DEFAULT_MAX_AGE_S
    dashboard_port: int = 9900  # 0: a free port
    # How often spans leave a service or the edge for the sink (the SDK's and Envoy's
    # default is 5 s).
    export_delay_ms: int = 500

    @classmethod
    def from_settings(cls, settings: Settings) -> ObserveOptions:
        return cls(
            trace_sink_port=settings.trace_sink_port,
            trace_max_spans=settings.trace_max_spans,
            trace_max_age_s=settings.trace_max_age_s,
            dashboard_port=settings.dashboard_port,
        )


def pick_port(preferred: int) -> int:
    """`preferred` when nothing listens on it (SO_REUSEADDR: TIME_WAIT is free), else a
    port the kernel picks."""
    if preferred:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


class Observability:
    def __init__(self, options: ObserveOptions, run_dir: Path) -> None:
        self.o = options
        self.traces_db = run_dir / DB_NAME
        self.sink_port = 0
        self.admin_token = secrets.token_urlsafe(32)
        self.dashboard: Dashboard | None = None

    async def start_sink(
        self, sup: Supervisor, env: Mapping[str, str], *, python: str, source: Path | None
    ) -> None:
        import asyncio

        self.sink_port = pick_port(self.o.trace_sink_port)
        spec = ProcessSpec(
            name="traces",
            argv=module_argv(
                python, "mesh.local.traces", "--db", str(self.traces_db),
                "--port", str(self.sink_port), "--max-spans", str(self.o.trace_max_spans),
                "--max-age-s", str(self.o.trace_max_age_s), source=source,
            ),
            env=dict(env),
        )  # fmt: skip
        child = await sup.start(spec)
        deadline = time.monotonic() + 15
        while not _listening(self.sink_port):
            if not child.running or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the trace sink did not start on 127.0.0.1:{self.sink_port}:\n{child.tail()}"
                )
            await asyncio.sleep(0.05)  # poll

    def service_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """Variables every service process gets on top of `env`."""
        out = {"MESH_ADMIN_TOKEN": self.admin_token}
        if self.sink_port and not any(env.get(k) for k in _USER_TRACING):
            out.update(
                {
                    "OTEL_TRACES_EXPORTER": "otlp",
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{self.sink_port}",
                    "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
                    "OTEL_BSP_SCHEDULE_DELAY": str(self.o.export_delay_ms),
                }
            )
        return out

    def edge_options(self, env: Mapping[str, str]) -> dict[str, object]:
        """EdgeOptions overrides: Envoy's tracer exports to the sink, sampling at the
        ratio the services' `OTEL_TRACES_SAMPLER(_ARG)` set (traceidratio samplers;
        every request otherwise): the edge starts most traces, and the services'
        parent-based samplers follow its decision."""
        if not self.sink_port:
            return {}
        percent = 100.0
        sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
        if sampler.endswith("traceidratio"):
            with contextlib.suppress(ValueError):
                percent = min(100.0, max(0.0, float(env.get("OTEL_TRACES_SAMPLER_ARG") or 1) * 100))
        elif sampler.endswith("always_off"):
            percent = 0.0
        return {
            "otlp_port": self.sink_port,
            "trace_sample_percent": percent,
            "trace_flush_ms": self.o.export_delay_ms,
        }

    async def start_dashboard(
        self,
        registry: Registry,
        sup: Supervisor,
        services: Sequence[str],
        *,
        nats_url: str,
        edge_admin: EnvoyAdmin | None,
        edge_port: int,
        nats_auth: NatsClientAuth | None = None,
    ) -> str:
        collector = Collector(
            registry,
            services,
            nats_url=nats_url,
            nats_auth=nats_auth,
            edge_admin=edge_admin,
            traces_db=self.traces_db,
            processes=sup.views,
        )
        self.dashboard = Dashboard(
            collector,
            admin_token=self.admin_token,
            links=(("edge", f"http://127.0.0.1:{edge_port}"),),
        )
        await self.dashboard.start(pick_port(self.o.dashboard_port))
        return self.dashboard.url

    def table_lines(self) -> list[str]:
        lines = []
        if self.dashboard is not None:
            lines.append(f"dashboard: {self.dashboard.url}")
        if self.sink_port:
            lines.append(
                f"traces: OTLP sink 127.0.0.1:{self.sink_port} -> {self.traces_db}"
                "   (`meshctl traces`)"
            )
        return lines

    async def stop(self) -> None:
        if self.dashboard is not None:
            await self.dashboard.stop()
