"""Settings of the users service beyond the mesh-wide ones (`USERS_*`).

Declared like the mesh's (`base/settings.py`): one `setting(...)` per variable,
read by `UsersConfig.from_env`, listed in the README by
`python -m services.settings_tables --markdown`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from base.settings import choice, load, number, setting, whole

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
    access_token_ttl_s: float = setting(
        "USERS_ACCESS_TOKEN_TTL_S",
        900.0,
        number(minimum=1.0),
        "lifetime of an access token (JWT); it cannot be revoked before, so keep it short",
    )
    refresh_token_ttl_s: float = setting(
        "USERS_REFRESH_TOKEN_TTL_S",
        30 * 24 * 3600.0,
        number(minimum=1.0),
        "lifetime of a refresh token (each refresh issues a new one with a new lifetime)",
    )
    signing_key_rotation_s: float = setting(
        "USERS_SIGNING_KEY_ROTATION_S",
        7 * 24 * 3600.0,
        number(minimum=1.0),
        "how long one Ed25519 signing key signs before the next one takes over",
    )
    jwks_max_age_s: float = setting(
        "USERS_JWKS_MAX_AGE_S",
        300.0,
        number(minimum=0.0),
        "`Cache-Control: max-age` of the JWKS; a new key is published this long before it "
        "signs, so verifiers that cache the JWKS no longer than this know it in time",
    )
    login_max_failures: int = setting(
        "USERS_LOGIN_MAX_FAILURES",
        5,
        whole(minimum=1),
        "failed logins per email within the window after which the email is refused "
        "(RESOURCE_EXHAUSTED) before any password hashing",
    )
    login_failure_window_s: float = setting(
        "USERS_LOGIN_FAILURE_WINDOW_S",
        900.0,
        number(minimum=1.0),
        "the sliding window of the failed-login throttle",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> UsersConfig:
        return load(cls, env)
