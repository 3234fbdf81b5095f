"""Who is who on the shop's event bus: the data `meshctl up` renders NATS permissions from.

One entry per service (the domain it publishes, the durable consumers it runs)
plus `meshctl`, the read-only identity of `meshctl events tail` and `meshctl
demo`. The durable names are the services' own (services/*/events.py; a test
checks they match): a consumer is granted by name, so a service cannot pull
from, ack or delete another service's consumer. The README's permission matrix
is rendered from this table (`meshctl` prints it nowhere else; a test keeps the
README current).

It sits beside `SHOP` (mesh/local/topology.py) as the shop's topology data.
"""

from __future__ import annotations

from mesh.events.nats_auth import Consumes, EventIdentity

SHOP_EVENTS: tuple[EventIdentity, ...] = (
    EventIdentity("users", publishes=("user",)),
    EventIdentity(
        "orders",
        publishes=("order",),
        consumes=(
            Consumes("user.deleted", "orders-user-deleted"),
            Consumes("payment.completed", "orders-payment-completed"),
        ),
    ),
    EventIdentity(
        "inventory",
        publishes=("inventory",),
        consumes=(Consumes("order.completed", "inventory-order-completed"),),
    ),
    EventIdentity("payments", publishes=("payment",)),
)

MESHCTL = EventIdentity("meshctl", observer=True)

IDENTITIES: tuple[EventIdentity, ...] = (*SHOP_EVENTS, MESHCTL)


def event_identity(name: str) -> EventIdentity | None:
    """The identity called `name`, or None (a process the table does not know)."""
    return next((i for i in IDENTITIES if i.name == name), None)
