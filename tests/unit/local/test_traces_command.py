"""`meshctl traces` with a traces.db it cannot read: one line naming the file, exit 1.
A `--limit` that lists nothing or everything is refused (exit 2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mesh.cli import build_parser
from mesh.cli import main as meshctl


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda db: db.write_bytes(b""), "no such table: traces"),  # OperationalError
        (lambda db: db.write_bytes(b"junk " * 200), "file is not a database"),  # DatabaseError
        (lambda db: db.mkdir(), "not a file"),  # SQLite said only "disk I/O error"
    ],
    ids=["empty", "corrupt", "directory"],
)
def test_a_traces_db_that_is_not_the_sinks_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], object], problem: str
) -> None:
    db = tmp_path / "traces.db"
    make(db)
    assert meshctl(["--run-dir", str(tmp_path), "traces"]) == 1
    said = capsys.readouterr().out.strip()
    assert str(db) in said and problem in said
    assert len(said.splitlines()) == 1


@pytest.mark.parametrize("limit", ["0", "-1", str(2**63), "all"])  # 0: "no trace stored yet"
def test_a_limit_that_is_not_a_positive_count_is_refused(
    capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["traces", "--limit", limit])
    assert exited.value.code == 2
    assert "argument --limit: expected an integer from 1 to " in capsys.readouterr().err


def test_a_positive_limit_is_taken() -> None:
    assert build_parser().parse_args(["traces", "--limit", "1"]).limit == 1
    assert build_parser().parse_args(["traces"]).limit == 20
