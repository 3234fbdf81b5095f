"""NATS identities: the grants each service gets, the rendered server config, the local
server's files, the client options and URL redaction (the server itself is exercised in
tests/integration/events/test_nats_auth.py)."""

from __future__ import annotations

import os
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest

from mesh.events.nats_auth import (
    EventIdentity,
    GrantError,
    matrix_markdown,
    owned_streams,
    permissions,
    stream_for,
    subject_matches,
)
from mesh.events.nats_connect import NatsClientAuth, NatsConfigError, redact_url, redact_urls
from mesh.local.nats import local_client_env, prepare_local_nats
from services.common.event_identities import IDENTITIES, event_identity
from services.common.event_types import shop_streams

REPO = Path(__file__).resolve().parents[3]
STREAMS = shop_streams()


_SHOP: dict[str, Any] = {"identities": IDENTITIES, "streams": shop_streams()}


def may_publish(identity: str, subject: str) -> bool:
    ident = event_identity(identity)
    assert ident is not None
    return any(subject_matches(g.subject, subject) for g in permissions(ident, STREAMS).publish)


def test_the_readme_permission_matrix_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    begin, end = "<!-- nats-permissions:begin -->\n", "<!-- nats-permissions:end -->"
    assert begin in readme and end in readme, "README lost the permission matrix markers"
    shown = readme.split(begin, 1)[1].split(end, 1)[0]
    assert shown == matrix_markdown(IDENTITIES, STREAMS), (
        "README's NATS permission matrix is stale: paste matrix_markdown(IDENTITIES, "
        "shop_streams()) between the markers"
    )


@pytest.mark.parametrize(
    ("identity", "subject", "allowed"),
    [
        ("payments", "payment.completed", True),
        ("orders", "payment.completed", False),
        ("inventory", "user.deleted", False),
        ("users", "user.deleted", True),
        ("orders", "order.compensation.completed", True),
        ("orders", "dlq.user.deleted", True),
        ("orders", "dlq.payment.completed", False),  # no longer consumed by orders
        ("orders", "dlq.order.completed", False),  # inventory's dead letters, not orders'
        ("inventory", "dlq.order.completed", True),
        ("payments", "dlq.payment.completed", False),  # consumes nothing
        ("orders", "$JS.API.STREAM.DELETE.ORDER", False),
        ("orders", "$JS.API.STREAM.CREATE.PAYMENT", False),
        ("orders", "$JS.API.CONSUMER.MSG.NEXT.ORDER.inventory-order-completed", False),
        ("inventory", "$JS.API.CONSUMER.MSG.NEXT.ORDER.inventory-order-completed", True),
        ("orders", "$JS.API.CONSUMER.CREATE.USER.orders-user-deleted.user.>", False),
        ("orders", "$JS.API.CONSUMER.MSG.NEXT.PAYMENT.orders-payment-completed", False),
        ("meshctl", "payment.completed", False),
        # The dashboard asks for state, never for a message, and changes nothing.
        ("dashboard", "$JS.API.STREAM.LIST", True),
        ("dashboard", "$JS.API.STREAM.INFO.ORDER", True),
        ("dashboard", "$JS.API.CONSUMER.LIST.ORDER", True),
        ("dashboard", "$JS.API.CONSUMER.INFO.ORDER.inventory-order-completed", True),
        ("dashboard", "$JS.API.STREAM.MSG.GET.ORDER", False),
        ("dashboard", "$JS.API.DIRECT.GET.ORDER", False),
        ("dashboard", "$JS.API.CONSUMER.MSG.NEXT.ORDER.inventory-order-completed", False),
        ("dashboard", "$JS.API.CONSUMER.CREATE.ORDER.peek.order.>", False),
        ("dashboard", "$JS.API.CONSUMER.DELETE.ORDER.inventory-order-completed", False),
        ("dashboard", "$JS.API.STREAM.PURGE.ORDER", False),
        ("dashboard", "order.completed", False),
    ],
)
def test_each_identity_publishes_only_what_it_owns(
    identity: str, subject: str, allowed: bool
) -> None:
    assert may_publish(identity, subject) is allowed


