"""The secret the instances of a service share, and the keys derived from it.

`MESH_SERVICE_SECRET` is one secret for the whole shop: `meshctl up` makes a
fresh one per run and passes it to every service; in compose or Kubernetes it
comes from the deployment's secret store. Each service derives its own keys
from it, per purpose (`derive_key(secret, "orders", "page-token")`), so a key
of one service signs nothing another accepts.

Unset, the secret `meshctl pki init` wrote into the PKI directory
(`<MESH_PKI_DIR>/service-secret`, 0600: compose's `pki-init` writes it into the
shared `pki` volume) is used. With neither, a process makes a random secret of
its own and warns: its tokens are then valid on that instance only, and only
until it restarts (secure, not shared). It is never a constant in the code.
The value is never logged: `Secret`'s repr hides it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from base.settings import Parser, SettingsError, load, setting

log = logging.getLogger(__name__)

MIN_SECRET_CHARS = 16


class Secret:
    """A secret value whose repr and str do not show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value.encode("utf-8")

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret(***)" if self._value else "Secret(unset)"

    __str__ = __repr__


# Any text parses (a refused value would be echoed in the error); `service_key` checks it.
_SECRET: Parser[Secret] = Parser(Secret, f"text of at least {MIN_SECRET_CHARS} characters")


@dataclass(frozen=True, slots=True)
class SecretsConfig:
    service_secret: Secret = setting(
        "MESH_SERVICE_SECRET",
        Secret(""),
        _SECRET,
        "what services derive their signing keys from (page tokens); `meshctl up` sets a "
        "fresh one per run; shared by every instance of a service",
        shown_default="random per process (warned)",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SecretsConfig:
        return load(cls, env)


def derive_key(secret: Secret, service: str, purpose: str) -> bytes:
    """A 32-byte key for `purpose` of `service` (HMAC-SHA256 of the names under the secret)."""
    return hmac.new(secret.reveal(), f"{service}\0{purpose}".encode(), hashlib.sha256).digest()


def _secret_from_pki_dir(env: Mapping[str, str] | None) -> Secret:
    """The shared secret `meshctl pki init` wrote beside the certificates, if readable."""
    from mesh.security.store import SERVICE_SECRET_FILE
    from mesh.settings import SecuritySettings

    path = Path(load(SecuritySettings, env).pki_dir) / SERVICE_SECRET_FILE
    try:
        return Secret(path.read_text(encoding="utf-8").strip())
    except OSError:
        return Secret("")


def service_key(service: str, purpose: str, env: Mapping[str, str] | None = None) -> bytes:
    """The key from MESH_SERVICE_SECRET, or (unset) a random one for this process, warned."""
    secret = SecretsConfig.from_env(env).service_secret
    if secret and len(secret.reveal()) < MIN_SECRET_CHARS:
        raise SettingsError(f"MESH_SERVICE_SECRET is too short: use {MIN_SECRET_CHARS}+ characters")
    if not secret:
        secret = _secret_from_pki_dir(env)
    if not secret:
        log.warning(
            "MESH_SERVICE_SECRET is not set: %s signs its %s with a random key of this process "
            "(valid on this instance only, until it restarts)",
            service,
            purpose,
        )
        secret = Secret(secrets.token_urlsafe(32))
    return derive_key(secret, service, purpose)
