"""The nats-server `meshctl up` runs: its own, authenticated, never someone else's.

`prepare_local_nats` writes, under `<run>/nats/` (0700):
- one nkey seed file per identity, `<identity>.nk` (0600), fresh at every start
  (restarting the mesh is the rotation; a seed never outlives the mesh that
  made it by more than one run);
- `nats-server.conf` (0600): JetStream, loopback only, the identities' public
  keys and their permissions (mesh/events/nats_auth.py), nobody else;
- `server.json`: the URL, so `meshctl events tail` and `meshctl demo` find the
  server (and their own `meshctl` seed) without settings.
The server listens on the NATS_URL's port (4222 by default) when it is free and
on a port the kernel picks when someone else's server holds it: the mesh never
relies on a NATS it did not configure. A NATS_URL the user set explicitly is
theirs (with their credentials, `NATS_CREDS` or `NATS_NKEY_SEED_FILE`): `up`
then starts nothing (see `UpOptions.nats_external`).

Limits: one seed per service, shared by its instances; the store (`jetstream/`
under the same directory) survives restarts, the credentials do not.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS

from mesh.events.nats_auth import (
    MESHCTL,
    EventIdentity,
    new_user_seed,
    public_key,
    render_server_config,
)
from mesh.events.nats_connect import NatsClientAuth
from mesh.events.streams import StreamSpec
from mesh.private_dir import private_dir
from mesh.tools import nats_server_binary

SERVER_INFO = "server.json"
CONFIG = "nats-server.conf"


@dataclass(frozen=True, slots=True)
class LocalNats:
    """A prepared (not yet started) local nats-server and its clients' credentials."""

    directory: Path
    host: str
    port: int
    config: Path
    seeds: Mapping[str, Path]

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def argv(self) -> tuple[str, ...]:
        return (nats_server_binary(), "-c", str(self.config))

    def client_env(self, identity: str) -> dict[str, str]:
        """The environment a process of `identity` connects with (URL and seed file). A
        service the topology's event identities do not name gets the URL alone: the
        server refuses it if it connects (it has no events to publish or consume)."""
        seed = self.seeds.get(identity)
        if seed is None:
            return {"NATS_URL": self.url}
        return {"NATS_URL": self.url, "NATS_NKEY_SEED_FILE": str(seed)}

    def client_auth(self, identity: str) -> NatsClientAuth:
        """The in-process credentials of `identity` (its seed file and private inbox), as
        `client_env` gives them to a process; none for an identity the server does not
        know."""
        seed = self.seeds.get(identity)
        if seed is None:
            return NatsClientAuth.for_identity(identity)
        return NatsClientAuth.for_identity(identity, nkey_seed_file=str(seed))

    def with_identity(self, env: Mapping[str, str], identity: str) -> dict[str, str]:
        """`env` connecting as `identity` to this server: the user's own NATS_* settings
        (credentials for another server) are dropped, not mixed in."""
        kept = {k: v for k, v in env.items() if not k.startswith("NATS_")}
        return {**kept, **self.client_env(identity)}


def _write_secret(path: Path, data: bytes) -> None:
    """Write `data` to a file only its owner can read, whatever was there before."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _kernel_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def prepare_local_nats(
    directory: Path,
    *,
    host: str = "127.0.0.1",
    preferred_port: int = 4222,
    identities: Sequence[EventIdentity],
    streams: Sequence[StreamSpec],
    extra_users: Sequence[str] = (),
    store_dir: Path | None = None,
) -> LocalNats:
    """Credentials and config for a local nats-server in `directory` (see the module doc);
    `extra_users` are raw user entries added to the config (tests add an administrator)."""
    private_dir(directory, narrow=True)
    seeds: dict[str, Path] = {}
    users: list[tuple[EventIdentity, str]] = []
    for ident in identities:
        seed = new_user_seed()
        path = directory / f"{ident.name}.nk"
        _write_secret(path, seed + b"\n")
        seeds[ident.name] = path
        users.append((ident, public_key(seed)))
    port = preferred_port if preferred_port and _port_free(host, preferred_port) else 0
    port = port or _kernel_port(host)
    config = directory / CONFIG
    text = render_server_config(
        host=host,
        port=port,
        store_dir=str(store_dir or directory),
        users=users,
        streams=streams,
        extra_users=extra_users,
    )
    _write_secret(config, text.encode())
    local = LocalNats(directory, host, port, config, seeds)
    (directory / SERVER_INFO).write_text(json.dumps({"url": local.url}))
    return local


def local_client_env(run_dir: Path, identity: str = MESHCTL.name) -> dict[str, str]:
    """NATS_URL and seed file of `identity` for the mesh `meshctl up` runs in `run_dir`,
    or {} when it runs none (a user-supplied NATS, or no mesh)."""
    directory = run_dir / "nats"
    try:
        url = str(json.loads((directory / SERVER_INFO).read_text())["url"])
    except (OSError, ValueError, KeyError):
        return {}
    seed = directory / f"{identity}.nk"
    return {"NATS_URL": url, "NATS_NKEY_SEED_FILE": str(seed)} if seed.exists() else {}


def client_for(run_dir: Path, identity: str = MESHCTL.name) -> tuple[str, NatsClientAuth] | None:
    """NATS_URL and credentials of a meshctl connection as `identity`: the user's
    settings when NATS_URL is set, else that identity of the mesh `up` runs in
    `run_dir`; None when neither (never whatever NATS answers on 4222)."""
    from mesh.events.nats_connect import client_auth
    from mesh.settings import Settings

    env = nats_env(os.environ, run_dir, identity)
    if not env.get("NATS_URL"):
        return None
    settings = Settings.from_env(identity, env)
    return settings.nats_url, client_auth(settings)


async def connect_as(run_dir: Path, identity: str, *, timeout_s: float = 3.0) -> NATS | None:
    """A connection of meshctl's as `identity` (`client_for`), without reconnects and
    quiet about its own errors (the caller says what failed); None when there is no mesh
    to connect to. Raises what connecting raises (nats.errors.Error, OSError, TimeoutError)."""
    import nats

    client = client_for(run_dir, identity)
    if client is None:
        return None
    url, auth = client

    async def quiet(_: Exception) -> None:
        return None

    connecting = nats.connect(
        url, allow_reconnect=False, connect_timeout=timeout_s, error_cb=quiet,
        **auth.connect_options(),
    )  # fmt: skip
    nc: NATS = await asyncio.wait_for(connecting, timeout_s + 1)
    return nc


def nats_env(env: Mapping[str, str], run_dir: Path, identity: str = MESHCTL.name) -> dict[str, str]:
    """`env` for connecting as `identity`: the user's own NATS settings when NATS_URL is
    set, else the NATS of the mesh `meshctl up` runs in `run_dir` with the identity's seed
    (`local_client_env`; nothing added when it runs none)."""
    out = dict(env)
    if not out.get("NATS_URL"):
        out.update(local_client_env(run_dir.resolve(), identity))
    return out
