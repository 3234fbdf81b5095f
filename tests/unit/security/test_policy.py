"""`meshctl policy --descriptors` with a file that is not a descriptor set."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.cli import main as meshctl


@pytest.mark.parametrize(
    ("name", "problem"),
    [("bad.binpb", "Error parsing message"), ("a-directory", "Is a directory")],
)
def test_a_descriptor_set_that_is_not_one_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, problem: str
) -> None:
    """Both were tracebacks (DecodeError, IsADirectoryError)."""
    path = tmp_path / name
    if name == "a-directory":
        path.mkdir()
    else:
        path.write_bytes(b"\xff not a descriptor set")
    assert meshctl(["policy", "--descriptors", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"meshctl policy: {path}: not a descriptor set (") and problem in err
