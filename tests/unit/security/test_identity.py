"""A running identity follows its certificate: self-issued renewal and file reloads."""

from __future__ import annotations

from pathlib import Path

from mesh.security.identity import MeshIdentity
from mesh.security.pki import describe
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings
from tests.support.poll import eventually


async def test_without_the_ca_key_an_instance_reloads_rotated_files(tmp_path: Path) -> None:
    store = PkiStore(SecuritySettings(pki_dir=str(tmp_path / "pki")))
    store.init_ca()
    first = store.issue("svc")
    identity = MeshIdentity("svc", store, self_issue=False, reload_interval_s=0.05)
    changes: list[int] = []
    identity.on_change(lambda: changes.append(identity.generation))
    identity.start()
    try:
        assert identity.pair == first
        rotated = store.rotate()
        assert rotated == ["svc"]
        await eventually(lambda: identity.generation == 2)
        assert identity.pair.cert_pem == store.cert_path("svc").read_bytes() != first.cert_pem
        assert changes == [2]
    finally:
        await identity.close()


async def test_with_the_ca_key_an_instance_issues_and_renews_its_own(tmp_path: Path) -> None:
    security = SecuritySettings(pki_dir=str(tmp_path / "pki"), cert_lifetime_s=3.0)
    store = PkiStore(security)
    store.init_ca()
    identity = MeshIdentity.load("svc", security)
    assert not store.cert_path("svc").exists()  # in memory only: its key never hits the disk
    info = describe(identity.pair.cert_pem)
    assert info.identity == "spiffe://mesh.local/svc/svc"
    assert 0.5 < identity.renew_delay_s() <= 2.0  # a third of the lifetime before expiry
    first = identity.pair
    identity.start()
    try:
        await eventually(lambda: identity.generation >= 2, 10.0)
        assert identity.pair != first
    finally:
        await identity.close()
