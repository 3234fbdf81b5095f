"""Certificate files renewed while a process runs (mesh/security/identity_files.py)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from mesh.security.identity_files import IdentityFileRenewer, ensure_identities, renewal_due
from mesh.security.pki import describe, issue
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings
from tests.support.poll import eventually

TD = "mesh.local"
NOW = dt.datetime.now(dt.UTC)


def _store(tmp_path: Path, lifetime_s: float = 3 * 3600) -> PkiStore:
    security = SecuritySettings(pki_dir=str(tmp_path / "pki"), cert_lifetime_s=lifetime_s)
    return ensure_identities(security, ["edge"])


def _backdated(store: PkiStore, name: str, age: dt.timedelta) -> bytes:
    """A certificate of the store's lifetime for `name`, issued `age` ago, as its file."""
    pair = issue(store.load_ca(), name, TD, store.lifetime, now=NOW - age)
    store.save(name, pair)
    return pair.cert_pem


def test_due_a_third_of_the_configured_lifetime_before_expiry_not_of_the_backdated_span(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    info = describe(store.load("edge").cert_pem)
    assert info.not_after - info.not_before > store.lifetime  # back-dated for clock skew
    assert renewal_due(info, store.lifetime) == info.not_after - dt.timedelta(hours=1)
    # A configured lifetime longer than the certificate's span: the span counts.
    span = info.not_after - info.not_before
    assert renewal_due(info, dt.timedelta(days=9)) == info.not_after - span / 3


def test_a_file_not_yet_due_is_kept_and_its_due_time_returned(tmp_path: Path) -> None:
    store = _store(tmp_path)
    before = store.cert_path("edge").read_bytes()
    nearest = IdentityFileRenewer(store, ["edge"]).renew_due()
    assert store.cert_path("edge").read_bytes() == before
    assert nearest == renewal_due(describe(before), store.lifetime)


def test_a_due_file_is_reissued_with_the_edge_s_local_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path)
    old = _backdated(store, "edge", dt.timedelta(hours=2, minutes=1))  # 59 min left
    caplog.set_level(logging.INFO, "mesh.security.identity_files")
    told: list[str] = []
    nearest = IdentityFileRenewer(store, ["edge"], say=told.append).renew_due()
    new = describe(store.load("edge").cert_pem)  # the key matches the new certificate
    assert store.cert_path("edge").read_bytes() != old
    assert new.not_after > describe(old).not_after
    assert "localhost" in new.dns_names and "127.0.0.1" in new.ip_addresses
    assert nearest == renewal_due(new, store.lifetime)
    until = new.not_after.isoformat(timespec="seconds")
    assert "edge: certificate file renewed" in caplog.text
    assert told == [f"edge: certificate file renewed (valid until {until})"]


def test_a_failed_renewal_is_logged_kept_and_tried_again_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path)
    old = _backdated(store, "edge", dt.timedelta(hours=2, minutes=30))
    store.ca_key_path.rename(tmp_path / "ca.key.away")  # the CA key gone: cannot issue
    now = dt.datetime.now(dt.UTC)
    nearest = IdentityFileRenewer(store, ["edge"], check_s=30).renew_due(now)
    assert store.cert_path("edge").read_bytes() == old  # nothing half written
    assert nearest == now + dt.timedelta(seconds=30)
    assert "meshctl pki issue edge" in caplog.text


async def test_the_background_renewer_replaces_a_file_as_it_comes_due(tmp_path: Path) -> None:
    """A 3 s lifetime: due 1 s before expiry; the renewer wakes for it by itself."""
    store = _store(tmp_path, lifetime_s=3)
    first = store.cert_path("edge").read_bytes()
    renewer = IdentityFileRenewer(store, ["edge"])
    renewer.start()
    try:
        await eventually(
            lambda: store.cert_path("edge").read_bytes() != first, 6, "the renewal due at ~2 s"
        )
        renewed = describe(store.load("edge").cert_pem)
        assert renewed.not_after > describe(first).not_after
    finally:
        await renewer.close()
