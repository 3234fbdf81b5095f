"""Access tokens (JWT, EdDSA) and refresh tokens (opaque) of the users service.

The access token is what the edge (Envoy `jwt_authn`) and anyone holding the
JWKS verify without asking users: header `alg: EdDSA`, `kid`; claims `iss`
"shop-mesh/users", `aud` "shop-mesh", `sub` (the user id), `roles` (list),
`iat`, `exp`, `jti` (a random id, for logs and a future deny list). Because it
is checked without a lookup it cannot be revoked before `exp`: keep it short.

The refresh token is `secrets.token_urlsafe(32)` (256 bits); only its SHA-256
is stored, as for sessions.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import jwt

from services.users.signing_keys import ALGORITHM, SigningKey

ISSUER = "shop-mesh/users"
AUDIENCE = "shop-mesh"


def token_hash(token: str) -> str:
    """SHA-256 hex of an opaque token (session or refresh): what the database keeps."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def access_token(
    key: SigningKey, user_id: str, roles: Sequence[str], now: datetime, ttl_s: float
) -> tuple[str, datetime]:
    """A signed access token for `user_id` and when it expires (whole seconds, as `exp`)."""
    issued = int(now.timestamp())
    expires = issued + max(1, int(ttl_s))
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id,
        "roles": list(roles),
        "iat": issued,
        "exp": expires,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})
    return token, datetime.fromtimestamp(expires, UTC)
