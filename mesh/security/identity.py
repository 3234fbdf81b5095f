"""One process's service identity, and the gRPC credentials made from it.

`MeshIdentity.load(service, security)` gets this instance a certificate:

* when the CA key is readable (local `meshctl up`, tests) the instance issues
  itself a fresh per-instance certificate in memory (its key never touches the
  disk) and renews it in the background when two thirds of its lifetime have
  passed;
* otherwise (compose, Kubernetes, your own CA without its key) it loads
  `<pki_dir>/<service>.crt` and `.key` (`meshctl pki issue`; on Kubernetes the
  Secret cert-manager renews, the certificate followed by its issuer's chain) and
  reloads them when the files change (`meshctl pki rotate`, cert-manager, or any
  tool that renews them), checked every `reload_interval_s`.

Rotation without failed calls: servers use `grpc.dynamic_ssl_server_credentials`,
whose fetcher gRPC calls on every handshake, so the next connection gets the new
certificate while established ones carry on; clients ask `channel_credentials()`
for each new connection, and `on_change` listeners (the client pools) replace
their connections, draining the old ones (mesh/balancer/pool.py).

Clients verify the callee by name: `target_name(service)` is the DNS SAN
`<service>.<trust-domain>` set as `grpc.ssl_target_name_override`, so an instance
presenting another service's certificate fails the handshake.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable
from typing import Any

import grpc

from base.tasks import cancel_and_wait
from mesh.security.identity_files import CHECK_S, renewal_due
from mesh.security.pki import KeyPair, PkiError, describe, dns_name, spiffe_id
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings

log = logging.getLogger(__name__)

_MIN_DELAY_S = 0.05

Listener = Callable[[], None]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class MeshIdentity:
    """This instance's certificate (current generation), the CA bundle, credentials."""

    def __init__(
        self,
        service: str,
        store: PkiStore,
        *,
        self_issue: bool,
        reload_interval_s: float = 10.0,
    ) -> None:
        self.service = service
        self.store = store
        self.trust_domain = store.trust_domain
        self.spiffe_id = spiffe_id(self.trust_domain, service)
        self._self_issue = self_issue
        self._reload_interval_s = reload_interval_s
        self._ca_pem = store.ca_bundle()
        self._pair = self._obtain()
        self._mtimes = self._file_mtimes()
        self.generation = 1
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def load(cls, service: str, security: SecuritySettings, **kwargs: Any) -> MeshIdentity:
        """The identity of `service` from the PKI directory; PkiError says what is missing."""
        store = PkiStore(security)
        return cls(service, store, self_issue=store.ca_key_available(), **kwargs)

    # -- certificate ----------------------------------------------------------------------

    @property
    def pair(self) -> KeyPair:
        return self._pair

    @property
    def ca_pem(self) -> bytes:
        return self._ca_pem

    @property
    def not_after(self) -> dt.datetime:
        return describe(self._pair.cert_pem).not_after

    def _obtain(self) -> KeyPair:
        if self._self_issue:
            return self.store.issue(self.service, write=False)
        return self.store.load(self.service)

    def _file_mtimes(self) -> tuple[float, ...]:
        if self._self_issue:
            return ()
        paths = (
            self.store.cert_path(self.service),
            self.store.key_path(self.service),
            self.store.ca_cert_path,
        )
        try:
            return tuple(os.stat(p).st_mtime_ns for p in paths)
        except OSError:
            return ()

    def renew(self) -> None:
        """A new certificate now (re-issued, or re-read from the files); listeners are told."""
        self._ca_pem = self.store.ca_bundle()
        self._pair = self._obtain()
        self._mtimes = self._file_mtimes()
        self.generation += 1
        info = describe(self._pair.cert_pem)
        log.info(
            "%s: certificate renewed (generation %d, valid until %s)",
            self.spiffe_id,
            self.generation,
            info.not_after.isoformat(timespec="seconds"),
        )
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("certificate change listener failed")

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call `listener()` after each renewal; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # -- credentials ------------------------------------------------------------------------

    def target_name(self, service: str) -> str:
        """The name a callee of `service` must hold (its DNS SAN)."""
        return dns_name(self.trust_domain, service)

    def channel_options(self, service: str) -> list[tuple[str, Any]]:
        """Channel arguments that make the handshake verify the callee is `service`."""
        return [("grpc.ssl_target_name_override", self.target_name(service))]

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for one new connection: the CA to trust, this instance's certificate."""
        pair = self._pair
        return grpc.ssl_channel_credentials(
            root_certificates=self._ca_pem,
            private_key=pair.key_pem,
            certificate_chain=pair.cert_pem,
        )

    def _server_config(self) -> grpc.ServerCertificateConfiguration:
        pair = self._pair
        return grpc.ssl_server_certificate_configuration(
            [(pair.key_pem, pair.cert_pem)], root_certificates=self._ca_pem
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials requiring a client certificate from the mesh CA.

        gRPC calls the fetcher before each handshake: it answers the new
        configuration once per renewal and None (keep the current one) otherwise.
        """
        served = self.generation

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            if served == self.generation:
                return None
            served = self.generation
            return self._server_config()

        return grpc.dynamic_ssl_server_credentials(
            self._server_config(),
            fetch,  # type: ignore[arg-type]  # grpc-stubs omit the documented None
            require_client_authentication=True,
        )

    # -- background renewal -------------------------------------------------------------------

    def renew_delay_s(self, now: dt.datetime | None = None) -> float:
        """Seconds until the renewal is due: a third of the lifetime before expiry.

        The lifetime is the configured one (MESH_CERT_LIFETIME_S), not the
        certificate's span, which is back-dated a little for clock skew.
        """
        due = renewal_due(describe(self._pair.cert_pem), self.store.lifetime)
        return max((due - (now or _now())).total_seconds(), _MIN_DELAY_S)

    def start(self) -> None:
        """Renew in the background (idempotent; needs a running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"mesh-identity-{self.service}"
            )

    async def _run(self) -> None:
        while True:
            if self._self_issue:
                # Until the renewal, re-reading the wall clock at least every CHECK_S: a
                # suspended machine's monotonic clock stops (identity_files module doc).
                await asyncio.sleep(min(self.renew_delay_s(), CHECK_S))
                due = self.renew_delay_s() <= _MIN_DELAY_S
            else:
                await asyncio.sleep(self._reload_interval_s)  # poll
                due = self._file_mtimes() != self._mtimes
            if not due:
                continue
            try:
                self.renew()
            except (PkiError, OSError) as exc:
                log.error("%s: renewing the certificate failed (retrying): %s", self.spiffe_id, exc)
                await asyncio.sleep(min(self._reload_interval_s, 5.0))  # backoff before retrying

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)


def warn_if_plaintext(security: SecuritySettings, who: str) -> None:
    """The loud start-up line of a process running with MESH_TLS=off."""
    if not security.tls:
        log.warning(
            "!!! %s: MESH_TLS=off: gRPC WITHOUT TLS, no identities, no caller policy. "
            "For debugging and benchmarks only; anyone who can reach the ports can call "
            "every method. !!!",
            who,
        )
