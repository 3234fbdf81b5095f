"""`meshctl` as a person types it: help, version, options after the subcommand, status
with no mesh running, status of a mesh with an instance given up on, and of the mesh's
own processes (the edge, nats-server, the trace sink), and `events tail` with no mesh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from mesh.events.nats_auth import new_user_seed
from tests.support.ports import free_port
from tests.support.short_dir import short_tmp_dir


def _meshctl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "CONSUL_"))}
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=cwd, check=False,
    )  # fmt: skip


def test_no_arguments_prints_help() -> None:
    r = _meshctl()
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: meshctl")
    for command in ("up", "down", "status", "demo", "edge", "events"):
        assert f"\n    {command} " in r.stdout


def test_version() -> None:
    r = _meshctl("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"meshctl (shop-mesh) {version('shop-mesh')}"


def test_status_with_no_mesh_says_so_and_where_it_looked(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for args in (("status", "--run-dir", str(run)), ("--run-dir", str(run), "status")):
        r = _meshctl(*args)
        assert r.returncode == 1, r.stdout + r.stderr
        assert r.stdout.startswith("no mesh is running")
        assert str(run / "processes.json") in r.stdout
        assert f"the embedded registry {run / 'registry'}" in r.stdout


def test_up_too_deep_with_a_socket_directory_others_may_use_refuses_and_says_so(
    tmp_path: Path,
) -> None:
    """From a run directory too deep for the edge's admin socket, the socket goes to the
    account's own short directory (mesh/edge/admin.py). When that directory is open to
    other accounts (as if one had made the name first), `up` refuses at once, names the
    directory, why and the way out, and starts nothing. meshctl runs with the short
    directory pointed at one the test owns (the real /tmp/meshctl-<uid> is shared)."""
    with short_tmp_dir() as short:
        os.chmod(short, 0o777)
        deep = tmp_path / ("d" * 40) / ("e" * 40) / "run"
        r = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path;"
             "import mesh.edge.admin as a; a.short_socket_dir = lambda: Path(sys.argv[1]);"
             "from mesh.cli import main; sys.exit(main(sys.argv[2:]))",
             str(short), "up", "--run-dir", str(deep)],
            capture_output=True, text=True, timeout=60, check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("MESH_")},
        )  # fmt: skip
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"{short} is open to other accounts (mode 777)" in r.stderr, r.stderr
        assert "too deep for the Envoy admin socket" in r.stderr and "--run-dir" in r.stderr
        assert "stopping the mesh" not in r.stdout, r.stdout  # it never started
        assert not (deep / "nats").exists() and not (deep / "edge").exists()
        assert list(short.iterdir()) == []


def test_an_unknown_option_is_refused() -> None:
    r = _meshctl("status", "--no-such-option")
    assert r.returncode == 2
    assert "unrecognized arguments: --no-such-option" in r.stderr


def test_status_names_an_instance_given_up_on(tmp_path: Path) -> None:
    """The supervisor's state file of a live `meshctl up` (this process stands in for it)."""
    (tmp_path / "processes.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "processes": [
                    {
                        "name": "orders-1",
                        "service": "orders",
                        "pid": 1,
                        "state": "gave up",
                        "restarts": 4,
                        "last_exit": 3,
                    }
                ],
            }
        )
    )
    r = _meshctl("status", "--run-dir", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "!!! orders-1: GAVE UP after a crash loop (last exit 3, 4 restarts)" in r.stdout
    assert any(line.split()[:2] == ["orders", "-"] for line in r.stdout.splitlines())


def test_status_shows_the_mesh_s_own_processes(tmp_path: Path) -> None:
    """The edge, nats-server and the trace sink register nowhere: their rows come from the
    supervisor's state file, with how the last run of each ended."""
    procs = [
        ("nats", 101, "running", 0, None),
        ("traces", 102, "running", 1, 1),
        ("envoy", None, "restarting", 2, -9),  # between two runs: no pid
        ("orders-1", 104, "running", 0, None),
    ]
    (tmp_path / "processes.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "processes": [
                    {
                        "name": name,
                        "service": "orders" if name == "orders-1" else "",
                        "pid": pid,
                        "state": state,
                        "restarts": restarts,
                        "last_exit": last,
                    }
                    for name, pid, state, restarts, last in procs
                ],
            }
        )
    )
    r = _meshctl("status", "--run-dir", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("process ")))
    assert lines[header].split() == ["process", "pid", "state", "restarts", "last", "exit"]
    rows = [line.split() for line in lines[header + 2 : header + 5]]
    assert rows == [
        ["nats", "101", "running", "0", "-"],
        ["traces", "102", "running", "1", "exit", "1"],
        ["envoy", "-", "restarting", "2", "SIGKILL"],
    ]
    # A service instance is in the instances' table, not this one.
    assert not any(line.startswith("orders-1") for line in lines[header:])


def test_status_without_a_live_up_shows_no_process_table(tmp_path: Path) -> None:
    """A state file left by a `meshctl up` that is gone describes nothing running."""
    (tmp_path / "processes.json").write_text(
        json.dumps(
            {
                "pid": 2**22 + 1,  # above the kernel's pid_max: no such process
                "processes": [{"name": "envoy", "service": "", "pid": 1, "state": "running",
                               "restarts": 3, "last_exit": -9}],
            }
        )
    )  # fmt: skip
    r = _meshctl("status", "--run-dir", str(tmp_path))
    assert r.returncode == 1
    assert r.stdout.startswith("no mesh is running")
    assert "envoy" not in r.stdout


