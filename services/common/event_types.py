"""The shop's events: which payload message (`shop.events.v1`) each event type carries.

The mesh owns the envelope and knows no shop event; services pass `EVENTS` when
they build envelopes (`new_envelope(payload, types=EVENTS, ...)`) and `STREAMS`
to their event bus. `mesh.toml` names `services.common.event_types:EVENTS`, so
`meshctl events tail` decodes the shop's payloads without the mesh importing it.
"""

from __future__ import annotations

from shop.events.v1 import events_pb2

from mesh.events import EventTypes, StreamSpec, default_streams

EVENTS = EventTypes(
    {
        "user.created": events_pb2.UserCreated,
        "user.deleted": events_pb2.UserDeleted,
        "order.completed": events_pb2.OrderCompleted,
        "order.compensation.completed": events_pb2.OrderCompensationCompleted,
        "payment.completed": events_pb2.PaymentCompleted,
        "payment.refunded": events_pb2.PaymentRefunded,
        "inventory.reserved": events_pb2.InventoryReserved,
        "inventory.released": events_pb2.InventoryReleased,
        "inventory.returned": events_pb2.InventoryReturned,
        "inventory.low_stock": events_pb2.InventoryLowStock,
    }
)


def shop_streams(
    *,
    duplicate_window_s: float = 120.0,
    max_bytes: int = -1,
    max_msgs: int = -1,
    replicas: int = 1,
) -> list[StreamSpec]:
    """One stream per shop domain (USER, ORDER, PAYMENT, INVENTORY) plus the DLQ; the
    limits (-1: none) are the services' MESH_STREAM_MAX_BYTES / MESH_STREAM_MAX_MSGS,
    the copies their MESH_STREAM_REPLICAS."""
    return default_streams(
        EVENTS.domains,
        duplicate_window_s=duplicate_window_s,
        max_bytes=max_bytes,
        max_msgs=max_msgs,
        replicas=replicas,
    )
