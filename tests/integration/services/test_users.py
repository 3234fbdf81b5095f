"""The users service over gRPC on loopback, against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from nats.js.errors import NotFoundError
from shop.events.v1 import events_pb2
from shop.users.v1 import users_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.events import EventBus, decode, unpack
from services.users.app import build
from services.users.config import UsersConfig
from tests.support.nats import nats_server
from tests.support.services import (
    Served,
    dump_text,
    outbox_events,
    rpc_error_details,
    serve,
    service_settings,
)
from tests.support.users import FAST, PASSWORD, serve_users, sign_up, users_stub


@pytest.fixture
async def served(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Served]:
    s = await serve_users(engine, tmp_path)
    yield s
    await s.close()


stub = users_stub
create = sign_up


async def test_create_get_and_user_created_event(served: Served, engine: AsyncEngine) -> None:
    users = stub(served)
    user = await create(users)
    assert user.email == "ada@example.com"  # stored lower case
    assert user.profile.display_name == "Ada"
    assert user.create_time.seconds > 0
    got = await users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id))
    assert got == user
    # Upper-case UUIDs name the same user.
    got = await users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id.upper()))
    assert got.user_id == user.user_id

    events = await outbox_events(engine)
    assert [e.type for e in events] == ["user.created"]
    assert unpack(events[0], events_pb2.UserCreated).user_id == user.user_id
    assert unpack(events[0], events_pb2.UserCreated).email == "ada@example.com"
    assert events[0].subject == user.user_id and events[0].source == "users"

    stored = await dump_text(engine)
    assert PASSWORD not in stored
    assert "$argon2id$" in stored


async def test_duplicate_email_is_already_exists_and_publishes_once(
    served: Served, engine: AsyncEngine
) -> None:
    users = stub(served)
    await create(users, "bob@example.com")
    with pytest.raises(grpc.RpcError) as err:
        await create(users, "  BOB@example.COM ")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert rpc_error_details(err.value).reason == "EMAIL_TAKEN"
    assert [e.type for e in await outbox_events(engine)] == ["user.created"]


async def test_racing_sign_ups_with_one_email_create_one_account(
    served: Served, engine: AsyncEngine
) -> None:
    users = stub(served)
    results = await asyncio.gather(
        *(create(users, "race@example.com") for _ in range(8)), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, users_pb2.User)]
    failed = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(ok) == 1
    assert {f.code() for f in failed} == {grpc.StatusCode.ALREADY_EXISTS}
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT COUNT(*) FROM users")) == 1
        assert await conn.scalar(text("SELECT COUNT(*) FROM mesh_outbox")) == 1


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (users_pb2.CreateUserRequest(), {"email", "password", "profile"}),
        (
            users_pb2.CreateUserRequest(
                email="no-at-sign", password="short", profile=users_pb2.Profile(display_name=" ")
            ),
            {"email", "password", "profile.display_name"},
        ),
        (
            users_pb2.CreateUserRequest(
                email="a@b", password="x" * 257, profile=users_pb2.Profile(display_name="a\x00b")
            ),
            {"email", "password", "profile.display_name"},
        ),
    ],
)
async def test_create_rejects_bad_input_with_field_violations(
    served: Served, engine: AsyncEngine, request_: users_pb2.CreateUserRequest, fields: set[str]
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        await stub(served).CreateUser(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(rpc_error_details(err.value).violations) == fields
    assert await outbox_events(engine) == []


async def test_get_and_delete_validate_ids_and_answer_not_found(served: Served) -> None:
    users = stub(served)
    for call, req in [
        (users.GetUser, users_pb2.GetUserRequest(user_id="nope")),
        (users.DeleteUser, users_pb2.DeleteUserRequest(user_id="")),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            await call(req)  # type: ignore[operator]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(rpc_error_details(err.value).violations) == {"user_id"}
    unknown = "123e4567-e89b-12d3-a456-426614174000"
    with pytest.raises(grpc.RpcError) as err:
        await users.GetUser(users_pb2.GetUserRequest(user_id=unknown))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_authenticate_and_validate_session(served: Served, engine: AsyncEngine) -> None:
    users = stub(served)
    user = await create(users, "carol@example.com")
    auth = await users.Authenticate(
        users_pb2.AuthenticateRequest(email="CAROL@example.com", password=PASSWORD)
    )
    assert auth.user_id == user.user_id
    assert len(auth.session_token) >= 43
    assert auth.expire_time.seconds > time.time() + 3600
    valid = await users.ValidateSession(
        users_pb2.ValidateSessionRequest(session_token=auth.session_token)
    )
    assert valid.user_id == user.user_id
    assert valid.expire_time == auth.expire_time
    # Only the token's hash is stored.
    stored = await dump_text(engine)
    assert auth.session_token not in stored
    assert hashlib.sha256(auth.session_token.encode()).hexdigest() in stored
    # A second login is a second session.
    auth2 = await users.Authenticate(
        users_pb2.AuthenticateRequest(email="carol@example.com", password=PASSWORD)
    )
    assert auth2.session_token != auth.session_token


async def test_wrong_password_and_unknown_email_look_the_same(served: Served) -> None:
    users = stub(served)
    await create(users, "dave@example.com")
    errors = []
    for email, password in [("dave@example.com", "wrong password"), ("who@example.com", PASSWORD)]:
        with pytest.raises(grpc.RpcError) as err:
            await users.Authenticate(users_pb2.AuthenticateRequest(email=email, password=password))
        errors.append(err.value)
    assert {e.code() for e in errors} == {grpc.StatusCode.UNAUTHENTICATED}
    assert errors[0].details() == errors[1].details()
    assert rpc_error_details(errors[0]).reason == rpc_error_details(errors[1]).reason
    with pytest.raises(grpc.RpcError) as err:
        await users.Authenticate(users_pb2.AuthenticateRequest(email="", password=""))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(rpc_error_details(err.value).violations) == {"email", "password"}


async def test_unknown_and_malformed_sessions(served: Served) -> None:
    users = stub(served)
    with pytest.raises(grpc.RpcError) as err:
        await users.ValidateSession(users_pb2.ValidateSessionRequest(session_token="made-up"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for token in ("", "x" * 300):
        with pytest.raises(grpc.RpcError) as err:
            await users.ValidateSession(users_pb2.ValidateSessionRequest(session_token=token))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_expired_session_is_unauthenticated(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    config = UsersConfig(password_profile="cheapest", session_ttl_s=1.0)
    s = await serve(build, service_settings("users", tmp_path), engine=sqlite_engine, config=config)
    try:
        users = stub(s)
        await create(users, "erin@example.com")
        auth = await users.Authenticate(
            users_pb2.AuthenticateRequest(email="erin@example.com", password=PASSWORD)
        )
        req = users_pb2.ValidateSessionRequest(session_token=auth.session_token)
        await users.ValidateSession(req)
        deadline = time.monotonic() + 5
        while True:  # poll until the expiry passes
            try:
                await users.ValidateSession(req)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                break
            assert time.monotonic() < deadline, "session never expired"
            await asyncio.sleep(0.05)  # poll
    finally:
        await s.close()


async def test_delete_user_publishes_and_ends_sessions(served: Served, engine: AsyncEngine) -> None:
    users = stub(served)
    user = await create(users, "frank@example.com")
    auth = await users.Authenticate(
        users_pb2.AuthenticateRequest(email="frank@example.com", password=PASSWORD)
    )
    deleted = await users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user.user_id))
    assert deleted.user_id == user.user_id
    with pytest.raises(grpc.RpcError) as err:
        await users.GetUser(users_pb2.GetUserRequest(user_id=user.user_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        await users.ValidateSession(
            users_pb2.ValidateSessionRequest(session_token=auth.session_token)
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Deleting again: NOT_FOUND, and that rolled-back attempt published nothing.
    with pytest.raises(grpc.RpcError) as err:
        await users.DeleteUser(users_pb2.DeleteUserRequest(user_id=user.user_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    events = await outbox_events(engine)
    assert [e.type for e in events] == ["user.created", "user.deleted"]
    assert unpack(events[1], events_pb2.UserDeleted).user_id == user.user_id
    # The email is free again.
    await create(users, "frank@example.com")


async def test_password_never_logged(
    served: Served, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    users = stub(served)
    secret = "very secret passphrase 42"
    await users.CreateUser(
        users_pb2.CreateUserRequest(
            email="gina@example.com",
            password=secret,
            profile=users_pb2.Profile(display_name="Gina"),
        )
    )
    auth = await users.Authenticate(
        users_pb2.AuthenticateRequest(email="gina@example.com", password=secret)
    )
    with pytest.raises(grpc.RpcError):
        await users.Authenticate(
            users_pb2.AuthenticateRequest(email="gina@example.com", password=secret + "!")
        )
    assert caplog.records, "expected the service to log something"
    assert secret not in caplog.text
    assert auth.session_token not in caplog.text
    assert secret not in await dump_text(engine)


async def test_login_upgrades_a_hash_made_with_old_parameters(
    sqlite_engine: AsyncEngine, tmp_path: Path
) -> None:
    settings = service_settings("users", tmp_path)
    s = await serve(build, settings, engine=sqlite_engine, config=FAST)
    try:
        await create(stub(s), "hal@example.com")
    finally:
        await s.close()
    async with sqlite_engine.connect() as conn:
        before = await conn.scalar(text("SELECT password_hash FROM users"))
    s = await serve(build, settings, engine=sqlite_engine, config=UsersConfig())
    try:
        users = stub(s)
        await users.Authenticate(
            users_pb2.AuthenticateRequest(email="hal@example.com", password=PASSWORD)
        )
        async with sqlite_engine.connect() as conn:
            after = await conn.scalar(text("SELECT password_hash FROM users"))
        assert after != before and "m=65536,t=3,p=4" in after
        await users.Authenticate(
            users_pb2.AuthenticateRequest(email="hal@example.com", password=PASSWORD)
        )
    finally:
        await s.close()


async def test_events_reach_jetstream(sqlite_engine: AsyncEngine, tmp_path: Path) -> None:
    """With NATS configured, build() runs the outbox relay: user.created lands in the stream."""
    async with nats_server(tmp_path / "nats") as nats:
        settings = service_settings("users", tmp_path, nats_url=nats.url)
        s = await serve(build, settings, engine=sqlite_engine, config=FAST)
        bus = await EventBus.connect(nats.url, name="test-reader")
        try:
            user = await create(stub(s), "ivy@example.com")
            deadline = time.monotonic() + 10
            while True:  # poll the stream until the relay has published
                try:
                    msg = await bus.js.get_last_msg("USER", "user.created")
                    break
                except NotFoundError:
                    assert time.monotonic() < deadline, "user.created never reached JetStream"
                    await asyncio.sleep(0.05)  # poll
            envelope = decode(msg.data or b"")
            assert unpack(envelope, events_pb2.UserCreated).user_id == user.user_id
            while True:  # and marks the row sent once JetStream acked it
                async with sqlite_engine.connect() as conn:
                    unsent = await conn.scalar(
                        text("SELECT COUNT(*) FROM mesh_outbox WHERE sent_at IS NULL")
                    )
                if unsent == 0:
                    break
                assert time.monotonic() < deadline, "the outbox row was never marked sent"
                await asyncio.sleep(0.05)  # poll
        finally:
            await bus.close()
            await s.close()
