"""`meshctl up` as a person runs it: the real command, Ctrl-C, nothing left behind."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import stat
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from mesh.discovery import locate
from mesh.discovery.embedded import EmbeddedRegistry
from mesh.edge.admin import SOCKET_NAME, EnvoyAdmin, short_socket_dir, socket_in, socket_path_error
from tests.support.nats import nats_server
from tests.support.nats_clients import anonymous_refusal
from tests.support.poll import eventually

pytestmark = pytest.mark.asyncio(loop_scope="function")


def _cmdline(proc: Path) -> list[str]:
    try:
        return (proc / "cmdline").read_text().split("\0")[:-1]
    except OSError:  # gone meanwhile
        return []


def _started_with(option: str, value: str) -> list[Path]:
    """/proc entries of live processes whose command line has `option value`."""
    found = []
    for proc in Path("/proc").iterdir():
        argv = _cmdline(proc) if proc.name.isdigit() else []
        if any(a == option and b == value for a, b in itertools.pairwise(argv)):
            found.append(proc)
    return found


def _processes_of(run_dir: Path) -> list[int]:
    """Pids of live processes started for this run dir: services (their environment
    names its registry) and Envoy (its command line names its config there)."""
    marker = f"MESH_REGISTRY_DIR={run_dir.resolve() / 'registry'}".encode()
    config = str(run_dir.resolve() / "edge").encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (
                marker in (proc / "environ").read_bytes().split(b"\0")
                or config in (proc / "cmdline").read_bytes()
            ):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _scrape_all(targets_file: Path) -> list[str] | None:
    """Instance ids of the file-SD groups, if there are six and each serves metrics."""
    groups = json.loads(targets_file.read_text()) if targets_file.exists() else []
    if len(groups) != 6:
        return None
    for g in groups:
        with urllib.request.urlopen(f"http://{g['targets'][0]}/metrics", timeout=5) as r:
            assert b"grpc_server_handled_total" in r.read()
    return [str(g["labels"]["instance_id"]) for g in groups]


async def _meshctl_up(
    run_dir: Path, nats_url: str = "", *, output: int = asyncio.subprocess.PIPE, **extra_env: str
) -> asyncio.subprocess.Process:
    """`meshctl up --free-ports` as a user would start it: its own NATS server, or the
    user's when `nats_url` is given (NATS_URL); stdout and stderr both to `output`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "NATS_"))}
    if nats_url:
        env["NATS_URL"] = nats_url
    env["XDG_STATE_HOME"] = str(run_dir.parent / "state")  # its record, not the user's
    env.update(extra_env)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.cli", "--run-dir", str(run_dir), "up", "--free-ports",
        env=env, stdout=output, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def test_up_serves_then_ctrl_c_stops_everything(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # A data directory as an older `up` left it (0755): narrowed to 0700 at start.
    # So is its edge directory, which holds the Envoy admin's socket.
    for older in ("data", "edge"):
        (run_dir / older).mkdir(parents=True)
        os.chmod(run_dir / older, 0o755)
    # Someone else's open NATS beside it: `up` must run its own, never reuse one.
    async with nats_server(tmp_path / "nats") as foreign:
        proc = await _meshctl_up(run_dir)
        assert proc.stdout is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(90):
                while not any("mesh is up" in line for line in lines):
                    raw = await proc.stdout.readline()
                    assert raw, "meshctl up exited early:\n" + "\n".join(lines[-40:])
                    lines.append(raw.decode().rstrip())
            table = "\n".join(lines)
            for name in ("users-1", "orders-1", "orders-2", "inventory-1", "inventory-2"):
                assert name in table
            registry = EmbeddedRegistry(run_dir / "registry")
            try:
                assert len(await registry.healthy("orders")) == 2
            finally:
                await registry.close()
            assert len(_processes_of(run_dir)) >= 7  # six services and Envoy
            # Its own nats-server, authenticated, beside the foreign one.
            url = json.loads((run_dir / "nats" / "server.json").read_text())["url"]
            assert url != foreign.url and f"nats: {url}" in table
            assert "Authorization Violation" in (await anonymous_refusal(url) or "")
            for seed in (run_dir / "nats").glob("*.nk"):
                assert stat.S_IMODE(seed.stat().st_mode) == 0o600
                assert seed.read_text().strip() not in table
            # The services' databases (users': its token signing keys) are the user's only.
            data = run_dir / "data"
            assert stat.S_IMODE(data.stat().st_mode) == 0o700
            files = {f.name: stat.S_IMODE(f.stat().st_mode) for f in data.iterdir()}
            assert "users.db" in files and "users.db-wal" in files, files
            assert {
                n: m for n, m in files.items() if m & 0o077 and n.endswith((".db", "-wal", "-shm"))
            } == {}, files
            # The Envoy admin is a socket only this account may use, and on no TCP port.
            edge = run_dir / "edge"
            assert stat.S_IMODE(edge.stat().st_mode) == 0o700
            admin = edge / "admin.sock"
            assert stat.S_IMODE(os.stat(admin).st_mode) == 0o600
            assert (await EnvoyAdmin(admin).get("/ready")).strip() == "LIVE"
            assert f"curl --unix-socket {admin.resolve()} http://edge/clusters" in table
            config = yaml.safe_load((edge / "envoy.yaml").read_text())
            assert config["admin"]["address"] == {"pipe": {"path": str(admin), "mode": 0o600}}
            # Recorded for `mesh.connect` in other processes of this user (no settings).
            state = {"XDG_STATE_HOME": str(tmp_path / "state")}
            assert locate.locate(state).directory == (run_dir / "registry").resolve()
            # A user's Prometheus finds every instance: file-SD targets from the registry.
            prometheus = run_dir.resolve() / "prometheus"
            assert f"prometheus scrape config: {prometheus / 'prometheus.yml'}" in table
            scraped = await eventually(
                lambda: asyncio.to_thread(_scrape_all, prometheus / "targets.json"),
                10,
                "every instance in targets.json, serving /metrics",
            )
            assert sorted(scraped) == sorted(
                ["users-1", "orders-1", "orders-2", "inventory-1", "inventory-2", "payments-1"]
            )
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            async with asyncio.timeout(60):
                rest = (await proc.stdout.read()).decode()
                assert await proc.wait() == 0, rest[-3000:]
        finally:
            if proc.returncode is None:  # a failed assertion: stop it as a person would
                proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    assert "mesh stopped" in rest
    assert _processes_of(run_dir) == [], "orphan processes left behind"
    leftovers = [p for p in (run_dir / "registry").rglob("*.json")]
    assert leftovers == [], f"stale registrations: {leftovers}"
    assert not (run_dir / "up.json").exists()
    assert not locate.record_file({"XDG_STATE_HOME": str(tmp_path / "state")}).exists()


async def test_children_stop_when_meshctl_up_is_killed_outright(tmp_path: Path) -> None:
    """SIGKILL leaves no handler to run: the children must still not be orphaned."""
    run_dir = tmp_path / "run"
    proc = await _meshctl_up(run_dir)
    assert proc.stdout is not None
    async with asyncio.timeout(90):
        while b"mesh is up" not in (await proc.stdout.readline() or b"mesh is up"):
            pass
    assert _processes_of(run_dir), "nothing started"
    proc.kill()
    await proc.wait()
    for _ in range(150):  # poll up to 30 s for the children to exit
        if not _processes_of(run_dir):
            break
        await asyncio.sleep(0.2)  # poll, 30 s deadline above
    assert _processes_of(run_dir) == [], "children orphaned by a killed supervisor"


async def test_up_stops_in_order_when_the_reader_of_its_output_leaves(tmp_path: Path) -> None:
    """`make run 2>&1 | head -40`: the reader closes the pipe once it has its lines. `up`
    stops as on Ctrl-C: services drain and deregister, nothing is left running, no state
    file stays. Before, the first failed write killed a child's watcher (no more restarts)
    or skipped the orderly stop."""
    run_dir = tmp_path / "run"
    read_end, write_end = os.pipe()
    proc = await _meshctl_up(run_dir, output=write_end)
    os.close(write_end)
    reader = os.fdopen(read_end, "rb")
    try:
        async with asyncio.timeout(90):
            while b"mesh is up" not in (await asyncio.to_thread(reader.readline) or b"mesh is up"):
                pass
        assert _processes_of(run_dir), "nothing started"
        assert (run_dir / "up.json").exists()
    finally:
        reader.close()  # the reader leaves; up's next line (any child's log line) fails
    try:
        async with asyncio.timeout(60):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert _processes_of(run_dir) == [], "processes left behind"
    assert list((run_dir / "registry").rglob("*.json")) == [], "stale registrations"
    assert not (run_dir / "up.json").exists() and not (run_dir / "processes.json").exists()


async def test_start_up_says_what_it_waits_for_and_names_the_instance_that_fails(
    tmp_path: Path,
) -> None:
    """users cannot reach its database: the supervisor retries it, gives up on the crash
    loop, and `meshctl up` stops with users-1 named and its last log lines shown."""
    run_dir = tmp_path / "run"
    async with nats_server(tmp_path / "nats") as nats:
        proc = await _meshctl_up(
            run_dir, nats.url, USERS_DATABASE_URL="postgresql://127.0.0.1:1/nowhere"
        )
        async with asyncio.timeout(120):
            out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 1, text[-3000:]
    assert "meshctl up: starting nats-server" not in text  # ours was reachable
    assert f"meshctl up: using the NATS server at {nats.url}" in text
    assert "meshctl up: starting 6 service instances" in text
    assert "meshctl up: waiting for " in text and "users-1" in text
    assert "GIVING UP on users-1 (crash loop)" in text
    report = text[text.index("a process stopped for good during start-up") :]
    assert "--- users-1 (gave up, last exit 1); its last log lines:" in report
    assert "database postgresql+asyncpg://127.0.0.1:1/nowhere is unreachable" in report
    assert "orders-1 (" not in report  # only the failing instance is named
    assert "mesh stopped" in text
    assert _processes_of(run_dir) == []


async def test_detach_then_status_then_down(tmp_path: Path) -> None:
    """`meshctl up --detach` as a user runs it: it returns once the mesh is up in the
    background, with its log in the run directory (the user's only, as the directory
    `up` made is); a second one refuses at once; `meshctl status` reads it, and
    `meshctl down` stops it all. From a checkout nested deep: the edge's admin socket
    would not fit a socket's path in the run directory, so it is in the account's own
    /tmp/meshctl-<uid> (mesh/edge/admin.py), and the edge serves it."""
    run_dir = tmp_path / ("nested-deep/" * 4) / "run"
    assert socket_path_error(run_dir.resolve() / "edge" / SOCKET_NAME) is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "NATS_"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")

    async def meshctl(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mesh.cli", "--run-dir", str(run_dir), *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
        return proc.returncode or 0, out.decode()

    code, out = await meshctl("up", "--detach", "--free-ports")
    assert code == 0 and "mesh starting in the background" in out, out
    assert "mesh is up: `meshctl status` shows it" in out, out  # it waited for it
    log = run_dir / "up.log"
    try:
        assert "mesh is up" in log.read_text()
        code, out = await meshctl("up", "--detach", "--free-ports")
        assert code == 1 and f"already running in {run_dir}" in out, out
        assert "mesh starting" not in out, out
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        admin = Path(log.read_text().split("curl --unix-socket ", 1)[1].split()[0])
        assert admin == socket_in(run_dir.resolve() / "edge")
        assert admin.parent == short_socket_dir(), admin
        assert stat.S_IMODE(os.stat(admin.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(admin).st_mode) == 0o600
        assert (await EnvoyAdmin(admin).get("/ready")).strip() == "LIVE"
        # The background `up` keeps its log bounded (mesh/local/log_rotation.py): it was
        # told which file its stdout is, and it is that file.
        ups = await asyncio.to_thread(_started_with, "--log-file", str(log.resolve()))
        assert len(ups) == 1, ups
        assert os.readlink(ups[0] / "fd" / "1") == str(log.resolve())
        code, out = await meshctl("status")
        assert code == 0, out
        rows = {line.split()[1]: line.split() for line in out.splitlines() if line.strip()}
        for name in ("users-1", "orders-1", "orders-2", "inventory-1", "payments-1"):
            assert "healthy" in rows[name] or "degraded" in rows[name], out
            # Its pid, for a fault drill's `kill`: the process that serves it.
            environ = (
                await asyncio.to_thread(Path(f"/proc/{rows[name][2]}/environ").read_bytes)
            ).split(b"\0")
            assert f"MESH_INSTANCE_ID={name}".encode() in environ, (name, out)
        assert any(
            line.split()[:1] == ["envoy"] and line.split()[2] == "running"
            for line in out.splitlines()
        ), out
    finally:
        code, out = await meshctl("down")
    assert code == 0, out
    await eventually(lambda: _processes_of(run_dir) == [], 30, "every process stopped")
    await eventually(lambda: "mesh stopped" in log.read_text(), 10, "mesh stopped in up.log")
    assert not await asyncio.to_thread(os.path.exists, admin)  # none left in /tmp/meshctl-<uid>
