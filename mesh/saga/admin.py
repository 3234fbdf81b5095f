"""Sagas on a service's admin HTTP port: what is running or parked, and retrying parked ones.

`GET /sagas` answers `{"running": n, "compensating": n, "parked": [...]}` (the
oldest 100 parked, without their data: it may hold personal or payment
details). `POST /sagas/retry` with `{"saga_id": "..."}` (or no id: every
parked saga) resumes compensating them through the service's own runner, so
the retry runs with the definitions and upstream clients of the service.

Why on the admin port: the saga store is the service's database, which only the
service opens; the dashboard of `meshctl up` calls this instead. The POST
changes state, so it requires `Authorization: Bearer <MESH_ADMIN_TOKEN>`
(compared in constant time); with no token configured every POST is refused
(403), so an admin port reachable by others never lets them act.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from mesh.admin import AdminRoute
from mesh.saga.model import SagaStatus
from mesh.saga.runner import SagaRunner

PARKED_SHOWN = 100


def authorized(request: web.Request, token: str) -> bool:
    """Whether the request carries the admin bearer token (never, when none is set)."""
    if not token:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


def saga_admin_routes(runner: SagaRunner, token: str) -> list[AdminRoute]:
    async def overview(_request: web.Request) -> web.Response:
        running = await runner.store.count(SagaStatus.RUNNING)
        compensating = await runner.store.count(SagaStatus.COMPENSATING)
        parked = await runner.store.find([SagaStatus.PARKED], limit=PARKED_SHOWN)
        body: dict[str, Any] = {
            "running": sum(running.values()),
            "compensating": sum(compensating.values()),
            "parked": [
                {
                    "saga_id": s.saga_id,
                    "name": s.name,
                    "completed": s.completed,
                    "attempts": s.attempts,
                    "last_error": s.last_error or "",
                    "updated_at_ms": s.updated_at_ms,
                }
                for s in parked
            ],
        }
        return web.json_response(body)

    async def retry(request: web.Request) -> web.Response:
        if not authorized(request, token):
            return web.json_response(
                {"error": "admin actions need Authorization: Bearer <MESH_ADMIN_TOKEN>"},
                status=403,
            )
        try:
            doc = json.loads(await request.text() or "{}")
            saga_id = doc.get("saga_id") if isinstance(doc, dict) else None
        except ValueError:
            saga_id = None
            doc = None
        if not isinstance(doc, dict) or not (saga_id is None or isinstance(saga_id, str)):
            return web.json_response({"error": 'body: {"saga_id": "<id>"} or {}'}, status=400)
        if saga_id is not None:
            found = await runner.store.get(saga_id)
            if found is None:
                return web.json_response({"error": f"no saga {saga_id}"}, status=404)
            if found.status is not SagaStatus.PARKED:
                return web.json_response(
                    {"error": f"saga {saga_id} is {found.status.value}, not PARKED"}, status=409
                )
        resumed = await runner.retry_parked(saga_id)
        return web.json_response({"resumed": resumed})

    return [AdminRoute("GET", "/sagas", overview), AdminRoute("POST", "/sagas/retry", retry)]
