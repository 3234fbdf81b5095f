"""Reading a service's own settings (`USERS_*`, `INVENTORY_*`, `PAYMENTS_*`) from the environment.

The mesh-wide settings live in `mesh.settings.Settings`; what only one service
needs is read here the same way: a malformed value raises `SettingsError` naming
the variable, which `run_service` prints before exiting 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mesh.settings import SettingsError


def _raw(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    return None if raw is None or raw.strip() == "" else raw.strip()


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is invalid: must be a number") from None
    if not value >= minimum or value != value or value == float("inf"):
        raise SettingsError(f"{name}={raw!r} is invalid: must be a finite number >= {minimum:g}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is invalid: must be a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} is invalid: must be at least {minimum}")
    return value


def env_choice(env: Mapping[str, str], name: str, default: str, choices: Sequence[str]) -> str:
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r} is invalid: must be one of {', '.join(choices)}")
    return raw
