"""The mesh CA and certificates: names, lifetimes, files, `meshctl pki`."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from mesh.cli import main as meshctl
from mesh.security.identity_files import ensure_identities
from mesh.security.pki import (
    KeyPair,
    PkiError,
    check_pair,
    create_ca,
    describe,
    issue,
    service_of,
)
from mesh.security.store import PkiStore
from mesh.settings import SecuritySettings, SettingsError, security_from_env

TD = "mesh.local"


def test_a_leaf_names_its_service_by_uri_and_dns_and_chains_to_the_ca() -> None:
    ca = create_ca(TD, dt.timedelta(days=1))
    leaf = issue(ca, "payments", TD, dt.timedelta(hours=24))
    info = describe(leaf.cert_pem)
    assert info.identity == "spiffe://mesh.local/svc/payments"
    assert info.dns_names == ("payments.mesh.local",)
    assert not info.is_ca and describe(ca.cert_pem).is_ca
    assert dt.timedelta(hours=23) < info.remaining() <= dt.timedelta(hours=24, minutes=5)
    cert = leaf.certificate
    cert.verify_directly_issued_by(ca.certificate)  # raises when not signed by the CA
    other = create_ca(TD, dt.timedelta(days=1))
    with pytest.raises((ValueError, TypeError, Exception)):
        cert.verify_directly_issued_by(other.certificate)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert len(list(usage)) == 2  # client and server auth


def test_a_leaf_never_outlives_its_ca_and_bad_names_are_refused() -> None:
    ca = create_ca(TD, dt.timedelta(hours=1))
    leaf = issue(ca, "orders", TD, dt.timedelta(days=30))
    assert describe(leaf.cert_pem).not_after <= describe(ca.cert_pem).not_after
    for bad in ("", "a/b", "a.b", "a b", "A", "a_b", "-a", "a-", "x" * 64, "../evil"):
        with pytest.raises(PkiError):
            issue(ca, bad, TD, dt.timedelta(hours=1))
    for good in ("a", "mesh-client", "edge-meta", "x" * 63, "svc2"):
        assert describe(issue(ca, good, TD, dt.timedelta(hours=1)).cert_pem).dns_names


def test_identity_parsing_accepts_only_this_trust_domain() -> None:
    assert service_of("spiffe://mesh.local/svc/orders", TD) == "orders"
    assert service_of("spiffe://evil.local/svc/orders", TD) is None
    assert service_of("spiffe://mesh.local/svc/", TD) is None
    assert service_of("spiffe://mesh.local/svc/a/b", TD) is None
    assert service_of("https://mesh.local/svc/orders", TD) is None


def test_a_key_that_is_not_the_certificates_is_refused() -> None:
    ca = create_ca(TD, dt.timedelta(days=1))
    a = issue(ca, "a", TD, dt.timedelta(hours=1))
    b = issue(ca, "b", TD, dt.timedelta(hours=1))
    check_pair(a)
    with pytest.raises(PkiError, match="does not belong"):
        check_pair(KeyPair(a.cert_pem, b.key_pem))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_store_writes_a_0700_dir_and_0600_keys(tmp_path: Path) -> None:
    store = PkiStore(SecuritySettings(pki_dir=str(tmp_path / "pki")))
    assert store.init_ca() is True
    assert store.init_ca() is False  # kept, not replaced
    store.issue("users")
    assert _mode(store.dir) == 0o700
    assert _mode(store.ca_key_path) == 0o600
    assert _mode(store.key_path("users")) == 0o600
    assert store.names() == ["users"]
    assert not list(store.dir.glob(".*.tmp"))  # atomic writes leave no temporary file
    before = store.cert_path("users").read_bytes()
    assert store.rotate() == ["users"]
    after = store.load("users")
    assert after.cert_pem != before
    assert describe(after.cert_pem).identity == "spiffe://mesh.local/svc/users"


def test_a_group_writable_dir_is_tightened_and_no_ca_is_a_clear_error(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    d.mkdir(mode=0o777)
    d.chmod(0o777)
    store = PkiStore(SecuritySettings(pki_dir=str(d)))
    with pytest.raises(PkiError, match="meshctl pki init"):
        store.ca_bundle()
    store.ensure_dir()
    assert _mode(d) == 0o700


def test_your_own_ca_is_used_and_never_replaced(tmp_path: Path) -> None:
    ca = create_ca("corp.example", dt.timedelta(days=10))
    (tmp_path / "corp.crt").write_bytes(ca.cert_pem)
    (tmp_path / "corp.key").write_bytes(ca.key_pem)
    security = SecuritySettings(
        trust_domain="corp.example",
        pki_dir=str(tmp_path / "pki"),
        ca_cert_file=str(tmp_path / "corp.crt"),
        ca_key_file=str(tmp_path / "corp.key"),
    )
    store = PkiStore(security)
    assert store.init_ca() is False
    leaf = store.issue("orders")
    leaf.certificate.verify_directly_issued_by(ca.certificate)
    with pytest.raises(PkiError, match="your own CA"):
        store.init_ca(force=True)


def test_ensure_identities_reissues_only_what_is_missing_or_due(tmp_path: Path) -> None:
    security = SecuritySettings(pki_dir=str(tmp_path / "pki"))
    store = ensure_identities(security, ["edge", "orders"])
    edge = describe(store.cert_path("edge").read_bytes())
    assert "localhost" in edge.dns_names and "127.0.0.1" in edge.ip_addresses
    first = store.cert_path("orders").read_bytes()
    ensure_identities(security, ["edge", "orders"])
    assert store.cert_path("orders").read_bytes() == first  # still fresh: kept
    old = issue(store.load_ca(), "orders", "mesh.local", dt.timedelta(hours=3),
                now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2.5))  # fmt: skip
    store.save("orders", old)
    ensure_identities(security, ["orders"])
    assert store.cert_path("orders").read_bytes() != old.cert_pem  # past 2/3: renewed


def test_meshctl_pki_init_issue_rotate_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESH_PKI_DIR", str(tmp_path / "pki"))
    assert meshctl(["pki", "show"]) == 1  # no CA yet
    assert meshctl(["pki", "init", "users"]) == 0
    assert meshctl(["pki", "issue", "payments", "--dns", "pay.example"]) == 0
    assert meshctl(["pki", "rotate"]) == 0
    capsys.readouterr()
    assert meshctl(["pki", "show"]) == 0
    out = capsys.readouterr().out
    assert "spiffe://mesh.local/svc/payments" in out
    assert "payments.mesh.local, pay.example" in out  # the extra name survived the rotation
    assert "spiffe://mesh.local/svc/users" in out
    assert "expires" in out and "(in 23h" in out
    assert meshctl(["pki", "show", "nobody"]) == 1


def test_security_settings_from_the_environment() -> None:
    s = security_from_env({"MESH_TLS": "off", "MESH_TRUST_DOMAIN": "Shop.Example"})
    assert s.tls is False and s.trust_domain == "shop.example"
    assert security_from_env({}).tls is True
    with pytest.raises(SettingsError, match="MESH_TLS"):
        security_from_env({"MESH_TLS": "maybe"})
    with pytest.raises(SettingsError, match="MESH_TRUST_DOMAIN"):
        security_from_env({"MESH_TRUST_DOMAIN": "spiffe://x"})


def test_meshctl_up_makes_the_ca_and_every_certificate_before_starting(tmp_path: Path) -> None:
    from mesh.security.local import local_pki

    pki = local_pki(tmp_path, {}, ["users", "orders"])
    directory = Path(pki.env["MESH_PKI_DIR"])
    assert directory == (tmp_path / "pki").resolve() and directory.is_absolute()
    store = PkiStore(SecuritySettings(pki_dir=str(directory)))
    assert store.names() == ["edge", "orders", "users"]
    assert _mode(directory) == 0o700 and _mode(store.key_path("edge")) == 0o600
    assert pki.edge_options["tls"] is True
    for key in ("ca_cert_path", "cert_path", "key_path"):
        assert Path(pki.edge_options[key]).is_file(), key
    off = local_pki(tmp_path / "off", {"MESH_TLS": "off"}, ["users"])
    assert off.env == {} and off.edge_options == {"tls": False}
    assert not (tmp_path / "off").exists()


def test_a_saved_pair_is_published_after_both_files_and_an_old_directory_gets_the_folder(
    tmp_path: Path,
) -> None:
    """Envoy watches `published/`: one move there once key and certificate are written."""
    security = SecuritySettings(pki_dir=str(tmp_path / "pki"))
    store = PkiStore(security)
    store.init_ca()
    moves: list[str] = []
    real_replace = os.replace

    def recording(src: Any, dst: Any) -> None:
        moves.append(Path(dst).relative_to(store.dir).as_posix())
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", recording)
        pair = store.issue("edge")
    assert moves == ["edge.key", "edge.crt", "published/edge"]
    assert (store.dir / "published" / "edge").read_text() == f"{pair.certificate.serial_number:x}\n"
    # A PKI directory from before `published/` existed: made when the store is next used.
    (store.dir / "published" / "edge").unlink()
    (store.dir / "published").rmdir()
    ensure_identities(security, ["edge"])
    assert (store.dir / "published").is_dir()


def test_pki_show_says_how_long_a_certificate_has_left() -> None:
    from mesh.security.cli import _fmt_remaining

    assert _fmt_remaining(dt.timedelta(days=2, hours=3)) == "2d 3h"
    assert _fmt_remaining(dt.timedelta(hours=5, minutes=7)) == "5h 7m"
    assert _fmt_remaining(dt.timedelta(seconds=42)) == "42s"  # was "0h 0m"
    assert _fmt_remaining(dt.timedelta(seconds=-1)) == "EXPIRED"


def test_an_identity_named_like_the_ca_is_refused_and_the_ca_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pki issue ca` wrote a leaf over ca.crt/ca.key until 7 Dec 2026."""
    monkeypatch.setenv("MESH_PKI_DIR", str(tmp_path / "pki"))
    assert meshctl(["pki", "init", "users"]) == 0
    store = PkiStore(SecuritySettings(pki_dir=str(tmp_path / "pki")))
    ca_before = store.ca_cert_path.read_bytes(), store.ca_key_path.read_bytes()
    capsys.readouterr()
    assert meshctl(["pki", "issue", "ca"]) == 1
    assert "'ca' is reserved" in capsys.readouterr().err
    assert meshctl(["pki", "init", "edge", "ca"]) == 1  # refused before anything is issued
    assert not store.cert_path("edge").exists()
    assert (store.ca_cert_path.read_bytes(), store.ca_key_path.read_bytes()) == ca_before
    assert describe(ca_before[0]).is_ca
    assert meshctl(["pki", "issue", "cab"]) == 0  # the control: a name that is not the CA's


