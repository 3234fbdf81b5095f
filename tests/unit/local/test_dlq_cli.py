"""`meshctl events dlq`: a dead letter's number is a JetStream sequence (1 to 2**64-1),
refused by argparse otherwise (NATS's own "cannot unmarshal number -1 ... uint64" leaked
before); `replay` takes numbers or `--all`, not both (`replay 1 --all` replayed all)."""

from __future__ import annotations

import pytest

from mesh.cli import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "0"],
        ["replay", "-1"],
        ["replay", "99999999999999999999999"],
        ["replay", str(2**64)],
        ["replay", "3", "x"],
        ["drop", "-5"],
        ["drop", "0"],
        ["list", "--limit", "0"],  # listed none: "no dead letters"
        ["list", "--limit", "-1"],
    ],
    ids=" ".join,
)
def test_a_number_that_is_no_dead_letter_is_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["events", "dlq", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert ": expected an integer from 1 to 18446744073709551615, got" in err or (
        "argument --limit: expected an integer >= 1, got" in err
    )


@pytest.mark.parametrize("argv", [["1", "--all"], ["--all", "1"], ["1", "2", "--all"]])
def test_replay_takes_numbers_or_all_not_both(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["events", "dlq", "replay", *argv])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_what_replay_and_drop_take() -> None:
    def parse(*argv: str) -> tuple[list[int], bool]:
        args = build_parser().parse_args(["events", "dlq", *argv])
        return args.seq, getattr(args, "all", False)

    assert parse("replay", "1", str(2**64 - 1)) == ([1, 2**64 - 1], False)
    assert parse("replay", "--all") == ([], True)
    assert parse("replay", "--all", "--subject", "order.>") == ([], True)
    assert parse("replay") == ([], False)  # the command says: numbers or --all
    assert parse("drop", "12", "15") == ([12, 15], False)
