"""The dashboard's HTTP server: loopback only, read-only without a CSRF-checked POST.

- Listens on 127.0.0.1 only (port 9900 by default, `MESH_DASHBOARD_PORT`; a free
  one when that is taken: the URL printed by `meshctl up` is the real one).
- Only the account that runs the mesh is served: every other account on the
  machine also reaches 127.0.0.1, so each connection's owner is looked up in
  the kernel's socket table (`mesh.local.peer_account`) and any other uid gets
  403, before anything is read or done. Where the system cannot tell (not
  Linux), `meshctl up` says at start that other accounts could use it.
- Every request must name this server in `Host` (127.0.0.1, localhost or
  [::1] with its port), so a web page cannot reach it through DNS rebinding
  (403 otherwise).
- A POST changes something only with the page's CSRF token (a random value
  per `meshctl up`, in a hidden form field, compared in constant time), 403
  otherwise; a cross-site form cannot read the token. Responses forbid framing
  and allow scripts from this origin only.
- Retrying a parked saga is forwarded to the service's own admin endpoint
  (`mesh.saga.admin`) with the mesh's admin token, never shown on the page.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from aiohttp import web

from mesh.local import peer_account
from mesh.local.dashboard import assets, page
from mesh.local.dashboard.collect import Collector
from mesh.local.traces.store import connect, find_trace_id, span_tree, trace_spans

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline';"
        " connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none';"
        " base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Dashboard:
    def __init__(
        self,
        collector: Collector,
        *,
        admin_token: str,
        links: Sequence[tuple[str, str]] = (),
        csrf_token: str | None = None,
    ) -> None:
        self.collector = collector
        self.admin_token = admin_token
        self.links = tuple(links)
        self.csrf = csrf_token or secrets.token_urlsafe(32)
        self.owner_uid = peer_account.served_account()  # None: any, where it cannot tell
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/panels", self._panels)
        app.router.add_get("/traces/{trace_id}", self._trace)
        app.router.add_get("/static/app.css", self._css)
        app.router.add_get("/static/app.js", self._js)
        app.router.add_post("/sagas/retry", self._retry)
        return app

    async def start(self, port: int) -> int:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=False)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        if self.owner_uid is None:
            log.warning(
                "the dashboard cannot tell which account connects on this system (no Linux"
                " sock_diag): every account on this machine can use it"
            )
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.collector.close()

    # -- guards ----------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed = {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]")}
        if request.host not in allowed:
            return web.Response(status=403, text="this dashboard answers on loopback only\n")
        if self.owner_uid is not None and self._peer_uid(request) != self.owner_uid:
            return web.Response(
                status=403, text="this dashboard answers the account that runs the mesh only\n"
            )
        if request.method == "POST":
            form = await request.post()
            token = form.get("csrf")
            if not isinstance(token, str) or not hmac.compare_digest(
                token.encode(), self.csrf.encode()
            ):
                return web.Response(status=403, text="missing or wrong CSRF token\n")
        elif request.method not in ("GET", "HEAD"):
            return web.Response(status=405)
        response = await handler(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    @staticmethod
    def _peer_uid(request: web.Request) -> int | None:
        transport = request.transport
        if transport is None:
            return None
        peer, ours = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        if not (isinstance(peer, tuple) and isinstance(ours, tuple)):
            return None
        return peer_account.peer_uid((peer[0], peer[1]), (ours[0], ours[1]))

    # -- pages -----------------------------------------------------------------------------

    async def _index(self, _request: web.Request) -> web.Response:
        snap = await self.collector.snapshot()
        return _html(page.dashboard(snap, self.csrf, self.links))

    async def _panels(self, _request: web.Request) -> web.Response:
        snap = await self.collector.snapshot()
        return _html(page.panels(snap, self.csrf))

    async def _trace(self, request: web.Request) -> web.Response:
        wanted = request.match_info["trace_id"]
        db = self.collector.traces_db
        nodes = []
        trace_id = wanted
        if db.exists():
            conn = connect(db, readonly=True)
            try:
                ids = find_trace_id(conn, wanted)
                if len(ids) == 1:
                    trace_id = ids[0]
                    nodes = span_tree(trace_spans(conn, trace_id))
            finally:
                conn.close()
        return _html(page.waterfall(trace_id, nodes), status=200 if nodes else 404)

    async def _css(self, _request: web.Request) -> web.Response:
        return web.Response(text=assets.CSS, content_type="text/css")

    async def _js(self, _request: web.Request) -> web.Response:
        return web.Response(text=assets.JS, content_type="text/javascript")

    # -- actions ---------------------------------------------------------------------------

    async def _retry(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        service, saga_id = form.get("service"), form.get("saga_id")
        snap = await self.collector.snapshot()
        target = next((s for s in snap.sagas if s.service == service), None)
        if target is None or not isinstance(saga_id, str) or not saga_id:
            return web.Response(status=400, text="unknown service or no saga id\n")
        service = target.service
        timeout = aiohttp.ClientTimeout(total=30)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as s,
                s.post(
                    f"{target.admin}/sagas/retry",
                    data=json.dumps({"saga_id": saga_id}),
                    headers={"Authorization": f"Bearer {self.admin_token}"},
                ) as r,
            ):
                answer = await r.text()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=502, text=f"{service} did not answer: {exc}\n")
        log.info("retry of parked saga %s on %s: HTTP %d", saga_id, service, status)
        if status != 200:
            return web.Response(status=502, text=f"{service} answered {status}: {answer}\n")
        self.collector.invalidate()
        raise web.HTTPSeeOther("/#sagas")


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
