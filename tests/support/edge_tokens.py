"""End-user access tokens for calls through the edge: sign up + log in as a client would.

The edge (Envoy `jwt_authn`, mesh/edge/jwt_authn.py) requires a verified token on every
method not declared `ACCESS_PUBLIC`, so tests that write through it first get one here:
`sign_up` creates an account and authenticates through the edge's REST API; `admin`
creates an account with the admin role the way an operator does
(`python -m services.users.admin create-admin`, password on stdin, against the stack's
users database), then authenticates through the edge. Headers for each client kind:
`User.grpcurl` (grpcurl `-H`), `User.headers` (REST), `User.metadata` (grpc.aio).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from dataclasses import dataclass

from tests.support.edge import EdgeClient
from tests.support.local_mesh import Stack

PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class User:
    user_id: str
    email: str
    access_token: str
    refresh_token: str
    roles: tuple[str, ...] = ()

    @property
    def grpcurl(self) -> str:
        """The header for `grpcurl -H` (and `Stack.call(..., *headers)`)."""
        return f"authorization: Bearer {self.access_token}"

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.access_token}"),)


def log_in(edge: EdgeClient, email: str, password: str = PASSWORD) -> User:
    """Authenticate through the edge (`POST /api/v1/sessions`)."""
    status, body = edge.json("POST", "/api/v1/sessions", {"email": email, "password": password})
    assert status == 200, f"log in {email}: {status} {body}"
    return User(
        user_id=body["userId"],
        email=email,
        access_token=body["accessToken"],
        refresh_token=body["refreshToken"],
        roles=tuple(body.get("roles", ())),
    )


def sign_up_sync(edge: EdgeClient, email: str | None = None, password: str = PASSWORD) -> User:
    """A new account (`POST /api/v1/users`, public) and its tokens."""
    email = email or f"user.{uuid.uuid4().hex[:12]}@example.com"
    status, body = edge.json(
        "POST",
        "/api/v1/users",
        {"email": email, "password": password, "profile": {"displayName": "Test"}},
    )
    assert status == 200, f"sign up {email}: {status} {body}"
    return log_in(edge, email, password)


async def sign_up(stack: Stack, email: str | None = None, password: str = PASSWORD) -> User:
    return await asyncio.to_thread(sign_up_sync, stack.edge, email, password)


def create_admin_account(env: dict[str, str], email: str, password: str = PASSWORD) -> None:
    """`python -m services.users.admin create-admin` with the users service's environment."""
    res = subprocess.run(
        [sys.executable, "-m", "services.users.admin", "create-admin", "--email", email],
        input=f"{password}\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, f"create-admin: {res.stdout}{res.stderr}"


async def admin(stack: Stack, email: str | None = None, password: str = PASSWORD) -> User:
    """A new admin account in the stack's users database, logged in through the edge."""
    email = email or f"admin.{uuid.uuid4().hex[:12]}@example.com"
    users = next(c for c in stack.supervisor.children if c.spec.service == "users")
    await asyncio.to_thread(create_admin_account, dict(users.spec.env), email, password)
    return await asyncio.to_thread(log_in, stack.edge, email, password)
