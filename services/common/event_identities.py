"""Who is who on the shop's event bus: the data `meshctl up` renders NATS permissions from.

One entry per service (the domain it publishes, the durable consumers it runs);
mesh.toml names `SHOP_EVENTS` (`event_identities`), so the mesh renders the
server's permissions without knowing the shop, and the services look up their
own entry here. `meshctl`, the read-only identity of `meshctl events tail` and
the demo, and `dashboard`, the dashboard's read-only JetStream monitor, are the mesh's
own (`mesh.events.nats_auth.MESH_TOOLS`). The durable
names are the services' own (services/*/events.py; a test checks they match): a
consumer is granted by name, so a service cannot pull from, ack or delete another
service's consumer. The README's permission matrix is rendered from this table
(a test keeps the README current).
"""

from __future__ import annotations

from mesh.events.nats_auth import MESH_TOOLS, Consumes, EventIdentity

SHOP_EVENTS: tuple[EventIdentity, ...] = (
    EventIdentity("users", publishes=("user",)),
    EventIdentity(
        "orders",
        publishes=("order",),
        consumes=(Consumes("user.deleted", "orders-user-deleted"),),
    ),
    EventIdentity(
        "inventory",
        publishes=("inventory",),
        consumes=(Consumes("order.completed", "inventory-order-completed"),),
    ),
    EventIdentity("payments", publishes=("payment",)),
    # Not a service: examples/event_subscriber.py, a consumer outside the services with a
    # durable of its own (as a reporting job's would be). `meshctl up` provisions it; a
    # Kubernetes deployment does not (`local_only`: user.created carries emails).
    EventIdentity(
        "event-subscriber-example",
        consumes=(Consumes("user.created", "event-subscriber-example"),),
        local_only=True,
    ),
)

IDENTITIES: tuple[EventIdentity, ...] = (*SHOP_EVENTS, *MESH_TOOLS)


def event_identity(name: str) -> EventIdentity | None:
    """The identity called `name`, or None (a process the table does not know)."""
    return next((i for i in IDENTITIES if i.name == name), None)
