"""`meshctl`'s shared options go before or after the subcommand (the README says so):
every subcommand takes `--run-dir` and `--topology` after its name."""

from __future__ import annotations

import pytest

from mesh.cli import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["traces"],  # each of these was "unrecognized arguments"
        ["pki", "show"],
        ["policy"],
        ["contracts", "build"],
        ["release", "status"],
        ["traffic", "show", "orders"],
        ["status"],  # and these took them already
        ["k8s", "render"],
        ["events", "dlq", "list"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_shared_options_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "--run-dir", "r", "--topology", "t.toml"])
    assert (args.run_dir, args.topology) == ("r", "t.toml")


def test_options_before_the_subcommand_are_kept() -> None:
    args = build_parser().parse_args(["--run-dir", "r", "--topology", "t.toml", "traces"])
    assert (args.run_dir, args.topology) == ("r", "t.toml")
    assert build_parser().parse_args(["traces"]).run_dir == ".run"
