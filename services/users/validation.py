"""Validation of the users service's requests: INVALID_ARGUMENT with every field violation.

Nothing here echoes a password or a session token back in a violation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shop.users.v1 import users_pb2

from base.errors import Violations
from services.common.validation import text_field, uuid_field

MAX_EMAIL = 254
MAX_LOCAL_PART = 64
MIN_PASSWORD = 8
MAX_PASSWORD = 256
MAX_DISPLAY_NAME = 100
MAX_TOKEN = 256

# RFC 5322 "dot-atom" local part (no quoted strings) and an LDH domain name with
# at least two labels: what real sign-up forms accept.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def email_field(v: Violations, path: str, value: str) -> str:
    """A well-formed email, stripped and lower-cased (the unique login key)."""
    email = value.strip().lower()
    if not email:
        v.add(path, "is required")
        return ""
    if len(email) > MAX_EMAIL:
        v.add(path, f"must be at most {MAX_EMAIL} characters")
        return ""
    local, at, domain = email.rpartition("@")
    labels = domain.split(".")
    ok = (
        bool(at)
        and 0 < len(local) <= MAX_LOCAL_PART
        and _LOCAL.fullmatch(local) is not None
        and len(labels) >= 2
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )
    if not ok:
        v.add(path, "must be an email address such as ada@example.com")
        return ""
    return email


@dataclass(frozen=True, slots=True)
class NewUser:
    email: str
    password: str
    display_name: str


def create_user(req: users_pb2.CreateUserRequest) -> NewUser:
    v = Violations()
    email = email_field(v, "email", req.email)
    if not req.password:
        v.add("password", "is required")
    elif not MIN_PASSWORD <= len(req.password) <= MAX_PASSWORD:
        v.add("password", f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if not req.HasField("profile"):
        v.add("profile", "is required")
        name = ""
    else:
        name = text_field(v, "profile.display_name", req.profile.display_name,
                          max_len=MAX_DISPLAY_NAME)  # fmt: skip
    v.raise_if_any()
    return NewUser(email, req.password, name)


def user_id(req: users_pb2.GetUserRequest | users_pb2.DeleteUserRequest) -> str:
    v = Violations()
    uid = uuid_field(v, "user_id", req.user_id)
    v.raise_if_any()
    return uid


@dataclass(frozen=True, slots=True)
class Credentials:
    email: str
    password: str


def authenticate(req: users_pb2.AuthenticateRequest) -> Credentials:
    v = Violations()
    email = email_field(v, "email", req.email)
    if not req.password:
        v.add("password", "is required")
    elif len(req.password) > MAX_PASSWORD:
        # Bounded before hashing: an endless password must not cost endless CPU.
        v.add("password", f"must be at most {MAX_PASSWORD} characters")
    v.raise_if_any()
    return Credentials(email, req.password)


def _opaque_token(path: str, value: str) -> str:
    v = Violations()
    if not value:
        v.add(path, "is required")
    elif len(value) > MAX_TOKEN:
        v.add(path, f"must be at most {MAX_TOKEN} characters")
    v.raise_if_any()
    return value


def session_token(req: users_pb2.ValidateSessionRequest) -> str:
    return _opaque_token("session_token", req.session_token)


def refresh_token(req: users_pb2.RefreshSessionRequest | users_pb2.RevokeSessionRequest) -> str:
    return _opaque_token("refresh_token", req.refresh_token)