def test_no_identity_gets_a_jetstream_api_wildcard() -> None:
    """...but the dashboard's monitor, on read-only requests (state, never a message)."""
    for ident in IDENTITIES:
        perms = permissions(ident, STREAMS)
        for g in perms.publish:
            assert g.why, g
            if not g.subject.startswith("$JS.API"):
                continue
            if ident.monitor:
                kind = g.subject.split(".")[2:4]
                assert kind[0] == "INFO" or kind[1] in ("LIST", "NAMES", "INFO"), g
            else:
                assert "*" not in g.subject and ">" not in g.subject, g
        services = [g.subject for g in perms.subscribe if not ident.observer]
        assert services in ([], [f"_INBOX.{ident.name}.>"])


def test_streams_declared_are_the_owners_own() -> None:
    def names(identity: str) -> list[str]:
        ident = event_identity(identity)
        assert ident is not None
        return [s.name for s in owned_streams(ident, STREAMS)]

    assert names("payments") == ["PAYMENT"]
    assert names("orders") == ["ORDER", "DLQ"]
    with pytest.raises(GrantError):
        stream_for("shipment.sent", STREAMS)
    with pytest.raises(GrantError):
        permissions(EventIdentity("x", publishes=("shipment",)), STREAMS)


def test_local_server_files_are_private_and_hold_no_seed(tmp_path: Path) -> None:
    local = prepare_local_nats(tmp_path / "nats", preferred_port=0, **_SHOP)
    assert stat.S_IMODE(os.stat(local.directory).st_mode) == 0o700
    text = local.config.read_text()
    for name, seed_file in local.seeds.items():
        assert stat.S_IMODE(os.stat(seed_file).st_mode) == 0o600, name
        seed = seed_file.read_text().strip()
        assert seed.startswith("SU") and seed not in text  # only public keys in the config
    assert stat.S_IMODE(os.stat(local.config).st_mode) == 0o600
    assert text.count('{ nkey: "U') == len(IDENTITIES)
    assert "no_auth_user" not in text
    env = local_client_env(tmp_path)
    assert env == {"NATS_URL": local.url, "NATS_NKEY_SEED_FILE": str(local.seeds["meshctl"])}
    again = prepare_local_nats(tmp_path / "nats", preferred_port=local.port, **_SHOP)
    assert again.seeds["orders"].read_text() != seed  # fresh seeds at every start


def test_a_port_held_by_someone_else_gives_a_free_one(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        local = prepare_local_nats(tmp_path / "nats", preferred_port=taken, **_SHOP)
    assert local.port not in (taken, 0)
    assert f"port: {local.port}" in local.config.read_text()


def test_no_local_server_means_no_client_env(tmp_path: Path) -> None:
    assert local_client_env(tmp_path) == {}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://alice:s3cret@nats.example:4222", "nats://***@nats.example:4222"),
        ("tls://t0ken@nats.example", "tls://***@nats.example"),
    ],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_server_list_is_redacted_url_by_url() -> None:
    shown = redact_urls("nats://a:pw1@h1:4222,nats://b:pw2@h2:4222")
    assert "pw1" not in shown and "pw2" not in shown and "h2:4222" in shown


def test_client_options(tmp_path: Path) -> None:
    seed = tmp_path / "orders.nk"
    with pytest.raises(NatsConfigError, match=r"NATS_NKEY_SEED_FILE=.*no such file"):
        NatsClientAuth(nkey_seed_file=str(seed)).connect_options()
    seed.write_text("SU...\n")
    opts = NatsClientAuth.for_identity("orders", nkey_seed_file=str(seed)).connect_options()
    assert opts == {"nkeys_seed": str(seed), "inbox_prefix": "_INBOX.orders"}
    assert NatsClientAuth().connect_options() == {}
    with pytest.raises(NatsConfigError, match="not both"):
        NatsClientAuth(nkey_seed_file=str(seed), creds_file=str(seed)).connect_options()
    with pytest.raises(NatsConfigError, match="go together"):
        NatsClientAuth(tls_cert_file="cert.pem").connect_options()


def test_a_private_ca_makes_a_tls_context(tmp_path: Path) -> None:
    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    if not ca.exists():
        pytest.skip("no CA bundle on this machine")
    opts = NatsClientAuth(tls_ca_file=str(ca)).connect_options()
    assert isinstance(opts["tls"], ssl.SSLContext)


def test_valid_patterns_are_what_nats_accepts_for_a_subscription() -> None:
    from mesh.events.nats_auth import valid_pattern

    for good in (">", "order.*", "order.>", "a.*.c", "dlq.order.completed", "user.created"):
        assert valid_pattern(good), good
    for bad in ("", "a..b", "a.>.b", "a*", "a>", ".a", "a.", "a b", "order.\t*"):
        assert not valid_pattern(bad), bad