def test_events_tail_with_no_mesh_or_a_stopped_one_says_so(tmp_path: Path) -> None:
    """Never a traceback, and never whatever NATS answers on 4222 (this machine has one)."""
    env_nats = {k: v for k, v in os.environ.items() if k.startswith("NATS_")}
    assert not env_nats, env_nats  # the test is about NATS_URL not being set
    r = _meshctl("--run-dir", str(tmp_path / "never"), "events", "tail", "user.*")
    assert r.returncode == 1, r
    assert "no mesh has run in" in r.stderr and "NATS_URL is not set" in r.stderr, r.stderr
    # A mesh that ran and stopped leaves its NATS address and meshctl's seed behind.
    nats_dir = tmp_path / "stopped" / "nats"
    nats_dir.mkdir(parents=True)
    (nats_dir / "server.json").write_text(json.dumps({"url": f"nats://127.0.0.1:{free_port()}"}))
    (nats_dir / "meshctl.nk").write_bytes(new_user_seed())
    r = _meshctl("--run-dir", str(tmp_path / "stopped"), "events", "tail", "user.*")
    assert r.returncode == 1, r
    assert "cannot use NATS at nats://127.0.0.1:" in r.stderr, r.stderr
    assert "is the mesh running?" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_release_commands_with_no_mesh_say_so_at_once(tmp_path: Path) -> None:
    """promote, rollback and abort waited 30 s for an answer nobody would send, and left
    a request file in a run directory they created."""
    run = tmp_path / "run"
    for args in (("start", "inventory", "--version", "2.0.0"), ("promote", "inventory"),
                 ("rollback", "inventory"), ("abort", "inventory")):  # fmt: skip
        r = _meshctl("--run-dir", str(run), "release", *args)
        assert r.returncode == 1, (args, r)
        assert f"no `meshctl up` is running in {run}" in r.stderr, (args, r.stderr)
    assert not run.exists()


def test_down_with_no_mesh_names_the_run_directory_it_looked_in(tmp_path: Path) -> None:
    """It said `.run/up.json` whatever `--run-dir` was."""
    run = tmp_path / "elsewhere"
    r = _meshctl("--run-dir", str(run), "down")
    assert r.returncode == 0, r
    assert r.stdout.strip() == f"no mesh is running (no {run / 'up.json'})", r.stdout


def test_up_with_a_port_taken_says_so_before_starting_anything(tmp_path: Path) -> None:
    """It started nats-server first, so the one line that mattered came after a screen
    of NATS starting and stopping; `--detach` said "starting" and returned 0."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        topology = tmp_path / "mesh.toml"
        topology.write_text(
            f'[services.payments]\nmodule = "services.payments"\ngrpc_port = {port}\n'
        )
        run = tmp_path / "run"
        r = _meshctl("--topology", str(topology), "--run-dir", str(run), "up")
        # Detached, it waits for the background `up` and says why it stopped.
        detached = _meshctl("--topology", str(topology), "--run-dir", str(run), "up", "--detach")
    assert r.returncode == 1, r
    assert "ports already in use: [" in r.stderr and str(port) in r.stderr, r.stderr
    assert "nats" not in r.stdout, r.stdout
    assert "stopping the mesh" not in r.stdout, r.stdout  # it never started
    assert not (run / "nats").exists()
    assert detached.returncode == 1, detached
    assert "the background mesh exited (1)" in detached.stderr, detached.stderr
    assert "ports already in use: [" in detached.stderr, detached.stderr


def test_release_start_refuses_a_version_or_numbers_it_cannot_use(tmp_path: Path) -> None:
    """An empty --version started a release named '' (seen in a probe); one with a path
    in it would name a directory outside `<run dir>/releases`."""
    run = tmp_path / "run"
    for args, why in (
        (("--version", ""), "'' is not a version"),
        (("--version", "../../x"), "'../../x' is not a version"),
        (
            ("--version", "2.0.0", "--bake", "-1"),
            "argument --bake: expected a finite number >= 0, got '-1'",
        ),
        (
            ("--version", "2.0.0", "--instances", "0"),
            "argument --instances: expected an integer from 1 to 64, got 0",
        ),
    ):
        r = _meshctl("--run-dir", str(run), "release", "start", "inventory", *args)
        assert r.returncode == 2, (args, r)
        assert why in r.stderr, (args, r.stderr)
    assert not run.exists()


def test_a_subject_that_is_not_one_is_refused_before_nats(tmp_path: Path) -> None:
    """`events tail 'a b'` said NATS was unusable and asked whether the mesh runs."""
    r = _meshctl("--run-dir", str(tmp_path / "run"), "events", "tail", "order completed")
    assert r.returncode == 2 and "'order completed' is not a NATS subject" in r.stderr, r
    r = _meshctl("--run-dir", str(tmp_path / "run"), "events", "dlq", "list", "order.>.x")
    assert r.returncode == 2 and "'order.>.x' is not a NATS subject" in r.stderr, r


def test_a_path_that_cannot_be_used_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for args in (("k8s", "render", "--out", str(a_file)),
                 ("edge", "render", "--out", str(a_file / "sub"))):  # fmt: skip
        r = _meshctl(*args)
        assert r.returncode == 1, (args, r)
        assert "Traceback" not in r.stderr and str(a_file) in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """`meshctl policy | head -1`: the reader closes the pipe before meshctl writes. It ends
    as a shell tool killed by SIGPIPE does (exit 141), saying nothing (a traceback before)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "policy"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141, err
    assert err == "", err
