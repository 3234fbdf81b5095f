"""`meshctl pki issue --dns/--ip`: a name that is not one is refused before anything
is issued (an IP was a ValueError's traceback; `--dns 'not a name'` was issued)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.cli import main as meshctl


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--ip", "notanip", "'notanip' is not an IPv4 or IPv6 address"),
        ("--dns", "not a name", "'not a name' is not a lower-case DNS name"),
        ("--dns", "", "'' is not a lower-case DNS name"),
    ],
)
def test_extra_names_are_checked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    problem: str,
) -> None:
    monkeypatch.delenv("MESH_PKI_DIR", raising=False)
    with pytest.raises(SystemExit) as exited:
        meshctl(["--run-dir", str(tmp_path), "pki", "issue", "x", option, value])
    assert exited.value.code == 2
    assert f"argument {option}: {problem}" in capsys.readouterr().err
    assert not (tmp_path / "pki").exists()
