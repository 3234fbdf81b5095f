"""Orders through the edge: v2 CreateOrder over REST and gRPC on a `meshctl up` stack.

Run: `python -m bench orders [--seconds 10] [--levels 1,16,64] [--api rest,grpc]
[--database sqlite|postgresql]`.
Starts the whole shop as `meshctl up` does (tests/support/local_mesh.py: its own
nats-server, two orders and two inventory instances, users, payments, the Envoy
edge), each service on its own SQLite file (the default, as `make run`) or, with
`--database postgresql`, on a fresh database of its own on the PostgreSQL the tests
use (127.0.0.1:5432, trust auth; `tests/support/shop.py`'s `pg_databases`, dropped
afterwards; the two instances of a service share theirs), signs a few users up
through the edge (CreateUser, then Authenticate for an access token sent as
`authorization: Bearer ...` on every order), creates products with ample stock, then
places orders at each concurrency level for `--seconds` and reports:

- orders/s (completed orders only; anything else is counted as an error), p50/p99
  (the JSON row also has `latency_ms`: p10 to p99.9 and the maximum; at 16 clients
  latency is queueing, and its spread tells whether a slow path or throughput is to blame);
- CPU per order per process (ms): utime + stime from /proc/<pid>/stat before and
  after the level, for the edge (Envoy), each orders, inventory, payments and users
  instance and NATS; and apart (`load_cpu_ms_per_order`, not in the total), this
  process's own: the load generator's clients and the stack's supervisor, which share
  the box with the shop;
- a lower bound of the CPU an order must cost, from measured per-hop costs: a cheap
  read through the edge (GetProduct, REST) gives the edge's CPU per request and a
  server's CPU per call; an order is one edge request plus two mesh calls
  (ReserveItems, Charge; orders asks users about a user once, and inventory confirms
  the reservation on `order.completed` since 6 Dec 2026),
  each paying a client side and a server side (taken as two servers' cost), with
  no database work at all.
  bound orders/s = CPUs / that cost; achieved / bound is reported (the issue's
  goal: >= 0.6);
- with `--profile`, the top five costs of one orders process (py-spy record while
  the 16-client REST level runs).

`headline_orders(duration_s)` is what `bench summary` calls (REST, 16 clients).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from shop.orders.v2 import orders_pb2, orders_pb2_grpc

from bench import host
from tests.support.local_mesh import Stack, local_mesh
from tests.support.shop import pg_databases

log = logging.getLogger(__name__)

GOOD_CARD = "4242424242424242"
PASSWORD = "correct horse battery staple"
USERS = 8
PRODUCTS = 8
# Mesh calls an order makes besides the edge request (see the module docstring).
# GetUser is not among them: orders asks users once per user and process, and the
# bench's USERS place every order.
MESH_CALLS_PER_ORDER = 2
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of `pid` (and its reaped children: none here) in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


# The spread reported beside p50/p99 (`latency_ms` in a level's JSON row).
SPREAD = (10, 25, 50, 75, 90, 95, 99, 99.9)


def spread(values: list[float]) -> dict[str, float]:
    """{"p10": ..., "p99.9": ..., "max": ...} in ms, rounded to 0.1."""
    out = {f"p{p:g}": round(pct(values, p), 1) for p in SPREAD}
    out["max"] = round(max(values, default=0.0), 1)
    return out


def processes(stack: Stack) -> dict[str, int]:
    """Process name -> pid: edge, each service instance, nats."""
    out: dict[str, int] = {}
    for child in stack.supervisor.children:
        if child.running:
            name = "edge" if child.spec.name == "envoy" else child.spec.name
            out[name] = child.proc.pid
    proc = getattr(stack.nats, "_proc", None)
    if proc is not None:
        out["nats"] = proc.pid
    return out


@dataclass
class Account:
    user_id: str
    token: str


@dataclass
class Level:
    api: str
    clients: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_ms_per_order: dict[str, float] = field(default_factory=dict)
    load_cpu_ms_per_order: float = 0.0

    @property
    def orders_per_s(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "api": self.api,
            "clients": self.clients,
            "orders_per_s": round(self.orders_per_s, 1),
            "p50_ms": round(pct(self.latencies_ms, 50), 1),
            "p99_ms": round(pct(self.latencies_ms, 99), 1),
            "latency_ms": spread(self.latencies_ms),
            "errors": dict(self.errors),
            "cpu_ms_per_order": self.cpu_ms_per_order,
            "cpu_ms_per_order_total": round(sum(self.cpu_ms_per_order.values()), 2),
            "load_cpu_ms_per_order": self.load_cpu_ms_per_order,
        }


def _body(text: str) -> Any:
    """A reply's JSON, or its text when it is none: Envoy's own answers (a 503 "upstream
    connect error", a 504 "upstream request timeout") are plain text, and a benchmark
    under load must say which one it got rather than fail on decoding it."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class Shop:
    """The bench's clients of the edge: REST (aiohttp, keep-alive) and gRPC (one channel)."""

    def __init__(self, edge_port: int) -> None:
        self.base = f"http://127.0.0.1:{edge_port}"
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{edge_port}")
        self.orders = orders_pb2_grpc.OrderServiceStub(self.channel)

    async def close(self) -> None:
        await self.http.close()
        await self.channel.close(None)

    async def post(self, path: str, doc: Any, token: str = "") -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        async with self.http.post(self.base + path, json=doc, headers=headers) as r:
            return r.status, _body(await r.text())

    async def get(self, path: str, token: str = "") -> tuple[int, Any]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        async with self.http.get(self.base + path, headers=headers) as r:
            return r.status, _body(await r.text())

    async def sign_up(self, tag: str, i: int) -> Account:
        email = f"bench.{tag}.{i}@example.com"
        doc = {"email": email, "password": PASSWORD, "profile": {"display_name": f"Bench {i}"}}
        status, user = await self.post("/api/v1/users", doc)
        if status != 200:
            raise RuntimeError(f"CreateUser answered {status}: {user}")
        status, auth = await self.post("/api/v1/sessions", {"email": email, "password": PASSWORD})
        if status != 200:
            raise RuntimeError(f"Authenticate answered {status}: {auth}")
        # The access token (a JWT) is what the edge verifies; older stacks ignore it.
        return Account(user["userId"], auth.get("accessToken") or auth.get("sessionToken", ""))

    async def admin(self, stack: Stack, tag: str) -> Account:
        """An admin (products need the role): `create-admin` against the stack's users
        database with the users service's environment, then a login through the edge."""
        email = f"bench.admin.{tag}@example.com"
        users = next(c for c in stack.supervisor.children if c.spec.service == "users")
        res = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.users.admin", "create-admin", "--email", email],
            input=f"{PASSWORD}\n",
            env=dict(users.spec.env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"create-admin: {res.stdout}{res.stderr}")
        status, auth = await self.post("/api/v1/sessions", {"email": email, "password": PASSWORD})
        if status != 200:
            raise RuntimeError(f"Authenticate answered {status}: {auth}")
        return Account(auth["userId"], auth["accessToken"])

    async def product(self, tag: str, i: int, token: str) -> str:
        doc = {
            "sku": f"BENCH-{tag}-{i}",
            "name": f"Bench product {i}",
            "price": {"currency_code": "USD", "amount_minor": "1999"},
            "initial_stock": "100000000",
        }
        status, product = await self.post("/api/v1/products", doc, token)
        if status != 200:
            raise RuntimeError(f"CreateProduct answered {status}: {product}")
        return str(product["productId"])

    def order_doc(self, account: Account, product_id: str) -> dict[str, Any]:
        return {
            "idempotency_key": str(uuid.uuid4()),
            "user_id": account.user_id,
            "items": [{"product_id": product_id, "quantity": 1}],
            "currency_code": "USD",
            "card": {"number": GOOD_CARD, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
            "shipping_address": {"recipient": "Bench", "lines": ["1 Bench Way"],
                                 "city": "London", "country_code": "GB"},
        }  # fmt: skip

    async def order_rest(self, account: Account, product_id: str) -> str:
        status, body = await self.post(
            "/api/v2/orders", self.order_doc(account, product_id), account.token
        )
        if status != 200:
            code = body.get("code", status) if isinstance(body, dict) else status
            return f"http {status} {code}"
        return str(body.get("status", "?"))

    async def order_grpc(self, account: Account, product_id: str) -> str:
        d = self.order_doc(account, product_id)
        req = orders_pb2.CreateOrderRequest(
            idempotency_key=d["idempotency_key"],
            user_id=account.user_id,
            items=[orders_pb2.OrderItem(product_id=product_id, quantity=1)],
            currency_code="USD",
            card=orders_pb2.PaymentCard(number=GOOD_CARD, exp_month=12, exp_year=2030, cvc="123"),
            shipping_address=orders_pb2.Address(
                recipient="Bench", lines=["1 Bench Way"], city="London", country_code="GB"
            ),
        )
        try:
            order = await self.orders.CreateOrder(
                req, metadata=(("authorization", f"Bearer {account.token}"),), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            return f"grpc {exc.code().name}"
        return orders_pb2.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_")


async def prepare(shop: Shop, stack: Stack) -> tuple[list[Account], list[str]]:
    """The bench's customers (signed up and logged in through the edge) and products
    with ample stock (made by an admin), for placing orders on `stack`."""
    tag = uuid.uuid4().hex[:8]
    accounts = await asyncio.gather(*(shop.sign_up(tag, i) for i in range(USERS)))
    seller = await shop.admin(stack, tag)
    products = [await shop.product(tag, i, seller.token) for i in range(PRODUCTS)]
    return list(accounts), products


async def run_level(
    shop: Shop,
    pids: dict[str, int],
    api: str,
    clients: int,
    seconds: float,
    accounts: list[Account],
    products: list[str],
    during: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> Level:
    place = shop.order_rest if api == "rest" else shop.order_grpc
    level = Level(api, clients, seconds)
    # A short warm-up at the level's concurrency (connections, caches), not measured.
    warm_until = time.monotonic() + min(1.0, seconds / 4)

    async def client(k: int, until: float, record: bool) -> None:
        n = k
        while time.monotonic() < until:
            account, product = accounts[n % len(accounts)], products[n % len(products)]
            n += clients
            t0 = time.perf_counter()
            try:
                status = await place(account, product)
            except Exception as exc:  # a client error counts, the run goes on
                status = type(exc).__name__
            if not record:
                continue
            if status in ("COMPLETED", "ORDER_STATUS_COMPLETED"):
                level.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            else:
                level.errors[status] += 1

    await asyncio.gather(*(client(k, warm_until, False) for k in range(clients)))
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    load_before = cpu_s(os.getpid())
    start = time.monotonic()
    extra: list[asyncio.Task[None]] = [asyncio.create_task(during())] if during else []
    await asyncio.gather(*(client(k, start + seconds, True) for k in range(clients)))
    level.seconds = time.monotonic() - start
    after = {name: cpu_s(pid) for name, pid in pids.items()}
    load = cpu_s(os.getpid()) - load_before
    await asyncio.gather(*extra, return_exceptions=True)
    done = max(1, len(level.latencies_ms))
    level.load_cpu_ms_per_order = round(load * 1e3 / done, 2)
    level.cpu_ms_per_order = {
        name: round((after[name] - before[name]) * 1e3 / done, 2) for name in pids
    }
    return level


async def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU ms per second each process burns with no load (timers, polls, heartbeats)."""
    before = {n: cpu_s(p) for n, p in pids.items()}
    await asyncio.sleep(seconds)  # measuring the idle stack
    return {n: round((cpu_s(p) - before[n]) * 1e3 / seconds, 1) for n, p in pids.items()}


async def hop_costs(
    shop: Shop, pids: dict[str, int], product: str, seconds: float
) -> dict[str, float]:
    """CPU ms per cheap request through the edge (GetProduct, 16 in flight): the edge's
    share and the serving instances' share (= one server-side mesh hop)."""
    inv = [n for n in pids if n.startswith("inventory")]
    before = {n: cpu_s(pids[n]) for n in ["edge", *inv]}
    calls = 0
    until = time.monotonic() + seconds

    async def one() -> None:
        nonlocal calls
        while time.monotonic() < until:
            status, _ = await shop.get(f"/api/v1/products/{product}")
            calls += status == 200

    await asyncio.gather(*(one() for _ in range(16)))
    after = {n: cpu_s(pids[n]) for n in before}
    calls = max(calls, 1)
    edge = (after["edge"] - before["edge"]) * 1e3 / calls
    server = sum(after[n] - before[n] for n in inv) * 1e3 / calls
    # An order: one edge request served by orders, and its mesh hops (a client and a server).
    per_order = edge + server + MESH_CALLS_PER_ORDER * 2 * server
    cpus = os.cpu_count() or 1
    return {
        "reads_per_s": round(calls / seconds, 1),
        "edge_ms_per_request": round(edge, 3),
        "server_ms_per_call": round(server, 3),
        "bound_cpu_ms_per_order": round(per_order, 2),
        "bound_orders_per_s": round(cpus * 1e3 / per_order, 1),
    }


async def profile_orders(pid: int, seconds: float, out: Path) -> list[str]:
    """py-spy record (`--gil`: only the thread running Python, so idle waits do not count)
    of the orders process for `seconds`: the top five self costs and the top five project
    frames by inclusive time (a line saying why if py-spy is missing or may not attach)."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        return ["(py-spy not installed: pip install py-spy)"]
    proc = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
        "--format", "raw", "--gil", "--output", str(out),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    raw = await asyncio.to_thread(lambda: out.read_text() if out.exists() else "")
    if proc.returncode != 0 or not raw:
        return [f"(py-spy failed: {err.decode()[-300:].strip()})"]
    return top_costs(raw)


async def _profile_into(
    out: list[str], pid: int, seconds: float, base: Path, keep: Path | None
) -> None:
    out.extend(await profile_orders(pid, seconds, base / "orders.spy"))
    if keep is not None and (base / "orders.spy").exists():
        shutil.copyfile(base / "orders.spy", keep)


def top_costs(raw: str, k: int = 5) -> list[str]:
    """From py-spy's collapsed stacks: top `k` functions by self time, then top `k`
    frames of this project (mesh/, services/, interceptors/, base/) by inclusive time."""
    selfc: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        selfc[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return ["(no samples)"]
    ours = ("(mesh/", "(services/", "(interceptors/", "(base/")
    entry = ("main (", "<module> (", "run_service (")
    out = [f"self {100 * c / total:5.1f}%  {f}" for f, c in selfc.most_common(k) if f]
    project = [
        (f, c)
        for f, c in incl.most_common()
        if any(p in f for p in ours) and not f.startswith(entry)
    ]
    out += [f"incl {100 * c / total:5.1f}%  {f}" for f, c in project[:k]]
    return out


@contextlib.asynccontextmanager
async def database_env(database: str) -> AsyncIterator[dict[str, str]]:
    """The stack's `<SERVICE>_DATABASE_URL`s: none for SQLite (each service its file),
    a fresh PostgreSQL database per service (dropped on exit) for "postgresql"."""
    if database == "sqlite":
        yield {}
        return
    if database != "postgresql":
        raise ValueError(f"database {database!r}: sqlite or postgresql")
    async with pg_databases() as urls:
        yield {f"{service.upper()}_DATABASE_URL": url for service, url in urls.items()}


async def measure(
    seconds: float,
    levels: list[int],
    apis: list[str],
    *,
    profile: bool,
    base: Path,
    profile_process: str = "orders",
    profile_raw: Path | None = None,
    database: str = "sqlite",
) -> dict[str, Any]:
    async with (
        database_env(database) as env,
        local_mesh(base / "stack", env=env) as stack,
    ):
        shop = Shop(stack.edge.port)
        try:
            pids = processes(stack)
            accounts, products = await prepare(shop, stack)
            idle = await idle_cpu(pids, min(2.0, seconds))
            hops = await hop_costs(shop, pids, products[0], min(3.0, seconds))
            rows: list[dict[str, Any]] = []
            profiled: list[str] = []
            for api in apis:
                for clients in levels:
                    during: Callable[[], Coroutine[Any, Any, None]] | None = None
                    target = next((p for n, p in pids.items() if n.startswith(profile_process)), 0)
                    if profile and api == apis[0] and clients == 16 and target:
                        during = functools.partial(
                            _profile_into,
                            profiled,
                            target,
                            max(1.0, seconds - 1),
                            base,
                            profile_raw,
                        )

                    level = await run_level(
                        shop, pids, api, clients, seconds, list(accounts), products, during
                    )
                    row = level.row()
                    row["achieved_vs_bound"] = round(
                        row["orders_per_s"] / hops["bound_orders_per_s"], 3
                    )
                    rows.append(row)
                    print(_line(row), flush=True)
            return {
                "host": host.describe(),
                "database": database,
                "levels": rows,
                "hops": hops,
                "idle_cpu_ms_per_s": idle,
                "profile": profiled,
            }
        finally:
            await shop.close()


def _line(r: dict[str, Any]) -> str:
    cpu = " ".join(f"{k}={v}" for k, v in r["cpu_ms_per_order"].items())
    errs = f" errors {r['errors']}" if r["errors"] else ""
    return (
        f"{r['api']:4s} {r['clients']:3d} clients: {r['orders_per_s']:7.1f} orders/s"
        f"  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms"
        f"  CPU ms/order {r['cpu_ms_per_order_total']:6.2f} ({cpu};"
        f" load generator {r['load_cpu_ms_per_order']}, not counted)"
        f"  achieved/bound {r['achieved_vs_bound']}{errs}"
    )


async def headline_orders(duration_s: float = 10.0, database: str = "sqlite") -> dict[str, Any]:
    """For `bench summary`: REST at 16 clients for `duration_s`:
    {"orders_per_s", "p50_ms", "p99_ms", "achieved_vs_bound", ...}."""
    with tempfile.TemporaryDirectory(prefix="bench-orders-") as tmp:
        r = await measure(
            duration_s, [16], ["rest"], profile=False, base=Path(tmp), database=database
        )
    row = r["levels"][0]
    return {
        "orders_per_s": row["orders_per_s"],
        "orders_p50_ms": row["p50_ms"],
        "orders_p99_ms": row["p99_ms"],
        "orders_latency_ms": row["latency_ms"],
        "orders_cpu_ms": row["cpu_ms_per_order_total"],
        "orders_vs_bound": row["achieved_vs_bound"],
        "orders_errors": sum(row["errors"].values()),
    }


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0, help="per level")
    p.add_argument("--levels", default="1,16,64")
    p.add_argument("--api", default="rest,grpc")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--profile-process", default="orders", help="which process py-spy records (name prefix)"
    )
    p.add_argument(
        "--profile-raw", type=Path, default=None, help="keep py-spy's collapsed stacks here"
    )
    p.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="each service's database: its SQLite file, or a fresh database on 127.0.0.1:5432",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    levels = [int(x) for x in a.levels.split(",")]
    apis = [x for x in a.api.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="bench-orders-") as tmp:
        r = asyncio.run(
            measure(
                a.seconds, levels, apis, profile=a.profile, base=Path(tmp),
                profile_process=a.profile_process, profile_raw=a.profile_raw,
                database=a.database,
            )
        )  # fmt: skip
    h = r["hops"]
    print(
        f"per-hop costs: edge {h['edge_ms_per_request']} ms CPU per request, a server"
        f" {h['server_ms_per_call']} ms per call ({h['reads_per_s']} reads/s) -> bound"
        f" {h['bound_cpu_ms_per_order']} ms CPU per order = {h['bound_orders_per_s']} orders/s"
    )
    print(f"idle CPU ms per second: {r['idle_cpu_ms_per_s']}")
    print(f"host: {host.line(r['host'])}")
    if r["profile"]:
        print(f"{a.profile_process} process, py-spy (16 clients, {apis[0]}):")
        for line in r["profile"]:
            print("  " + line)
    print(json.dumps(r))


if __name__ == "__main__":
    cli()


async def headline(budget: Any) -> dict[str, Any]:
    """`bench summary`'s entry (bench/summary.py `HEADLINES`): `headline_orders` sized by
    the summary's budget (a smoke budget: two seconds of orders)."""
    return await headline_orders(2.0 if getattr(budget, "smoke", False) else 10.0)
