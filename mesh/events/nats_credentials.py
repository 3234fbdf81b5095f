"""NATS credentials a deployment keeps: an nkey seed per event identity, and the
server's authorization block naming their public keys.

`meshctl up` makes new seeds at every start (mesh/local/nats.py: its NATS and its
services start together). Where NATS and the services restart on their own (compose,
Kubernetes), the seeds must outlive a restart of either: they are kept in a directory
and reused, and the authorization block is rendered from them each time. Who gets
one: every event identity a deployment runs (not `local_only` ones, an example's),
plus meshctl's own tools that reach a deployed NATS from outside (`meshctl events
tail`, `meshctl events dlq`). The dashboard (`meshctl up` only) is not one of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nkeys

from mesh.events.nats_auth import (
    DEAD_LETTERS,
    MESHCTL,
    EventIdentity,
    new_user_seed,
    public_key,
    render_users,
)
from mesh.events.streams import StreamSpec
from mesh.private_dir import private_dir
from mesh.security.store import write_atomically

SERVER_CONFIG = "nats.conf"
DEPLOYED_TOOLS: tuple[EventIdentity, ...] = (MESHCTL, DEAD_LETTERS)


class CredentialsError(ValueError):
    """A kept file that cannot be used (a seed that is none, an empty password...); the
    message names the file and what to do."""


def kept_secret(path: Path, make: bytes) -> bytes:
    """The file's content, or `make` written there first; 0600 either way (a kept file
    copied in at 0644 stayed readable by every account, the README saying 0600)."""
    if path.is_file():
        os.chmod(path, 0o600)
        return path.read_bytes().strip()
    write_atomically(path, make + b"\n", 0o600)
    return make


def _kept_seed(path: Path) -> tuple[bytes, str]:
    """The seed kept in `path` (made when missing) and its public key; a file that holds
    no seed is refused, naming it (an nkeys.ErrInvalidSeed traceback before). Removing it
    makes a new seed: the identity's pods and the server then need the new files."""
    seed = kept_secret(path, new_user_seed())
    try:
        return seed, public_key(seed)
    except (nkeys.NkeysError, ValueError):
        raise CredentialsError(
            f"{path}: not an nkey user seed (`SU...`); remove it to make a new one"
        ) from None


@dataclass(frozen=True, slots=True)
class Credentials:
    seeds: dict[str, bytes]  # identity -> its nkey seed
    authorization: str  # nats-server config: `authorization: { users: [...] }`


def keep_credentials(
    directory: Path, identities: Sequence[EventIdentity], streams: Sequence[StreamSpec]
) -> Credentials:
    """Seeds in `directory/<identity>.nk` (made when missing, else reused; 0600 either
    way) for the deployed identities and tools; their authorization block. The directory
    is made 0700, an existing one too (`private_dir`: the rule `k8s secrets` follows)."""
    private_dir(directory, narrow=True)
    deployed = [i for i in identities if not i.local_only]
    seeds: dict[str, bytes] = {}
    users: list[tuple[EventIdentity, str]] = []
    for ident in (*deployed, *DEPLOYED_TOOLS):
        seed, key = _kept_seed(directory / f"{ident.name}.nk")
        seeds[ident.name] = seed
        users.append((ident, key))
    auth = "\n".join(["authorization: {", *render_users(users, list(streams)), "}", ""])
    return Credentials(seeds, auth)


def write_server_config(directory: Path, credentials: Credentials) -> Path:
    """`directory/nats.conf`: the authorization block only (public keys: 0644), for a
    nats-server started with `-c` beside its other flags."""
    path = directory / SERVER_CONFIG
    header = "# Written by `meshctl events credentials`: public keys and permissions only.\n"
    write_atomically(path, (header + credentials.authorization).encode(), 0o644)
    return path
