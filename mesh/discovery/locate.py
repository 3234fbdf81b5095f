"""Where the running mesh's embedded registry is, for a process given no settings.

`meshctl up` registers its instances in `<run dir>/registry` (one directory per
mesh, so meshes in different checkouts or test runs never mix). So that
`mesh.connect` in any other process of the same user finds it with no
`MESH_REGISTRY_DIR`, `meshctl up` records that directory in one per-user file,
`$XDG_STATE_HOME/shop-mesh/current.json` (`~/.local/state/shop-mesh/...` by
default), with its pid; it removes the record when it stops.

A process resolving the default reads the record and uses the directory if
the recording `meshctl up` is still alive; otherwise (no record, unreadable,
or its process is gone) it falls back to the per-user default directory
(`$XDG_RUNTIME_DIR/shop-mesh-<uid>`, else under `$TMPDIR` or /tmp). Either
way `RegistryLocation.how` says where it looked, for error messages.

Limits: one "current" mesh per user (the last `meshctl up` wins; stopping an
older one leaves the newer record alone); the liveness check is by pid, so a
reused pid keeps a stale record for as long as that process lives (its
registry directory then simply has no live instances). `MESH_REGISTRY_DIR`
overrides all of this.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from base.processes import alive

RECORD_NAME = "current.json"


@dataclass(frozen=True, slots=True)
class RegistryLocation:
    """A registry directory and how it was found (said in "none registered" errors)."""

    directory: Path
    how: str
    # The running mesh's PKI (its CA), so a client with no settings can speak mTLS to it.
    pki_dir: Path | None = None

    def describe(self) -> str:
        return f"embedded registry {self.directory} ({self.how})"


def per_user_default(env: Mapping[str, str] | None = None) -> Path:
    """The per-user default directory, used when no running mesh is recorded."""
    e = os.environ if env is None else env
    base = e.get("XDG_RUNTIME_DIR") or e.get("TMPDIR") or "/tmp"
    return Path(base) / f"shop-mesh-{os.getuid()}"


def record_file(env: Mapping[str, str] | None = None) -> Path:
    """The per-user file in which `meshctl up` records its registry directory."""
    e = os.environ if env is None else env
    state = e.get("XDG_STATE_HOME") or str(Path(e.get("HOME") or Path.home()) / ".local" / "state")
    return Path(state) / "shop-mesh" / RECORD_NAME


def record(
    registry_dir: Path,
    *,
    pki_dir: Path | None = None,
    pid: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Record `registry_dir` (and the mesh's `pki_dir`) as the running mesh's (atomically;
    directory 0700, file 0600)."""
    path = record_file(env)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data: dict[str, object] = {
        "registry_dir": str(registry_dir.resolve()),
        "pid": pid or os.getpid(),
    }
    if pki_dir is not None:
        data["pki_dir"] = str(pki_dir.resolve())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".current-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def forget(registry_dir: Path, *, env: Mapping[str, str] | None = None) -> None:
    """Remove the record if it still names `registry_dir` (a newer mesh's record stays)."""
    path = record_file(env)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("registry_dir") == str(registry_dir.resolve()):
            path.unlink()


def locate(env: Mapping[str, str] | None = None) -> RegistryLocation:
    """The recorded running mesh's registry, else the per-user default (see module doc)."""
    path = record_file(env)
    fallback = per_user_default(env)
    try:
        data = json.loads(path.read_text())
        directory, pid = Path(str(data["registry_dir"])), int(data["pid"])
    except FileNotFoundError:
        return RegistryLocation(fallback, f"per-user default; no `meshctl up` recorded in {path}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return RegistryLocation(fallback, f"per-user default; {path} is unreadable: {exc}")
    if not alive(pid):
        return RegistryLocation(
            fallback, f"per-user default; the `meshctl up` recorded in {path} (pid {pid}) is gone"
        )
    pki = data.get("pki_dir")
    return RegistryLocation(
        directory,
        f"recorded by `meshctl up` (pid {pid}) in {path}",
        Path(str(pki)) if pki else None,
    )
