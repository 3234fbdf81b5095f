"""Who a shop handler acts for, and the ownership and role rules built on it.

The mesh's end-user interceptor (interceptors/end_user.py, wired in
mesh/server.py) has already refused calls whose method needs an end user
(UNAUTHENTICATED) or a role (PERMISSION_DENIED) and has set, for the handler:

* `current_end_user`: the end user the edge verified (or a `mesh.connect`
  client named), believed only from the mesh's identities;
* `calling_service`: set instead when another service calls on its own
  authority (orders' sagas calling users and inventory): that service has
  enforced its end user's rights already, and the callers policy limits what it
  may call.

Handlers decide from these, never from request fields: `acting()` says who
acts; `may_act_for(owner)` (self, admin or a service) guards ownership. Reads of
someone else's order answer NOT_FOUND, so order ids cannot be probed; acting on
another account answers PERMISSION_DENIED before looking it up, so the answer
does not tell whether the account exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from base.errors import PermissionDenied, Unauthenticated
from interceptors.end_user import EndUser, calling_service, current_end_user

ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who a call acts for: an end user, or a service on its own authority."""

    user: EndUser | None
    service: str | None

    @property
    def is_admin(self) -> bool:
        """An admin end user, or a service (which acts on any account)."""
        return self.service is not None or (self.user is not None and ADMIN in self.user.roles)

    @property
    def user_id(self) -> str | None:
        return None if self.user is None else self.user.user_id

    def may_act_for(self, owner_id: str) -> bool:
        """True for the owner themself, an admin and a service."""
        return self.is_admin or (self.user is not None and self.user.user_id == owner_id)


def acting() -> Actor:
    """The actor of the call being handled; UNAUTHENTICATED when there is none."""
    service = calling_service.get()
    user = current_end_user.get()
    if service is None and user is None:
        raise Unauthenticated("this call needs an authenticated end user", reason="NO_END_USER")
    return Actor(user, service)


def require_admin(what: str) -> Actor:
    """The actor, who must be an admin (or a service); PERMISSION_DENIED otherwise."""
    actor = acting()
    if not actor.is_admin:
        raise PermissionDenied(f"{what} needs the {ADMIN} role", reason="ADMIN_REQUIRED")
    return actor


def require_self_or_admin(user_id: str, what: str) -> Actor:
    """The actor, who must be `user_id` themself or an admin; PERMISSION_DENIED otherwise."""
    actor = acting()
    if not actor.may_act_for(user_id):
        raise PermissionDenied(
            f"{what} of another account needs the {ADMIN} role", reason="NOT_YOUR_ACCOUNT"
        )
    return actor
