"""`meshctl events credentials DIR`: the seeds kept there are 0600 in a 0700 directory,
whatever they were; a file that holds no seed is named, not a traceback."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mesh.cli import main as meshctl
from mesh.events.nats_auth import new_user_seed
from mesh.events.nats_credentials import CredentialsError, keep_credentials
from mesh.events.streams import default_streams

TOPOLOGY = '[services.notes]\nmodule = "notes.server"\n'


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_kept_seeds_and_their_directory_are_made_private(tmp_path: Path) -> None:
    """An existing seed at 0644 stayed 0644, an existing 0755 directory 0755 (`k8s
    secrets` made its own 0700): one rule now, `private_dir`."""
    directory = tmp_path / "creds"
    directory.mkdir()
    directory.chmod(0o755)
    seed = new_user_seed()
    (directory / "meshctl.nk").write_bytes(seed + b"\n")
    (directory / "meshctl.nk").chmod(0o644)
    kept = keep_credentials(directory, (), default_streams(()))
    assert kept.seeds["meshctl"] == seed  # reused, not replaced
    assert _mode(directory) == 0o700
    assert _mode(directory / "meshctl.nk") == 0o600
    assert _mode(directory / "dead-letters.nk") == 0o600  # made


def test_a_file_that_holds_no_seed_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "creds"
    directory.mkdir()
    (directory / "meshctl.nk").write_text("garbage\n")
    with pytest.raises(CredentialsError, match=r"meshctl\.nk: not an nkey user seed"):
        keep_credentials(directory, (), default_streams(()))
    (tmp_path / "mesh.toml").write_text(TOPOLOGY)
    argv = ["events", "credentials", str(directory), "--topology", str(tmp_path / "mesh.toml")]
    assert meshctl(argv) == 2
    err = capsys.readouterr().err
    assert (
        err == f"meshctl: {directory / 'meshctl.nk'}: not an nkey user seed (`SU...`);"
        " remove it to make a new one\n"
    )


def test_an_empty_directory_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`events credentials ""` wrote its seeds into the current directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mesh.toml").write_text(TOPOLOGY)
    with pytest.raises(SystemExit) as exited:
        meshctl(["events", "credentials", ""])
    assert exited.value.code == 2
    assert "argument directory: an empty path" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.toml"]
