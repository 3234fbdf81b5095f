"""Ed25519 signing keys in the users database: which one signs now, which ones are published.

Each key has a `kid` (its RFC 7638 JWK thumbprint) and an activation time.
Life of a key, with R = `USERS_SIGNING_KEY_ROTATION_S`, A = the access token
lifetime and M = the JWKS `max-age`:

- created (and published in the JWKS) at least M before it activates, so a
  verifier that caches the JWKS for at most M knows it before the first token
  it signs arrives (an edge caching longer would refuse fresh tokens until its
  next fetch);
- signs from its activation until the next key activates (R later);
- stays published A (plus a minute of clock skew) after that, until every
  token it signed has expired; then it is deleted.

The ring reloads the table when something is due (an activation, a rotation,
a deletion) and at least once a minute, so several instances sharing one
database agree on the keys; two instances rotating at the same moment both
add a key (both are published: harmless). Limits: the private keys are stored
unencrypted (PKCS#8 PEM, no passphrase): encryption at rest (a KMS, a key
encryption key) is out of scope; the database is as secret as a key file.
Keys are never logged: only their kid.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.timestamps import utcnow
from services.users.store import KeyRow, UsersStore

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
CLOCK_SKEW_S = 60.0
RELOAD_EVERY_S = 60.0


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    activates_at: datetime

    def public_jwk(self) -> dict[str, str]:
        """The RFC 8037 public JWK (OKP, Ed25519) with kid, alg and use."""
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64url(raw),
            "kid": self.kid,
            "alg": ALGORITHM,
            "use": "sig",
        }


def thumbprint(private: Ed25519PrivateKey) -> str:
    """RFC 7638 thumbprint of the public key: a kid that names the key itself."""
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    members = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(members.encode("ascii")).digest())


def new_key_row(activates_at: datetime) -> KeyRow:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return KeyRow(thumbprint(private), pem, activates_at)


def _load(row: KeyRow) -> SigningKey:
    private = serialization.load_pem_private_key(row.private_key_pem.encode("ascii"), None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError(f"signing key {row.kid} is not an Ed25519 key")
    return SigningKey(row.kid, private, row.activates_at)


@dataclass(frozen=True, slots=True)
class KeyTimes:
    rotation_s: float
    publish_ahead_s: float  # the JWKS max-age
    access_ttl_s: float


class KeyRing:
    """The current signing key and the JWKS, from the `signing_keys` table, rotating as due."""

    def __init__(
        self, store: UsersStore, times: KeyTimes, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._store = store
        self._times = times
        self._clock = clock
        self._keys: list[SigningKey] = []
        self._next_check: datetime | None = None
        self._lock = asyncio.Lock()

    async def signing_key(self) -> SigningKey:
        """The key that signs now (the newest activated one)."""
        keys = await self._current()
        now = self._clock()
        return [k for k in keys if k.activates_at <= now][-1]

    async def jwks(self) -> dict[str, Any]:
        """The RFC 7517 key set: upcoming, current and still-needed previous keys."""
        return {"keys": [k.public_jwk() for k in await self._current()]}

    async def _current(self) -> list[SigningKey]:
        now = self._clock()
        if self._next_check is not None and now < self._next_check:
            return self._keys
        async with self._lock:
            if self._next_check is None or self._clock() >= self._next_check:
                await self._reload(self._clock())
        return self._keys

    async def _reload(self, now: datetime) -> None:
        t = self._times
        rows = await self._store.signing_keys()
        active = [r for r in rows if r.activates_at <= now]
        if not active:
            # Fresh install: the first key signs at once (no verifier can hold an
            # older JWKS without it, there was none).
            row = new_key_row(now)
            await self._store.add_signing_key(row)
            log.info("signing key %s created (first key)", row.kid)
            rows = [*rows, row]
            active = [row]
        current = active[-1]
        upcoming = [r for r in rows if r.activates_at > now]
        due = current.activates_at + timedelta(seconds=t.rotation_s)
        if not upcoming and now >= due - timedelta(seconds=t.publish_ahead_s):
            row = new_key_row(max(due, now + timedelta(seconds=t.publish_ahead_s)))
            await self._store.add_signing_key(row)
            log.info("signing key %s created, signs from %s", row.kid, row.activates_at)
            rows = [*rows, row]
        rows.sort(key=lambda r: (r.activates_at, r.kid))
        keep, drop = _published(rows, now, t.access_ttl_s + CLOCK_SKEW_S)
        if drop:
            await self._store.delete_signing_keys([r.kid for r in drop])
            log.info("signing keys %s retired", ", ".join(r.kid for r in drop))
        self._keys = [_load(r) for r in keep]
        self._next_check = _next_check(self._keys, now, t)


def _published(
    rows: Sequence[KeyRow], now: datetime, keep_after_retire_s: float
) -> tuple[list[KeyRow], list[KeyRow]]:
    """(keys to publish, keys whose every token has expired). A key retires when the
    next one activates."""
    keep: list[KeyRow] = []
    drop: list[KeyRow] = []
    for i, row in enumerate(rows):
        successor = rows[i + 1] if i + 1 < len(rows) else None
        retired = successor is not None and successor.activates_at <= now
        if retired and successor is not None:
            gone = successor.activates_at + timedelta(seconds=keep_after_retire_s) <= now
            (drop if gone else keep).append(row)
        else:
            keep.append(row)
    return keep, drop


def _next_check(keys: Sequence[SigningKey], now: datetime, t: KeyTimes) -> datetime:
    """The earliest moment the ring's view may change: reload then (or in a minute)."""
    moments = [now + timedelta(seconds=RELOAD_EVERY_S)]
    for i, key in enumerate(keys):
        if key.activates_at > now:
            moments.append(key.activates_at)
        nxt = keys[i + 1] if i + 1 < len(keys) else None
        if nxt is None:
            moments.append(key.activates_at + timedelta(seconds=t.rotation_s - t.publish_ahead_s))
        elif nxt.activates_at <= now:
            moments.append(nxt.activates_at + timedelta(seconds=t.access_ttl_s + CLOCK_SKEW_S))
    return max(now, min(moments))
