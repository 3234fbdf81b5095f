"""The NATS identities `meshctl up` renders match what the services really consume and
publish: a consumer renamed in a service without its grant would be refused by the
server, so this fails first."""

from __future__ import annotations

from typing import Any, cast

from mesh.settings import Settings
from services.common.event_identities import SHOP_EVENTS, event_identity
from services.common.event_types import shop_streams
from services.common.events import bus_access
from services.inventory.events import InventoryEventHandlers
from services.orders.events import OrderEventHandlers

NO_STORE = cast(Any, None)  # the handlers are only listed, never run


def granted(service: str) -> set[tuple[str, str]]:
    ident = event_identity(service)
    assert ident is not None
    return {(c.subject, c.durable) for c in ident.consumes}


def test_consumers_match_the_services_subscriptions() -> None:
    orders = {(s.subject, s.durable) for s in OrderEventHandlers(NO_STORE).subscriptions()}
    inventory = {(s.subject, s.durable) for s in InventoryEventHandlers(NO_STORE).subscriptions()}
    assert granted("orders") == orders
    assert granted("inventory") == inventory
    assert granted("users") == granted("payments") == set()


def test_every_domain_has_exactly_one_publisher() -> None:
    owners = [d for ident in SHOP_EVENTS for d in ident.publishes]
    domains = [s.subjects[0].split(".")[0] for s in shop_streams() if s.name != "DLQ"]
    assert sorted(owners) == sorted(domains)


def test_a_service_declares_only_its_streams_with_the_size_limits() -> None:
    env = {"MESH_STREAM_MAX_BYTES": "1048576", "MESH_STREAM_MAX_MSGS": "1000"}
    access = bus_access(Settings.from_env("orders", env))
    assert [s.name for s in access.declares] == ["ORDER", "DLQ"]
    assert {s.name for s in access.streams} == {s.name for s in shop_streams()}
    for spec in access.declares:
        cfg = spec.config()
        assert (cfg.max_bytes, cfg.max_msgs) == (1048576, 1000)
    assert access.auth.inbox_prefix == "_INBOX.orders"


def test_defaults_bound_every_stream() -> None:
    access = bus_access(Settings.from_env("payments", {}))
    [payment] = access.declares
    assert payment.max_bytes == 256 * 1024 * 1024 and payment.max_msgs == 1_000_000


def test_a_malformed_stream_limit_names_the_variable() -> None:
    import pytest

    from mesh.settings import SettingsError

    with pytest.raises(SettingsError, match="MESH_STREAM_MAX_BYTES"):
        Settings.from_env("orders", {"MESH_STREAM_MAX_BYTES": "0"})
