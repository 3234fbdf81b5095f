"""The users service's tokens over gRPC on loopback, on SQLite and PostgreSQL.

Access tokens are verified as the edge would: with the keys the service's
admin port publishes at `/.well-known/jwks.json`, by PyJWT. Refresh rotation,
reuse detection, logout, signing-key rotation (with a clock the test moves),
the failed-login throttle and the first admin.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from shop.users.v1 import users_pb2, users_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.db import migrate, session_factory
from mesh.events import Outbox
from services.users import store
from services.users.admin import create_admin
from services.users.config import UsersConfig
from services.users.signing_keys import KeyRing, KeyTimes
from services.users.throttle import LoginThrottle
from services.users.tokens import access_token
from tests.support.jwks import fetch_jwks, verify
from tests.support.poll import eventually
from tests.support.services import Served, dump_text, rpc_error_details, service_settings
from tests.support.users import FAST, PASSWORD, serve_users, sign_up, users_stub


@pytest.fixture
async def served(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Served]:
    s = await serve_users(engine, tmp_path)
    yield s
    await s.close()


stub = users_stub


async def login(
    users: users_pb2_grpc.UserServiceAsyncStub, email: str, password: str = PASSWORD
) -> users_pb2.AuthenticateResponse:
    return await users.Authenticate(users_pb2.AuthenticateRequest(email=email, password=password))


async def refresh(
    users: users_pb2_grpc.UserServiceAsyncStub, token: str
) -> users_pb2.RefreshSessionResponse:
    return await users.RefreshSession(users_pb2.RefreshSessionRequest(refresh_token=token))


async def refused(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        await call  # type: ignore[misc]
    return err.value


async def test_authenticate_issues_an_access_token_the_jwks_verifies(
    served: Served, engine: AsyncEngine
) -> None:
    users = stub(served)
    user = await sign_up(users, "ada@example.com")
    auth = await login(users, "ada@example.com")
    jwks, headers = await fetch_jwks(served.running.admin_port)

    assert headers["Cache-Control"] == "public, max-age=300"
    [key] = jwks["keys"]
    assert {k: key[k] for k in ("kty", "crv", "alg", "use")} == {
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig"
    }  # fmt: skip
    assert "d" not in key  # the private part is never published
    header = jwt.get_unverified_header(auth.access_token)
    assert header["alg"] == "EdDSA" and header["kid"] == key["kid"]

    claims = verify(auth.access_token, jwks)
    assert claims["sub"] == user.user_id == auth.user_id
    assert claims["roles"] == [] and list(auth.roles) == []
    assert claims["exp"] - claims["iat"] == 900
    assert claims["exp"] == auth.access_token_expire_time.seconds
    assert len(claims["jti"]) == 32
    assert auth.refresh_token and auth.refresh_token_expire_time.seconds > claims["exp"]
    assert auth.session_token  # v1 clients keep their session token

    # Only hashes of the opaque tokens are stored; the JWT itself is not kept.
    stored = await dump_text(engine)
    assert auth.refresh_token not in stored and auth.access_token not in stored

    # The attacker's tokens: tampered payload, another key, alg none, wrong audience.
    head, payload, sig = auth.access_token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["roles"] = ["admin"]
    body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidSignatureError):
        verify(f"{head}.{body}.{sig}", jwks)
    other = jwt.encode(forged, Ed25519PrivateKey.generate(), "EdDSA", {"kid": key["kid"]})
    with pytest.raises(jwt.InvalidSignatureError):
        verify(other, jwks)
    unsigned = jwt.encode(forged, "", "none", {"kid": key["kid"]})
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify(unsigned, jwks)
    with pytest.raises(jwt.InvalidAudienceError):
        verify(auth.access_token, jwks, audience="someone-else")


async def test_expired_access_and_refresh_tokens_are_rejected(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    config = UsersConfig(password_profile="cheapest", access_token_ttl_s=1, refresh_token_ttl_s=1)
    served = await serve_users(engine, tmp_path, config)
    try:
        users = stub(served)
        await sign_up(users, "short@example.com")
        auth = await login(users, "short@example.com")
        jwks, _ = await fetch_jwks(served.running.admin_port)
        # Good but for its age: `exp` is whole seconds (issued at a floored second plus
        # the TTL), so a 1 s token can be past `exp` a moment after login on a slow box.
        claims = verify(auth.access_token, jwks, options={"verify_exp": False})
        assert claims["exp"] - claims["iat"] == 1

        def expired() -> bool:
            try:
                verify(auth.access_token, jwks)
            except jwt.ExpiredSignatureError:
                return True
            return False

        await eventually(expired, within_s=5, what="the access token expires", interval_s=0.1)
        refresh_expiry = auth.refresh_token_expire_time.ToDatetime(UTC)
        await eventually(
            lambda: datetime.now(UTC) > refresh_expiry,
            within_s=5,
            interval_s=0.1,  # poll
        )
        err = await refused(refresh(users, auth.refresh_token))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await served.close()


async def test_refresh_rotates_and_reuse_revokes_the_whole_family(served: Served) -> None:
    users = stub(served)
    user = await sign_up(users, "rot@example.com")
    first = await login(users, "rot@example.com")
    other_login = await login(users, "rot@example.com")  # another device: another family
    jwks, _ = await fetch_jwks(served.running.admin_port)

    second = await refresh(users, first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert second.user_id == user.user_id
    claims = verify(second.access_token, jwks)
    assert claims["sub"] == user.user_id
    assert claims["jti"] != verify(first.access_token, jwks)["jti"]
    third = await refresh(users, second.refresh_token)

    # The spent first token comes back (stolen): refused, and the family dies with it.
    err = await refused(refresh(users, first.refresh_token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rpc_error_details(err).reason == "REFRESH_TOKEN_INVALID"
    err = await refused(refresh(users, third.refresh_token))  # the newest one too
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    # The other device's family is untouched.
    assert (await refresh(users, other_login.refresh_token)).user_id == user.user_id

    for bad in ("never-issued", "x" * 257, ""):
        err = await refused(refresh(users, bad))
        assert err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)


async def test_racing_refreshes_with_one_token_let_one_win_and_revoke(served: Served) -> None:
    users = stub(served)
    await sign_up(users, "race@example.com")
    auth = await login(users, "race@example.com")
    results = await asyncio.gather(
        *(refresh(users, auth.refresh_token) for _ in range(4)), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, users_pb2.RefreshSessionResponse)]
    assert len(won) <= 1
    assert all(
        r.code() == grpc.StatusCode.UNAUTHENTICATED for r in results if isinstance(r, grpc.RpcError)
    )
    for r in won:  # the winner's token died with the family the losers revoked
        assert (await refused(refresh(users, r.refresh_token))).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )


async def test_revoke_logs_out_and_is_idempotent(served: Served) -> None:
    users = stub(served)
    await sign_up(users, "bye@example.com")
    auth = await login(users, "bye@example.com")
    later = await refresh(users, auth.refresh_token)

    await users.RevokeSession(users_pb2.RevokeSessionRequest(refresh_token=later.refresh_token))
    err = await refused(refresh(users, later.refresh_token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    await users.RevokeSession(users_pb2.RevokeSessionRequest(refresh_token=later.refresh_token))
    await users.RevokeSession(users_pb2.RevokeSessionRequest(refresh_token="unknown-token"))
    err = await refused(users.RevokeSession(users_pb2.RevokeSessionRequest()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Logging in again starts a new family that works.
    again = await login(users, "bye@example.com")
    assert (await refresh(users, again.refresh_token)).refresh_token


async def test_deleting_a_user_kills_their_refresh_tokens(served: Served) -> None:
    users = stub(served)
    user = await sign_up(users, "gone@example.com")
    auth = await login(users, "gone@example.com")
    await users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user.user_id))
    err = await refused(refresh(users, auth.refresh_token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def _retry_delay_s(err: grpc.RpcError) -> float:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    raise AssertionError("no RetryInfo")


async def test_failed_logins_throttle_the_account_before_hashing(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    config = UsersConfig(password_profile="cheapest", login_max_failures=3)
    served = await serve_users(engine, tmp_path, config)
    try:
        users = stub(served)
        await sign_up(users, "victim@example.com")
        await sign_up(users, "bystander@example.com")
        for _ in range(3):
            err = await refused(login(users, "victim@example.com", "wrong password"))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        # Even the right password is refused during the back-off, with retry info.
        err = await refused(login(users, "Victim@Example.com"))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rpc_error_details(err).reason == "LOGIN_THROTTLED"
        assert 0 < _retry_delay_s(err) <= 900
        # Another account is unaffected.
        assert (await login(users, "bystander@example.com")).access_token
        # An unknown email is throttled exactly the same way (no enumeration).
        for _ in range(3):
            err = await refused(login(users, "nobody@example.com", "wrong password"))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        err = await refused(login(users, "nobody@example.com", "wrong password"))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # A burst for one email: at most `max_failures` attempts reach the argon2 slots.
        await sign_up(users, "burst@example.com")
        results = await asyncio.gather(
            *(login(users, "burst@example.com", "wrong password") for _ in range(12)),
            return_exceptions=True,
        )
        codes = [r.code() for r in results if isinstance(r, grpc.RpcError)]
        assert len(codes) == 12
        assert codes.count(grpc.StatusCode.UNAUTHENTICATED) <= 3
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 9
    finally:
        await served.close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def _store(engine: AsyncEngine) -> store.UsersStore:
    await migrate(engine, store.migrations())
    return store.UsersStore(session_factory(engine), Outbox())


async def test_throttle_window_slides_and_success_clears(engine: AsyncEngine) -> None:
    clock = Clock()
    throttle = LoginThrottle(await _store(engine), max_failures=2, window_s=60, clock=clock)
    for _ in range(2):
        async with throttle.attempt("a@example.com") as attempt:
            await attempt.failed()
        clock.advance(10)
    with pytest.raises(Exception, match="too many failed logins") as err:
        async with throttle.attempt("a@example.com"):
            pass
    assert err.value.retry_after_s == 40  # type: ignore[attr-defined]  # first failure + 60 s
    clock.advance(41)  # the first failure left the window
    async with throttle.attempt("a@example.com") as attempt:
        await attempt.succeeded()
    async with throttle.attempt("a@example.com"):  # cleared: two more tries allowed
        pass


async def test_signing_keys_rotate_and_old_tokens_verify_until_they_expire(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    times = KeyTimes(rotation_s=3600, publish_ahead_s=300, access_ttl_s=900)
    ring = KeyRing(await _store(engine), times, clock=clock)

    first = await ring.signing_key()
    old_token, _ = access_token(first, "u1", ["admin"], clock(), 900)
    assert [k["kid"] for k in (await ring.jwks())["keys"]] == [first.kid]

    clock.advance(3600 - 300)  # the next key is published ahead, not yet signing
    jwks = await ring.jwks()
    assert jwks["keys"][0]["kid"] == first.kid and len(jwks["keys"]) == 2
    assert (await ring.signing_key()).kid == first.kid
    upcoming = jwks["keys"][1]["kid"]

    clock.advance(300)  # rotation: new tokens carry the new kid
    second = await ring.signing_key()
    assert second.kid == upcoming != first.kid
    new_token, _ = access_token(second, "u1", [], clock(), 900)
    assert jwt.get_unverified_header(new_token)["kid"] == second.kid
    jwks = await ring.jwks()
    assert {k["kid"] for k in jwks["keys"]} == {first.kid, second.kid}
    for token in (old_token, new_token):  # both verify (old_token has not expired yet by PyJWT's
        verify(token, jwks, options={"verify_exp": False})  # clock: the ring's clock is fake)

    clock.advance(900 + 60)  # every token of the first key has expired: it is withdrawn
    assert [k["kid"] for k in (await ring.jwks())["keys"]] == [second.kid]
    with pytest.raises(jwt.InvalidKeyError):
        verify(old_token, await ring.jwks(), options={"verify_exp": False})

    # Another ring on the same database (another instance) agrees on the keys.
    twin = KeyRing(store.UsersStore(session_factory(engine), Outbox()), times, clock=clock)
    assert (await twin.signing_key()).kid == second.kid


async def test_create_admin_gives_the_admin_role_in_tokens(
    served: Served, engine: AsyncEngine, tmp_path: Path
) -> None:
    settings = service_settings("users", tmp_path)
    admin_id = await create_admin(
        settings, FAST, "Root@Example.com", "admin password 1", "Root", engine=engine
    )
    users = stub(served)
    auth = await login(users, "root@example.com", "admin password 1")
    assert auth.user_id == admin_id and list(auth.roles) == ["admin"]
    jwks, _ = await fetch_jwks(served.running.admin_port)
    assert verify(auth.access_token, jwks)["roles"] == ["admin"]
    assert list((await refresh(users, auth.refresh_token)).roles) == ["admin"]
    # Sign-up never grants a role.
    await sign_up(users, "plain@example.com")
    assert list((await login(users, "plain@example.com")).roles) == []


def _admin_cli(tmp_path: Path, *args: str, password: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESH_DATA_DIR": str(tmp_path / "cli-data"),
           "USERS_PASSWORD_PROFILE": "cheapest"}  # fmt: skip
    env.pop("USERS_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "services.users.admin", "create-admin", *args],
        input=password + "\n", capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_create_admin_command_reads_the_password_from_stdin(tmp_path: Path) -> None:
    done = _admin_cli(tmp_path, "--email", "boss@example.com", password="s3cret password")
    assert done.returncode == 0, done.stderr
    assert "admin " in done.stdout and "s3cret" not in done.stdout + done.stderr
    db = (tmp_path / "cli-data" / "users.db").read_bytes()
    assert b"boss@example.com" in db and b"s3cret password" not in db

    again = _admin_cli(tmp_path, "--email", "boss@example.com", password="s3cret password")
    assert again.returncode == 1 and "already exists" in again.stderr
    short = _admin_cli(tmp_path, "--email", "other@example.com", password="short")
    assert short.returncode == 2 and "password" in short.stderr


async def test_the_served_jwks_follows_a_rotation(engine: AsyncEngine, tmp_path: Path) -> None:
    """The wiring end to end: a short rotation period, tokens and JWKS over the wire."""
    config = UsersConfig(password_profile="cheapest", signing_key_rotation_s=2, jwks_max_age_s=1)
    served = await serve_users(engine, tmp_path, config)
    try:
        users = stub(served)
        await sign_up(users, "keys@example.com")
        first = await login(users, "keys@example.com")
        old_kid = jwt.get_unverified_header(first.access_token)["kid"]

        async def rotated() -> users_pb2.AuthenticateResponse | None:
            auth = await login(users, "keys@example.com")
            return None if jwt.get_unverified_header(auth.access_token)["kid"] == old_kid else auth

        second = await eventually(rotated, within_s=10, what="a new kid", interval_s=0.2)  # poll
        jwks, headers = await fetch_jwks(served.running.admin_port)
        assert headers["Cache-Control"] == "public, max-age=1"
        assert old_kid in {k["kid"] for k in jwks["keys"]}  # its tokens have not expired
        assert verify(first.access_token, jwks)["sub"] == verify(second.access_token, jwks)["sub"]
    finally:
        await served.close()
