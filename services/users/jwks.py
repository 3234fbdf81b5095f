"""`GET /.well-known/jwks.json` on the users service's admin port: the public signing keys.

Where the edge (Envoy `jwt_authn` remote JWKS) and any other verifier fetch
the keys. `Cache-Control: public, max-age=<USERS_JWKS_MAX_AGE_S>`: a key is
published that long before it signs (`signing_keys`), so a verifier that
honours the header never meets an unknown kid from this service.
"""

from __future__ import annotations

from aiohttp import web

from mesh.admin import AdminRoute
from services.users.signing_keys import KeyRing

PATH = "/.well-known/jwks.json"


def jwks_route(keys: KeyRing, max_age_s: float) -> AdminRoute:
    cache_control = f"public, max-age={int(max_age_s)}"

    async def handler(_request: web.Request) -> web.Response:
        return web.json_response(
            await keys.jwks(),
            content_type="application/jwk-set+json",
            headers={"Cache-Control": cache_control},
        )

    return AdminRoute("GET", PATH, handler)
