"""Where a release's code comes from, and whether its migrations may run beside the old.

* **Source**: the current tree (the new instances run the code `meshctl up` runs,
  with a new version and track: a rehearsal, or a config-only release), or a git
  ref checked out with `git worktree add --detach <run dir>/releases/<V> <ref>`
  (kept for the next release of the same version; `git worktree remove` deletes it).
* **Migrations**: a service names its migration list in `mesh.toml`
  (`migrations = "services.orders.store:migrations"`, a function returning
  `mesh.db.Migration`s). The list is read in a fresh interpreter in each tree (the
  running one and the release's), so the two versions' modules never mix; the
  migrations the release adds must all be `compatible_with_previous` (the
  expand/contract rule in mesh/db.py): blue and green share the database, and
  green migrates it when it starts while blue still serves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_LIST_MIGRATIONS = (
    "import importlib, json, sys; root, ref = sys.argv[1], sys.argv[2]; sys.path.insert(0, root);"
    " m, _, f = ref.partition(':'); ms = getattr(importlib.import_module(m), f)();"
    " print(json.dumps([[x.version, x.name, bool(x.compatible_with_previous)] for x in ms]))"
)


class SourceError(RuntimeError):
    """The release's source cannot be prepared or is refused; the message says why."""


def prepare_source(root: Path, run_dir: Path, version: str, ref: str) -> Path:
    """The directory to run the release from: `root` for "" (the current tree), else a
    git worktree of `ref` at `<run dir>/releases/<version>`. One kept from an earlier
    release of the version is reused only if it holds `ref`'s commit: another was run
    in its place, without a word, until 7 Dec 2026 (found on a live mesh)."""
    if not ref:
        return root
    target = run_dir.resolve() / "releases" / version
    if (target / ".git").exists():
        wanted, held = _commit(root, f"{ref}^{{commit}}"), _commit(target, "HEAD")
        if wanted != held:
            raise SourceError(
                f"{target} holds {held[:12]} (an earlier release of {version}), not {ref}"
                f" ({wanted[:12]}): release under another version, or remove it"
                f" (`git worktree remove --force {target}`)"
            )
        return target
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    done = subprocess.run(
        ["git", "-C", str(root), "worktree", "add", "--detach", str(target), ref],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SourceError(f"git worktree add {target} {ref}: {done.stderr.strip()}")
    return target


def _commit(repo: Path, rev: str) -> str:
    """The commit `rev` names in `repo`; SourceError when git cannot say."""
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", rev],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SourceError(f"git rev-parse {rev} in {repo}: not a commit {done.stderr.strip()}")
    return done.stdout.strip()


def remove_source(root: Path, tree: Path) -> None:
    """Undo `prepare_source`: the worktree `tree` of `root`'s repository, removed with
    whatever was written in it (`git worktree remove --force`); SourceError if git
    refuses."""
    done = subprocess.run(
        ["git", "-C", str(root), "worktree", "remove", "--force", str(tree)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SourceError(f"git worktree remove {tree}: {done.stderr.strip()}")


def migrations_of(tree: Path, ref: str) -> list[tuple[int, str, bool]]:
    """(version, name, compatible_with_previous) of `ref` as the code in `tree` has it."""
    done = subprocess.run(
        [sys.executable, "-c", _LIST_MIGRATIONS, str(tree), ref],
        capture_output=True,
        text=True,
        cwd=tree,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SourceError(f"cannot list the migrations {ref} in {tree}: {tail[0]}")
    return [(int(v), str(n), bool(c)) for v, n, c in json.loads(done.stdout)]


def check_migrations(running: Path, release: Path, ref: str) -> list[str]:
    """The migrations `release` adds over `running` (by version); raises SourceError
    naming those not compatible with the running version."""
    known = {v for v, _, _ in migrations_of(running, ref)}
    new = [(v, n, c) for v, n, c in migrations_of(release, ref) if v not in known]
    bad = [f"{v} ({n})" for v, n, c in new if not c]
    if bad:
        raise SourceError(
            f"refused: migration(s) {', '.join(bad)} are not compatible with the running"
            " version (contract steps: ship them in a later release, after no running"
            " version uses what they change; see `Releases` in the README)"
        )
    return [f"{v} ({n})" for v, n, _ in new]
