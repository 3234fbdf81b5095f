"""`release start` refuses a version whose new migrations are not compatible (expand/contract)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mesh.release.source import SourceError, check_migrations, prepare_source, remove_source

TEMPLATE = """
from mesh.db import Migration

def migrations():
    return [{entries}]
"""


def tree(base: Path, name: str, *entries: str) -> Path:
    root = base / name
    (root / "svc").mkdir(parents=True)
    (root / "svc" / "__init__.py").write_text("")
    (root / "svc" / "store.py").write_text(TEMPLATE.format(entries=", ".join(entries)))
    return root


V1 = "Migration(1, 'tables', compatible_with_previous=True)"
EXPAND = "Migration(2, 'a nullable column', compatible_with_previous=True)"
CONTRACT = "Migration(3, 'drop a column')"


def test_expand_steps_are_accepted(tmp_path: Path) -> None:
    running, release = tree(tmp_path, "a", V1), tree(tmp_path, "b", V1, EXPAND)
    assert check_migrations(running, release, "svc.store:migrations") == ["2 (a nullable column)"]


def test_a_contract_step_is_refused_with_its_name(tmp_path: Path) -> None:
    running, release = tree(tmp_path, "a", V1), tree(tmp_path, "b", V1, EXPAND, CONTRACT)
    with pytest.raises(SourceError, match=r"3 \(drop a column\)"):
        check_migrations(running, release, "svc.store:migrations")


def test_the_running_versions_own_steps_are_not_checked_again(tmp_path: Path) -> None:
    running = tree(tmp_path, "a", V1, CONTRACT)  # already applied by the running version
    release = tree(tmp_path, "b", V1, CONTRACT, EXPAND)
    assert check_migrations(running, release, "svc.store:migrations") == ["2 (a nullable column)"]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def test_a_ref_is_checked_out_as_a_worktree_and_removed_again(tmp_path: Path) -> None:
    """What a release from a git ref and `bench side-by-side --b-ref` use."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "code.py").write_text("V = 1\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1")
    (repo / "code.py").write_text("V = 2\n")  # uncommitted: not in the ref's tree
    tree = prepare_source(repo, tmp_path / "run", "b", "HEAD")
    assert tree == (tmp_path / "run" / "releases" / "b").resolve()
    assert (tree / "code.py").read_text() == "V = 1\n"
    assert prepare_source(repo, tmp_path / "run", "b", "HEAD") == tree  # reused
    (tree / "written.txt").write_text("by a run")
    remove_source(repo, tree)
    assert not tree.exists()
    assert str(tree) not in _git(repo, "worktree", "list")
    with pytest.raises(SourceError, match="git worktree remove"):
        remove_source(repo, tree)
    with pytest.raises(SourceError, match="no-such-ref"):
        prepare_source(repo, tmp_path / "run", "c", "no-such-ref")


def test_a_kept_worktree_of_the_version_is_reused_only_for_its_own_commit(tmp_path: Path) -> None:
    """A second release of the same version from another ref is refused, naming the
    kept tree (it silently ran the first ref's code); the same ref reuses it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    for v in (1, 2):
        (repo / "code.py").write_text(f"V = {v}\n")
        _git(repo, "add", ".")
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"v{v}")
    tree = prepare_source(repo, tmp_path / "run", "3.0.0", "HEAD")
    assert (tree / "code.py").read_text() == "V = 2\n"
    with pytest.raises(SourceError, match=r"not HEAD~1 .*git worktree remove --force"):
        prepare_source(repo, tmp_path / "run", "3.0.0", "HEAD~1")
    assert (tree / "code.py").read_text() == "V = 2\n"
    assert prepare_source(repo, tmp_path / "run", "3.0.0", "HEAD") == tree
    remove_source(repo, tree)
    older = prepare_source(repo, tmp_path / "run", "3.0.0", "HEAD~1")
    assert (older / "code.py").read_text() == "V = 1\n"
