"""`meshctl release start`'s options are refused by argparse when they cannot be carried out
(exit 2, the rule), and Ctrl-C while it follows a release stops only the following."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.cli import build_parser
from mesh.local.topology import MAX_INSTANCES, TopologyError, load_topology
from mesh.release import cli

START = ["release", "start", "inventory", "--version", "7.0.0"]


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("--bake", "nan", "finite number >= 0"),  # was taken: the step never baked out
        ("--bake", "inf", "finite number >= 0"),
        ("--bake", "-inf", "finite number >= 0"),
        ("--bake", "-1", "finite number >= 0"),
        ("--bake", "soon", "finite number >= 0"),
        ("--instances", "100000", f"from 1 to {MAX_INSTANCES}"),  # was taken
        ("--instances", str(MAX_INSTANCES + 1), f"from 1 to {MAX_INSTANCES}"),
        ("--instances", "0", f"from 1 to {MAX_INSTANCES}"),
        ("--instances", "two", f"from 1 to {MAX_INSTANCES}"),
    ],
)
def test_start_refuses_what_cannot_be_carried_out(
    capsys: pytest.CaptureFixture[str], option: str, value: str, rule: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*START, f"{option}={value}"])  # "-inf" is no option
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected" in err and rule in err


def test_start_takes_the_bounds() -> None:
    args = build_parser().parse_args([*START, "--bake", "0", "--instances", "64"])
    assert (args.bake, args.instances) == (0.0, MAX_INSTANCES)
    args = build_parser().parse_args([*START, "--bake", "2.5", "--instances", "1"])
    assert (args.bake, args.instances) == (2.5, 1)


def test_the_instance_cap_is_mesh_tomls(tmp_path: Path) -> None:
    """`--instances` and mesh.toml share one cap (topology.MAX_INSTANCES)."""
    toml = tmp_path / "mesh.toml"
    service = '[services.notes]\nmodule = "notes.server"\ngrpc_port = 6000\nadmin_port = 6001\n'
    toml.write_text(f"{service}instances = {MAX_INSTANCES}\n")
    assert load_topology(toml).services[0].instances == MAX_INSTANCES
    toml.write_text(f"{service}instances = {MAX_INSTANCES + 1}\n")
    with pytest.raises(TopologyError, match=f"from 1 to {MAX_INSTANCES},"):
        load_topology(toml)


def test_ctrl_c_while_following_stops_only_the_following(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("mesh.release.cli.time.sleep", interrupted)  # Ctrl-C while it polls
    try:
        code = cli.follow(tmp_path, "inventory")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C left follow: a traceback")
    assert code == 130
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == (
        "stopped following; the release goes on (`meshctl release status` /"
        " `meshctl release rollback inventory`)"
    )
