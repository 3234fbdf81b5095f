"""Verifying the users service's access tokens as an outside verifier would: JWKS + PyJWT."""

from __future__ import annotations

from typing import Any

import aiohttp
import jwt

ISSUER = "shop-mesh/users"
AUDIENCE = "shop-mesh"


async def fetch_jwks(admin_port: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The JWKS document and the response headers of `GET /.well-known/jwks.json`."""
    url = f"http://127.0.0.1:{admin_port}/.well-known/jwks.json"
    async with aiohttp.ClientSession() as http, http.get(url) as res:
        assert res.status == 200, await res.text()
        body: dict[str, Any] = await res.json(content_type=None)
        return body, dict(res.headers)


def verify(token: str, jwks: dict[str, Any], **options: Any) -> dict[str, Any]:
    """The claims of `token` if it verifies with the key its kid names (PyJWT raises if not)."""
    kid = jwt.get_unverified_header(token)["kid"]
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
    if kid not in keys:
        raise jwt.InvalidKeyError(f"kid {kid} is not in the JWKS")
    checks: Any = {"require": ["exp", "iat", "sub", "jti", "iss", "aud"]}
    checks.update(options.pop("options", {}))
    claims: dict[str, Any] = jwt.decode(
        token,
        keys[kid].key,
        algorithms=["EdDSA"],
        audience=options.pop("audience", AUDIENCE),
        issuer=options.pop("issuer", ISSUER),
        options=checks,
        **options,
    )
    return claims
