"""Settings of the users service beyond the mesh-wide ones (`USERS_*`).

Declared like the mesh's (`base/settings.py`): one `setting(...)` per variable,
read by `UsersConfig.from_env`, listed in the README by
`python -m services.settings_tables --markdown`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from base.settings import choice, load, number, setting

# argon2 parameter sets (argon2-cffi's profiles). "rfc9106_low_memory" is
# argon2-cffi's default (64 MiB, 3 passes, ~0.1 s here); "cheapest" exists for
# tests only and must never protect real passwords.
PASSWORD_PROFILES = ("rfc9106_low_memory", "rfc9106_high_memory", "cheapest")


@dataclass(frozen=True, slots=True)
class UsersConfig:
    session_ttl_s: float = setting(
        "USERS_SESSION_TTL_S", 24 * 3600.0, number(minimum=1.0), "lifetime of a session token"
    )
    password_profile: str = setting(
        "USERS_PASSWORD_PROFILE",
        "rfc9106_low_memory",
        choice(PASSWORD_PROFILES),
        "argon2 parameters: `rfc9106_low_memory` (64 MiB, t=3), `rfc9106_high_memory`, "
        "`cheapest` (tests only). Hashes made with other parameters are upgraded at the "
        "next login.",
    )
    # Password hashing is CPU- and memory-heavy: at most this many at once (not a variable).
    max_concurrent_hashes: int = 2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> UsersConfig:
        return load(cls, env)
