"""`meshctl k8s secrets` with kept material it cannot use: named, not rendered."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from mesh.cli import main as meshctl

TOPOLOGY = '[services.notes]\nmodule = "notes.server"\n'


def _secrets(tmp_path: Path, material: Path) -> int:
    (tmp_path / "mesh.toml").write_text(TOPOLOGY)
    topology = str(tmp_path / "mesh.toml")
    return meshctl(["k8s", "secrets", "--material", str(material), "--topology", topology])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "the password is empty"),  # rendered as `password: ''`
        (b"\xff\xfe\n", "the password is not letters, digits and . _ ~ -"),  # a traceback
        (b"p@ss/word\n", "the password is not letters, digits and . _ ~ -"),  # a broken url
    ],
)
def test_a_kept_password_that_cannot_be_used_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, problem: str
) -> None:
    material = tmp_path / "k8s"
    (material / "db").mkdir(parents=True)
    (material / "db" / "notes.password").write_bytes(content)
    assert _secrets(tmp_path, material) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"meshctl: {material / 'db' / 'notes.password'}: {problem};")
    assert not (material / "secrets.yaml").exists()


def test_the_material_is_made_private_as_the_credentials_are(tmp_path: Path) -> None:
    """The same rule as `events credentials`: existing directories and kept files too."""
    material = tmp_path / "k8s"
    (material / "db").mkdir(parents=True)
    material.chmod(0o755)
    (material / "db").chmod(0o755)
    (material / "db" / "notes.password").write_text("kept-password\n")
    (material / "db" / "notes.password").chmod(0o644)
    assert _secrets(tmp_path, material) == 0
    for path, mode in ((material, 0o700), (material / "db", 0o700),
                       (material / "db" / "notes.password", 0o600)):  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    docs = list(yaml.safe_load_all((material / "secrets.yaml").read_text()))
    db = next(d for d in docs if d and d["metadata"]["name"] == "notes-db")
    assert db["stringData"]["password"] == "kept-password"
