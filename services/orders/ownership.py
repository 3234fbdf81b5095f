"""Whose orders a caller may place, see and cancel (both API versions).

From the call's actor (services/common/access.py), never from request fields:

* placing: for yourself only; an empty `user_id` means yourself; another user's
  id → PERMISSION_DENIED (the caller named someone else explicitly). Admins may
  place for anyone.
* reading, listing, cancelling: your own orders only; someone else's order, or
  listing someone else's orders, answers NOT_FOUND exactly as a missing order
  does, so order ids and user ids cannot be probed. Admins see every order.
"""

from __future__ import annotations

from base.errors import NotFound, PermissionDenied
from services.common.access import Actor, acting
from services.orders.model import Order
from services.orders.orders import Orders


def requested_user(requested: str) -> tuple[Actor, str]:
    """(the actor, the user id the request is for: `requested`, or the actor's own when empty)."""
    actor = acting()
    return actor, requested or (actor.user_id or "")


def check_place(actor: Actor, user_id: str) -> None:
    if not actor.may_act_for(user_id):
        raise PermissionDenied("orders can be placed only for yourself", reason="NOT_YOUR_ACCOUNT")


def check_list(actor: Actor, user_id: str) -> None:
    if not actor.may_act_for(user_id):
        raise NotFound(f"no orders of user {user_id}", reason="USER_ORDERS_NOT_FOUND")


async def visible_order(orders: Orders, order_id: str) -> Order:
    """The order, if the caller may see it; NOT_FOUND (as for a missing one) otherwise."""
    actor = acting()
    order = await orders.get(order_id)
    if not actor.may_act_for(order.user_id):
        raise NotFound(f"order {order_id} not found", reason="ORDER_NOT_FOUND")
    return order
