"""Settings of the users service beyond the mesh-wide ones (`USERS_*`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import env_choice, env_float

# argon2 parameter sets (argon2-cffi's profiles). "rfc9106_low_memory" is
# argon2-cffi's default (64 MiB, 3 passes, ~0.1 s here); "cheapest" exists for
# tests only and must never protect real passwords.
PASSWORD_PROFILES = ("rfc9106_low_memory", "rfc9106_high_memory", "cheapest")
DEFAULT_SESSION_TTL_S = 24 * 3600.0
DEFAULT_PASSWORD_PROFILE = "rfc9106_low_memory"


@dataclass(frozen=True, slots=True)
class UsersConfig:
    session_ttl_s: float = DEFAULT_SESSION_TTL_S
    password_profile: str = DEFAULT_PASSWORD_PROFILE
    # Password hashing is CPU- and memory-heavy: at most this many at once.
    max_concurrent_hashes: int = 2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> UsersConfig:
        e = os.environ if env is None else env
        return cls(
            session_ttl_s=env_float(e, "USERS_SESSION_TTL_S", DEFAULT_SESSION_TTL_S, minimum=1.0),
            password_profile=env_choice(
                e, "USERS_PASSWORD_PROFILE", DEFAULT_PASSWORD_PROFILE, PASSWORD_PROFILES
            ),
        )
