"""The shop's demo story, told through the edge with grpcurl and curl.

`meshctl demo` runs it (mesh.toml names this module), as does
`python -m services.tools.demo [--edge-port 8080]`.


Signs a user up and logs in (the edge verifies the access token on every call
that is not public), creates the first admin (`python -m services.users.admin
create-admin`, against the users database of the local run dir) who adds a
product, shows that a call without a token is refused (401), places an order
through v1 (gRPC) and v2 (REST), pins a version with `accept-version`, places an
order with a declined card and shows its compensation, then prints the events
that flowed meanwhile. Every step prints the command a person would type and its
real output; tokens are shown as `$TOKEN` / `$ADMIN_TOKEN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh.events.nats_connect import NatsClientAuth, client_auth, redact_urls
from mesh.local.tail import SeenIds, format_event
from mesh.settings import Settings
from mesh.tools import grpcurl_binary
from services.common.event_types import EVENTS

DECLINED_CARD = "4000000000000002"
GOOD_CARD = "4242424242424242"


class DemoError(RuntimeError):
    pass


def _show(cmd: str, out: str) -> None:
    print(f"\n$ {cmd}")
    print(out.rstrip())


# A token as (the name the printed command shows, the token).
Token = tuple[str, str]


def curl(
    edge: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    token: Token | None = None,
    mask: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP call through the edge, shown as the curl command that does it (each
    `mask` key, a secret, shown as its value, e.g. a password as `$ADMIN_PASSWORD`)."""
    url = f"http://{edge}{path}"
    hdrs = (
        {"content-type": "application/json", **(headers or {})}
        if body is not None
        else dict(headers or {})
    )
    shown_hdrs = dict(hdrs)
    if token is not None:
        hdrs["authorization"] = f"Bearer {token[1]}"
        shown_hdrs["authorization"] = f"Bearer ${token[0]}"
    data = json.dumps(body) if body is not None else None
    shown = " ".join(
        [f"curl -s -X {method} {url}"]
        + [f'-H "{k}: {v}"' for k, v in shown_hdrs.items()]
        + ([f"-d '{data}'"] if data else [])
    )
    for secret, shown_as in (mask or {}).items():
        shown = shown.replace(secret, shown_as)
    exe = shutil.which("curl")
    if exe:
        argv = [exe, "-s", "-w", "\n%{http_code}", "-X", method, url]
        for k, v in hdrs.items():
            argv += ["-H", f"{k}: {v}"]
        if data:
            argv += ["-d", data]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        text, _, code = res.stdout.rpartition("\n")
        status = int(code or 0)
    else:  # same request without curl installed
        req = urllib.request.Request(
            url, data=data.encode() if data else None, method=method, headers=hdrs
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode()
    _show(shown, f"{text}\n(HTTP {status})")
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def grpcurl(edge: str, method: str, body: Any, token: Token | None = None) -> tuple[int, Any]:
    data = json.dumps(body)
    auth = ["-H", f"authorization: Bearer {token[1]}"] if token else []
    shown_auth = f'-H "authorization: Bearer ${token[0]}" ' if token else ""
    argv = [grpcurl_binary(), "-plaintext", *auth, "-d", data, edge, method]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    _show(f"grpcurl -plaintext {shown_auth}-d '{data}' {edge} {method}", res.stdout + res.stderr)
    try:
        return res.returncode, json.loads(res.stdout) if res.stdout.strip() else None
    except ValueError:
        return res.returncode, res.stdout


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise DemoError(what)


def create_admin(email: str, password: str) -> None:
    """The first admin, as an operator creates it: the command reads the password from
    stdin and writes to the users database of the local run (`.run/data`, or the
    `MESH_DATA_DIR` / `USERS_DATABASE_URL` in the environment)."""
    env = dict(os.environ)
    env.setdefault("MESH_DATA_DIR", str(Path(".run/data").resolve()))
    argv = [sys.executable, "-m", "services.users.admin", "create-admin", "--email", email]
    res = subprocess.run(
        argv, input=f"{password}\n", env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    _show(
        f"printf '%s\\n' \"$ADMIN_PASSWORD\" | python -m services.users.admin create-admin"
        f" --email {email}",
        res.stdout + res.stderr,
    )
    _expect(res.returncode == 0, "create-admin failed")


def log_in(
    edge: str, email: str, password: str, name: str, mask: dict[str, str] | None = None
) -> Token:
    body = {"email": email, "password": password}
    status, session = curl(edge, "POST", "/api/v1/sessions", body, mask=mask)
    _expect(status == 200, f"logging in {email} failed")
    return name, str(session.get("accessToken") or session.get("access_token"))


def story(edge: str) -> None:
    tag = uuid.uuid4().hex[:6]
    print("== 1. what the edge serves (reflection lists only public services)")
    res = subprocess.run(
        [grpcurl_binary(), "-plaintext", edge, "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    _show(f"grpcurl -plaintext {edge} list", res.stdout + res.stderr)

    print("\n== 2. a user signs up and logs in: an access token (JWT) the edge verifies")
    email, password = f"ada.{tag}@example.com", "correct horse battery staple"
    status, user = curl(
        edge,
        "POST",
        "/api/v1/users",
        {"email": email, "password": password, "profile": {"display_name": "Ada"}},
    )
    _expect(status == 200, "CreateUser failed")
    user_id = user.get("userId") or user.get("user_id")
    token = log_in(edge, email, password, "TOKEN")

    print("\n== 3. the first admin adds a product (creating products needs the admin role)")
    admin_email, admin_password = f"admin.{tag}@example.com", secrets.token_urlsafe(18)
    create_admin(admin_email, admin_password)
    admin = log_in(
        edge, admin_email, admin_password, "ADMIN_TOKEN", mask={admin_password: "$ADMIN_PASSWORD"}
    )
    status, product = curl(
        edge,
        "POST",
        "/api/v1/products",
        {
            "sku": f"TEAPOT-{tag}",
            "name": "Teapot",
            "price": {"currency_code": "USD", "amount_minor": "1999"},
            "initial_stock": "10",
        },
        token=admin,
    )
    _expect(status == 200, "CreateProduct failed")
    product_id = product.get("productId") or product.get("product_id")
    curl(edge, "GET", f"/api/v1/products/{product_id}")  # reads are public

    print("\n== 4. without a token the edge refuses (401, before any service sees it)")
    status, _ = curl(edge, "GET", f"/api/v2/orders?user_id={user_id}")
    _expect(status == 401, "an anonymous call must be refused")

    print("\n== 5. an order through v1, by gRPC")
    code, order1 = grpcurl(
        edge,
        "shop.orders.v1.OrderService/CreateOrder",
        {
            "user_id": user_id,
            "items": [{"product_id": product_id, "quantity": 1}],
            "card_number": GOOD_CARD,
        },
        token,
    )
    _expect(code == 0, "v1 CreateOrder failed")

    print("\n== 6. an order through v2, by REST (money with a currency, idempotency key)")
    v2 = {
        "idempotency_key": f"demo-{tag}",
        "user_id": user_id,
        "items": [{"product_id": product_id, "quantity": 2}],
        "currency_code": "USD",
        "card": {"number": GOOD_CARD, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        "shipping_address": {
            "recipient": "Ada",
            "lines": ["1 Analytical Way"],
            "city": "London",
            "country_code": "GB",
        },
    }
    status, order2 = curl(edge, "POST", "/api/v2/orders", v2, token=token)
    _expect(status == 200, "v2 CreateOrder failed")
    order2_id = order2.get("orderId") or order2.get("order_id")

    print("\n== 7. versions: unversioned paths take the latest, accept-version pins one")
    curl(edge, "GET", f"/api/orders/{order2_id}", token=token)
    curl(edge, "GET", f"/api/orders/{order2_id}", headers={"accept-version": "v1"}, token=token)

    print("\n== 8. a declined card: the saga compensates (stock released, order failed)")
    declined = {
        **v2,
        "idempotency_key": f"demo-declined-{tag}",
        "card": {**v2["card"], "number": DECLINED_CARD},
    }
    status, _ = curl(edge, "POST", "/api/v2/orders", declined, token=token)
    _expect(status >= 400, "a declined card must fail")
    curl(edge, "GET", f"/api/v1/products/{product_id}")
    _ = order1


async def _quiet() -> None:
    """The demo's own disconnect at the end is not news."""


def run_demo(edge: str, nats_url: str, auth: NatsClientAuth | None = None) -> int:
    return asyncio.run(_run_demo(edge, nats_url, auth))


async def _run_demo(edge: str, nats_url: str, auth: NatsClientAuth | None = None) -> int:
    from mesh.events import connect_nats

    events: list[str] = []
    seen = SeenIds()
    # The declined order's compensation is the story's last act.
    last = {"order.compensation.completed", "inventory.released"}
    compensated = asyncio.Event()
    nc = None
    try:
        options = auth.connect_options() if auth is not None else {}
        nc = await connect_nats(nats_url, name="meshctl-demo", max_reconnect_attempts=3,
                                disconnected_cb=_quiet, **options)  # fmt: skip
    except Exception as exc:  # the story still runs; it just cannot show events
        events.append(f"(could not watch events on {redact_urls(nats_url)}: {exc})")
    if nc is not None:

        async def on_msg(msg: Any) -> None:
            if not msg.subject.startswith(("_INBOX.", "$JS.")) and seen.first_time(msg.data):
                events.append(format_event(msg.subject, msg.data, EVENTS))
                last.discard(msg.subject)
                if not last:
                    compensated.set()

        await nc.subscribe(">", cb=on_msg)
    try:
        await asyncio.to_thread(story, edge)
    except DemoError as exc:
        print(f"\ndemo stopped: {exc} (is the mesh up? `make run` starts it)", file=sys.stderr)
        return 1
    finally:
        if nc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(compensated.wait(), 10)
            await nc.drain()
    print("\n== 9. the events that flowed (meshctl events tail shows them live)")
    for line in sorted(events):  # lines start with the event time
        print(f"  {line}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="the shop's story through the edge")
    parser.add_argument("--edge-port", type=int, default=8080)
    args = parser.parse_args(argv)
    # meshctl's read-only NATS identity: `meshctl demo` passes its seed file
    # (NATS_NKEY_SEED_FILE) and URL when it runs the mesh's own server.
    settings = Settings.from_env("meshctl")
    return run_demo(
        edge=f"127.0.0.1:{args.edge_port}", nats_url=settings.nats_url, auth=client_auth(settings)
    )


if __name__ == "__main__":
    raise SystemExit(main())
