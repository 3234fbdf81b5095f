"""How a process authenticates to NATS, and the NATS URL as it may be shown.

A service's credentials come from settings, never from code:
- `NATS_NKEY_SEED_FILE`: an nkey seed file (what `meshctl up` hands each service,
  see mesh/events/nats_auth.py);
- `NATS_CREDS`: a `.creds` file (JWT + seed) for a server run in operator mode
  (NGS, `nsc`-managed accounts): a user-supplied NATS;
- user/password or a token in `NATS_URL` itself (`nats://user:pass@host:4222`),
  which nats-py understands as it is;
- TLS: a `tls://` URL, or `NATS_TLS_CA_FILE` (a private CA) and
  `NATS_TLS_CERT_FILE`/`NATS_TLS_KEY_FILE` (a client certificate).
Only one of the seed file and the creds file may be set (nats-py would pick one
silently). The files are read by nats-py at every (re)connect, so a rotated
seed file is picked up by the next reconnection.

`redact_url` is how a NATS URL is logged or printed: userinfo is masked, so a
URL carrying a password or a token never reaches a log line, a status table or
an error message.
"""

from __future__ import annotations

import os
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

from mesh.events.nats_auth import inbox_prefix
from mesh.settings import Settings


class NatsConfigError(ValueError):
    """The NATS client settings contradict each other; the message names them."""


@dataclass(frozen=True, slots=True)
class NatsClientAuth:
    """The credentials and TLS material one NATS client connects with."""

    nkey_seed_file: str = ""
    creds_file: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # The identity's private reply-inbox prefix (`_INBOX.<identity>`); empty: nats-py's.
    inbox_prefix: str = ""

    @classmethod
    def for_identity(cls, identity: str, **files: str) -> NatsClientAuth:
        """Credentials of a mesh identity: its files, and its private inbox prefix."""
        return cls(inbox_prefix=inbox_prefix(identity), **files)

    def validate(self) -> None:
        """NatsConfigError for contradicting settings or a file that is not there: a
        process should stop at start for these, not retry a connection forever."""
        if self.nkey_seed_file and self.creds_file:
            raise NatsConfigError("set NATS_NKEY_SEED_FILE or NATS_CREDS, not both")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise NatsConfigError("NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together")
        files = {
            "NATS_NKEY_SEED_FILE": self.nkey_seed_file,
            "NATS_CREDS": self.creds_file,
            "NATS_TLS_CA_FILE": self.tls_ca_file,
            "NATS_TLS_CERT_FILE": self.tls_cert_file,
            "NATS_TLS_KEY_FILE": self.tls_key_file,
        }
        for name, path in files.items():
            if path and not os.path.isfile(path):
                raise NatsConfigError(f"{name}={path}: no such file")

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect` (nothing for an anonymous client)."""
        self.validate()
        opts: dict[str, Any] = {}
        if self.nkey_seed_file:
            opts["nkeys_seed"] = self.nkey_seed_file
        if self.creds_file:
            opts["user_credentials"] = self.creds_file
        if self.tls_ca_file or self.tls_cert_file:
            ctx = ssl.create_default_context(cafile=self.tls_ca_file or None)
            if self.tls_cert_file:
                ctx.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            opts["tls"] = ctx
        if self.inbox_prefix:
            opts["inbox_prefix"] = self.inbox_prefix
        return opts


def redact_url(url: str) -> str:
    """`url` with any user, password or token replaced by `***` (safe to log or show)."""
    if "@" not in url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable NATS URL>"
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def redact_urls(urls: str) -> str:
    """A comma-separated server list (nats-py accepts one) with each URL redacted."""
    return ",".join(redact_url(u.strip()) for u in urls.split(","))


def client_auth(settings: Settings) -> NatsClientAuth:
    """The NATS credentials of the process `settings` describe (its service's identity)."""
    return NatsClientAuth.for_identity(
        settings.service,
        nkey_seed_file=settings.nats_nkey_seed_file,
        creds_file=settings.nats_creds_file,
        tls_ca_file=settings.nats_tls_ca_file,
        tls_cert_file=settings.nats_tls_cert_file,
        tls_key_file=settings.nats_tls_key_file,
    )
