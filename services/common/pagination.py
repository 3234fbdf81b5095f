"""Opaque, signed page tokens for keyset pagination (shop-agnostic).

A token is `<body>.<tag>`: the base64url of a small JSON object (a format
version, the kind of listing it belongs to, so a token of one list is rejected
by another, and the cursor: the sort key of the last item returned) and the
base64url of its HMAC-SHA256 tag (128 bits) under the service's page-token key.
Clients must treat it as opaque. The server treats every token as untrusted
input: the tag is checked first (constant time), and anything that is not a
token this service made, for this listing, raises `PageTokenError`, which
validation turns into an INVALID_ARGUMENT field violation. Integers in a cursor
must fit a signed 64-bit column (a database would refuse larger ones with an
internal error).

The key: `set_key(service_key(name, "page-token"))` at a service's start
(services/common/secrets.py: derived from MESH_SERVICE_SECRET, so every
instance of the service accepts the others' tokens). A process that never
sets one signs with a random key of its own. Rotating the secret invalidates
outstanding tokens: clients start again from the first page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping

TOKEN_VERSION = 2
MAX_TOKEN_CHARS = 1024
TAG_BYTES = 16
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Cursor = Mapping[str, str | int]


class PageTokenError(ValueError):
    """The page token is malformed, forged, from another listing, or from another version."""


class _Key:
    value: bytes | None = None


def set_key(key: bytes) -> None:
    """The key this process signs and checks page tokens with (at least 16 bytes)."""
    if len(key) < 16:
        raise ValueError("a page-token key needs at least 16 bytes")
    _Key.value = key


def _key() -> bytes:
    if _Key.value is None:
        _Key.value = secrets.token_bytes(32)
    return _Key.value


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))


def _tag(body: str) -> bytes:
    return hmac.new(_key(), body.encode("ascii"), hashlib.sha256).digest()[:TAG_BYTES]


def encode_page_token(kind: str, cursor: Cursor) -> str:
    payload = {"v": TOKEN_VERSION, "k": kind, "c": dict(cursor)}
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    token = f"{body}.{_b64(_tag(body))}"
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"page token of {kind} longer than {MAX_TOKEN_CHARS} characters")
    return token


def _valid_value(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    return isinstance(value, str)


def decode_page_token(kind: str, token: str) -> dict[str, str | int]:
    """The cursor of a token made by `encode_page_token(kind, ...)` with this key."""
    if len(token) > MAX_TOKEN_CHARS:
        raise PageTokenError("page token is too long")
    body, dot, tag = token.partition(".")
    try:
        # The tag's text against the canonical encoding, not its decoded bytes: base64
        # ignores a last character's unused bits, so a decode would accept altered text.
        if not dot or not hmac.compare_digest(tag.encode("ascii"), _b64(_tag(body)).encode()):
            raise PageTokenError("page token is not one this service issued")
        payload = json.loads(_unb64(body))
    except (UnicodeError, binascii.Error, ValueError) as exc:
        if isinstance(exc, PageTokenError):
            raise
        raise PageTokenError("page token is malformed") from exc
    if not isinstance(payload, dict) or payload.get("v") != TOKEN_VERSION:
        raise PageTokenError("page token is malformed or from another version")
    if payload.get("k") != kind:
        raise PageTokenError("page token belongs to another listing")
    cursor = payload.get("c")
    if not isinstance(cursor, dict) or not all(
        isinstance(k, str) and _valid_value(v) for k, v in cursor.items()
    ):
        raise PageTokenError("page token is malformed")
    return dict(cursor)
