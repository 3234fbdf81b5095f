"""Opaque page tokens for keyset pagination (shop-agnostic).

A token is the base64url of a small JSON object: a format version, the kind of
listing it belongs to (so a token of one list is rejected by another) and the
cursor (the sort key of the last item returned). Clients must treat it as opaque;
the server treats every token as untrusted input: anything that does not decode to
the expected shape raises `PageTokenError`, which validation turns into an
INVALID_ARGUMENT field violation. Tokens are not signed: a forged cursor can only
move the start of a page the caller is allowed to list anyway.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

TOKEN_VERSION = 1
MAX_TOKEN_CHARS = 1024

Cursor = Mapping[str, str | int]


class PageTokenError(ValueError):
    """The page token is malformed, from another listing, or from another version."""


def encode_page_token(kind: str, cursor: Cursor) -> str:
    body = {"v": TOKEN_VERSION, "k": kind, "c": dict(cursor)}
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"page token of {kind} longer than {MAX_TOKEN_CHARS} characters")
    return token


def decode_page_token(kind: str, token: str) -> dict[str, str | int]:
    """The cursor of a token made by `encode_page_token(kind, ...)`."""
    if len(token) > MAX_TOKEN_CHARS:
        raise PageTokenError("page token is too long")
    try:
        padded = token + "=" * (-len(token) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii"))
        body = json.loads(raw)
    except (UnicodeError, binascii.Error, ValueError) as exc:
        raise PageTokenError("page token is malformed") from exc
    if not isinstance(body, dict) or body.get("v") != TOKEN_VERSION:
        raise PageTokenError("page token is malformed or from another version")
    if body.get("k") != kind:
        raise PageTokenError("page token belongs to another listing")
    cursor = body.get("c")
    if not isinstance(cursor, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int) and not isinstance(v, bool)
        for k, v in cursor.items()
    ):
        raise PageTokenError("page token is malformed")
    return dict(cursor)
