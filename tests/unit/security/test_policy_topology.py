"""`meshctl policy --topology PATH`: a topology given must be one, as for every other
command; only the default ./mesh.toml may be absent (then: the shop's contracts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.cli import main as meshctl

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("name", "problem"),
    [("typo.toml", "no such topology file"), ("a-directory", "a directory, not a topology file")],
)
def test_a_topology_given_that_is_not_one_is_refused(
    name: str,
    problem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both printed the shop's policy with exit 0 until 7 Dec 2026."""
    (tmp_path / "a-directory").mkdir()
    monkeypatch.chdir(tmp_path)
    assert meshctl(["--topology", name, "policy"]) == 2
    captured = capsys.readouterr()
    assert f"{name}: {problem}" in captured.err and captured.out == ""
    assert meshctl(["policy", "--topology", name]) == 2  # after the subcommand too


def test_the_default_topology_may_be_absent_and_a_given_one_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./mesh.toml: the shop's contracts, as before
    assert meshctl(["policy"]) == 0
    shop = capsys.readouterr().out
    assert "shop.users.v1.UserService/ValidateSession" in shop
    assert meshctl(["--topology", str(ROOT / "mesh.toml"), "policy"]) == 0
    assert capsys.readouterr().out == shop
