"""gRPC `shop.users.v1.UserService`: validate, call the accounts logic, map to protobuf.

Domain errors (`base.errors`) are raised and mapped to statuses by the
server's error interceptor. GetUser and DeleteUser act on the caller's own
account, or any account for an admin (services/common/access.py); another
account answers PERMISSION_DENIED whether or not it exists.
"""

from __future__ import annotations

from typing import Any

from shop.users.v1 import users_pb2, users_pb2_grpc

from mesh.service_db import db_guard
from services.common import access
from services.common.timestamps import to_timestamp
from services.users import validation
from services.users.accounts import Accounts
from services.users.store import UserRow

Context = Any  # grpc.aio.ServicerContext; unused: errors travel as exceptions


def user_to_proto(row: UserRow) -> users_pb2.User:
    return users_pb2.User(
        user_id=row.user_id,
        email=row.email,
        profile=users_pb2.Profile(display_name=row.display_name),
        create_time=to_timestamp(row.created_at),
    )


class UserServicer(users_pb2_grpc.UserServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts

    @db_guard
    async def CreateUser(
        self, request: users_pb2.CreateUserRequest, context: Context
    ) -> users_pb2.User:
        new = validation.create_user(request)
        return user_to_proto(await self.accounts.create(new))

    @db_guard
    async def GetUser(self, request: users_pb2.GetUserRequest, context: Context) -> users_pb2.User:
        user_id = validation.user_id(request)
        access.require_self_or_admin(user_id, "reading the account")
        return user_to_proto(await self.accounts.store.get_user(user_id))

    @db_guard
    async def DeleteUser(
        self, request: users_pb2.DeleteUserRequest, context: Context
    ) -> users_pb2.DeleteUserResponse:
        user_id = validation.user_id(request)
        access.require_self_or_admin(user_id, "deleting the account")
        await self.accounts.store.delete_user(user_id)
        return users_pb2.DeleteUserResponse(user_id=user_id)

    @db_guard
    async def Authenticate(
        self, request: users_pb2.AuthenticateRequest, context: Context
    ) -> users_pb2.AuthenticateResponse:
        login = await self.accounts.authenticate(validation.authenticate(request))
        t = login.tokens
        return users_pb2.AuthenticateResponse(
            session_token=login.session_token,
            expire_time=to_timestamp(login.session_expires_at),
            user_id=t.user_id,
            access_token=t.access_token,
            access_token_expire_time=to_timestamp(t.access_expires_at),
            refresh_token=t.refresh_token,
            refresh_token_expire_time=to_timestamp(t.refresh_expires_at),
            roles=t.roles,
        )

    @db_guard
    async def ValidateSession(
        self, request: users_pb2.ValidateSessionRequest, context: Context
    ) -> users_pb2.ValidateSessionResponse:
        user_id, expires_at = await self.accounts.validate(validation.session_token(request))
        return users_pb2.ValidateSessionResponse(
            user_id=user_id, expire_time=to_timestamp(expires_at)
        )

    @db_guard
    async def RefreshSession(
        self, request: users_pb2.RefreshSessionRequest, context: Context
    ) -> users_pb2.RefreshSessionResponse:
        t = await self.accounts.refresh(validation.refresh_token(request))
        return users_pb2.RefreshSessionResponse(
            access_token=t.access_token,
            access_token_expire_time=to_timestamp(t.access_expires_at),
            refresh_token=t.refresh_token,
            refresh_token_expire_time=to_timestamp(t.refresh_expires_at),
            user_id=t.user_id,
            roles=t.roles,
        )

    @db_guard
    async def RevokeSession(
        self, request: users_pb2.RevokeSessionRequest, context: Context
    ) -> users_pb2.RevokeSessionResponse:
        await self.accounts.revoke(validation.refresh_token(request))
        return users_pb2.RevokeSessionResponse()