def test_your_own_ca_in_the_directory_is_not_overwritten_by_an_identity(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    store = PkiStore(SecuritySettings(pki_dir=str(pki), ca_cert_file=str(pki / "root.crt"),
                                      ca_key_file=str(pki / "root.key")))  # fmt: skip
    ca = create_ca(TD, dt.timedelta(days=1))
    store.ensure_dir()
    (pki / "root.crt").write_bytes(ca.cert_pem)
    (pki / "root.key").write_bytes(ca.key_pem)
    with pytest.raises(PkiError, match="overwrite the CA's files"):
        store.issue("root")
    assert (pki / "root.crt").read_bytes() == ca.cert_pem
    store.issue("orders").certificate.verify_directly_issued_by(ca.certificate)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("garbage", "is unreadable"),
        ("leaf", "is not a CA certificate"),
        ("other key", "the mesh CA key"),
    ],
)
def test_pki_init_refuses_to_keep_a_broken_ca_and_names_the_file(
    damage: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A corrupt ca.crt was "kept" (exit 0) until 7 Dec 2026; issuing from it failed later."""
    monkeypatch.setenv("MESH_PKI_DIR", str(tmp_path / "pki"))
    assert meshctl(["pki", "init", "users"]) == 0  # the control: a good CA is kept
    assert meshctl(["pki", "init"]) == 0
    store = PkiStore(SecuritySettings(pki_dir=str(tmp_path / "pki")))
    if damage == "garbage":
        store.ca_cert_path.write_bytes(b"garbage\n")
    elif damage == "leaf":
        store.ca_cert_path.write_bytes(store.cert_path("users").read_bytes())
    else:
        store.ca_key_path.write_bytes(store.key_path("users").read_bytes())
    capsys.readouterr()
    assert meshctl(["pki", "init"]) == 1
    captured = capsys.readouterr()
    assert "kept the mesh CA" not in captured.out
    assert message in captured.err and str(store.dir / "ca.") in captured.err
