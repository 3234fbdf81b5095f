"""Certificates kept as files in the PKI directory: made before a process reads them,
and renewed while it runs.

`ensure_identities(security, names)` gives each name a valid certificate before
anything starts: (re)issued when missing, unreadable or due (`renewal_due`).

`IdentityFileRenewer(store, names)` keeps them valid afterwards. Why: a service
instance renews its own certificate in memory (`MeshIdentity`), but a program that
reads its certificate from files does not: `meshctl up`'s Envoy reads `edge.crt` /
`edge.key` through file-based SDS, and until 7 Dec 2026 nothing replaced them while
the mesh ran. With the default lifetime (`MESH_CERT_LIFETIME_S`, 24 h) a `make run`
left up for a day then served an expired certificate on 8443, and every new
connection from the edge to an instance (an instance restarted, a release's new
one) failed its handshake: the mesh's own client certificate had expired. The
renewer re-issues each file when a third of its lifetime is left, as the instances
do, and Envoy reloads it (SDS `watched_directory`) without a restart; established
connections carry on.

Time is read from the wall clock and checked at least every `CHECK_S` (60 s), here
and in `MeshIdentity`: `asyncio.sleep` counts monotonic time, which stops while a
laptop is suspended, so a single sleep until the renewal (16 h with the default
lifetime) could wake after the certificate expired.

Limits: renewing needs the CA key (`meshctl up`'s own CA has it); without it each
due renewal is an error in the log naming `meshctl pki issue <name>`, retried every
`CHECK_S`. The key and the certificate are two files replaced one after the other;
Envoy watches the store's `published/` directory instead, which `PkiStore.save` moves
a marker into once both are written, so it reloads once, with a matching pair.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence

from base.tasks import cancel_and_wait
from mesh.api.options import EDGE
from mesh.security.pki import CertInfo, KeyPair, PkiError, describe
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings

log = logging.getLogger(__name__)

# How often, at most, a renewer re-reads the wall clock (module doc).
CHECK_S = 60.0

# Renew when this fraction of the lifetime is left (cert-manager's default is 1/3 too).
RENEW_REMAINING = 1 / 3

# The edge's certificate also answers to the names a local browser, curl or grpcurl uses.
EDGE_LOCAL_DNS = ("localhost",)
EDGE_LOCAL_IPS = ("127.0.0.1",)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def renewal_due(info: CertInfo, lifetime: dt.timedelta) -> dt.datetime:
    """When a certificate is due for renewal: a third of its lifetime before it expires.
    The lifetime is the configured one (`MESH_CERT_LIFETIME_S`) when shorter than the
    certificate's span, which is back-dated a little for clock skew."""
    span = min(lifetime, info.not_after - info.not_before)
    return info.not_after - span * RENEW_REMAINING


def issue_identity(
    store: PkiStore, name: str, dns: Sequence[str] = (), ips: Sequence[str] = ()
) -> KeyPair:
    """A new certificate file for `name` (the edge's with its local names too)."""
    if name == EDGE:
        dns, ips = (*EDGE_LOCAL_DNS, *dns), (*EDGE_LOCAL_IPS, *ips)
    return store.issue(name, extra_dns=dns, extra_ips=ips)


def _due(store: PkiStore, name: str) -> dt.datetime | None:
    """When `name`'s file is due; None when it is missing or unreadable (due now)."""
    try:
        return renewal_due(describe(store.load(name).cert_pem), store.lifetime)
    except PkiError:
        return None


def ensure_identities(security: SecuritySettings, names: Sequence[str]) -> PkiStore:
    """The CA (created if missing) and a valid certificate for each of `names`:
    (re)issued when missing, unreadable or due for renewal."""
    store = PkiStore(security)
    store.init_ca()
    now = _now()
    for name in names:
        due = _due(store, name)
        if due is None or due <= now:
            issue_identity(store, name)
    return store


class IdentityFileRenewer:
    """Re-issues the certificate files of `names` in `store` when each is due (module doc)."""

    def __init__(
        self,
        store: PkiStore,
        names: Sequence[str],
        *,
        check_s: float = CHECK_S,
        say: Callable[[str], None] | None = None,
    ) -> None:
        """`say`: also tell each renewal there (`meshctl up` prints it with its output)."""
        self.store = store
        self.names = tuple(names)
        self.check_s = check_s
        self.say = say
        self._task: asyncio.Task[None] | None = None

    def renew_due(self, now: dt.datetime | None = None) -> dt.datetime | None:
        """Re-issue every file that is due at `now`; when the next one is due (None:
        no names). A failure is logged and tried again `check_s` later."""
        now = now or _now()
        nearest: dt.datetime | None = None
        for name in self.names:
            due = _due(self.store, name)
            if due is None or due <= now:
                try:
                    pair = issue_identity(self.store, name)
                except (PkiError, OSError) as exc:
                    log.error("%s: renewing its certificate file failed (retrying in %.0fs):"
                              " %s; `meshctl pki issue %s` renews it by hand",
                              name, self.check_s, exc, name)  # fmt: skip
                    due = now + dt.timedelta(seconds=self.check_s)
                else:
                    info = describe(pair.cert_pem)  # as written: no second read
                    due = renewal_due(info, self.store.lifetime)
                    until = info.not_after.isoformat(timespec="seconds")
                    told = f"{name}: certificate file renewed (valid until {until})"
                    log.info("%s", told)
                    if self.say is not None:
                        self.say(told)
            if due is not None and (nearest is None or due < nearest):
                nearest = due
        return nearest

    def start(self) -> None:
        """Renew in the background (idempotent; needs a running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="identity-file-renewer"
            )

    async def _run(self) -> None:
        while True:
            nearest = await asyncio.to_thread(self.renew_due)
            wait = self.check_s
            if nearest is not None:
                wait = min(wait, max((nearest - _now()).total_seconds(), 0.05))
            await asyncio.sleep(wait)  # until the next renewal, re-reading the wall clock

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
