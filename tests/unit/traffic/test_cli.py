"""`meshctl traffic` without a fleet: which registry it uses, the services it accepts, and
that reading creates nothing (the fleet's set/show/refusals: tests/integration/traffic)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mesh.cli import main as meshctl
from mesh.discovery import locate
from mesh.release.state import save
from tests.support.releases import gone_pid, record_release

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def live_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The registry of a `meshctl up` recorded for this user (the fallback), and a
    working directory with no `.run` and no mesh.toml."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("MESH_REGISTRY", "embedded")
    for name in ("MESH_REGISTRY_DIR", "CONSUL_HTTP_ADDR"):
        monkeypatch.delenv(name, raising=False)
    registry = tmp_path / "live" / "registry"
    registry.mkdir(parents=True, mode=0o700)
    locate.record(registry, pid=os.getpid())  # alive: this process stands in for `up`
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return registry


def test_a_run_dir_given_is_the_only_one_used(
    tmp_path: Path, live_mesh: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo'd --run-dir changed the recorded live mesh's policy until 7 Dec 2026."""
    typo = tmp_path / "typo"
    for argv in (["show", "orders"], ["set", "orders"], ["clear", "orders"]):
        assert meshctl(["--run-dir", str(typo), "traffic", *argv]) == 1, argv
        assert f"no embedded registry in {typo}" in capsys.readouterr().err
    assert not (live_mesh / "traffic").exists() and not typo.exists()
    # The control: with no --run-dir (and no ./.run) the recorded mesh is the one used.
    assert meshctl(["traffic", "set", "orders"]) == 0
    assert (live_mesh / "traffic" / "orders.json").is_file()
    capsys.readouterr()
    assert meshctl(["traffic", "show", "orders"]) == 0
    assert f"stored in file {live_mesh}/traffic/orders.json" in capsys.readouterr().out


def test_a_service_the_topology_does_not_name_is_refused(
    tmp_path: Path, live_mesh: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run" / "registry").mkdir(parents=True, mode=0o700)
    base = ["--topology", str(ROOT / "mesh.toml"), "--run-dir", str(tmp_path / "run"), "traffic"]
    assert meshctl([*base, "set", "nope-svc"]) == 2
    assert "'nope-svc' is not a service of" in capsys.readouterr().err
    for command in ("show", "clear"):  # a typo is not "no policy (one pool)", exit 0
        assert meshctl([*base, command, "nope-svc"]) == 2
        assert "'nope-svc' is not a service of" in capsys.readouterr().err
    assert meshctl([*base, "show", "orders"]) == 0
    assert "no traffic policy" in capsys.readouterr().out
    assert not (tmp_path / "run" / "registry" / "traffic").exists()
    assert meshctl([*base, "set", "orders"]) == 0  # the control: the shop's service
    assert (tmp_path / "run" / "registry" / "traffic" / "orders.json").is_file()


def test_reading_creates_no_directory(
    tmp_path: Path, live_mesh: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`traffic show` made `<registry>/traffic/`, `status` made `.run/registry`."""
    run = tmp_path / "run"
    (run / "registry").mkdir(parents=True, mode=0o700)
    assert meshctl(["--run-dir", str(run), "traffic", "show", "orders"]) == 0
    assert "no traffic policy" in capsys.readouterr().out
    assert not (run / "registry" / "traffic").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert meshctl(["--topology", str(ROOT / "mesh.toml"), "--run-dir", str(empty), "status"]) == 1
    assert "no mesh is running" in capsys.readouterr().out
    assert list(empty.iterdir()) == []


def test_the_weights_are_refused_while_a_release_runs(
    tmp_path: Path, live_mesh: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`clear` and `set --one-pool` during a release were stored with exit 0 until 7 Dec
    2026 (`release status` then showed weights not in force). Faults stay allowed."""
    assert meshctl(["traffic", "set", "orders", "--fault", "abort_percent=5"]) == 0
    stored = (live_mesh / "traffic" / "orders.json").read_bytes()
    release = record_release(live_mesh.parent, "orders")  # the mesh of the registry found
    for argv in (["clear", "orders"], ["set", "orders", "--one-pool"]):
        assert meshctl(["traffic", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert "the release of orders to 2.0.0 (blue 100 / green 0, shifting)" in err, err
        assert "use `meshctl release promote|rollback|abort orders`" in err
    assert (live_mesh / "traffic" / "orders.json").read_bytes() == stored
    # Faults alone are not the release's: allowed (the README's walkthrough sets one).
    assert meshctl(["traffic", "set", "orders", "--fault", "abort_percent=20"]) == 0
    assert "abort 20%" in capsys.readouterr().out
    assert meshctl(["traffic", "set", "other", "--one-pool"]) == 0  # another service: no release
    # Once the release has ended, the weights are the user's again.
    release.phase = "promoted"
    save(live_mesh.parent, release)
    assert meshctl(["traffic", "set", "orders", "--one-pool"]) == 0
    assert meshctl(["traffic", "clear", "orders"]) == 0


def test_a_release_whose_mesh_stopped_does_not_lock_the_weights(
    tmp_path: Path, live_mesh: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `meshctl up` killed mid-release leaves an active state (its next start marks it
    failed); with no controller alive to promote or roll back, nothing owns the weights."""
    record_release(live_mesh.parent, "orders", controller_pid=gone_pid())
    assert meshctl(["traffic", "set", "orders", "--one-pool"]) == 0
    assert meshctl(["traffic", "clear", "orders"]) == 0
    assert "refused" not in capsys.readouterr().err
