"""Who a shop handler acts for (services/common/access.py), from the end-user context."""

from __future__ import annotations

import pytest

from base.errors import PermissionDenied, Unauthenticated
from interceptors.end_user import EndUser, acting_as, calling_service
from services.common import access

ALICE = EndUser("alice")
ADMIN = EndUser("root", frozenset({"admin"}))


def test_no_end_user_and_no_service_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated):
        access.acting()
    with pytest.raises(Unauthenticated):
        access.require_admin("x")


def test_an_end_user_acts_for_themself_an_admin_for_anyone() -> None:
    with acting_as(ALICE):
        assert access.require_self_or_admin("alice", "reading").user == ALICE
        with pytest.raises(PermissionDenied):
            access.require_self_or_admin("bob", "reading")
        with pytest.raises(PermissionDenied):
            access.require_admin("creating a product")
    with acting_as(ADMIN):
        assert access.require_self_or_admin("bob", "reading").is_admin
        access.require_admin("creating a product")


def test_a_service_acts_on_its_own_authority_whoever_it_carries() -> None:
    token = calling_service.set("orders")
    try:
        with acting_as(ALICE):  # a non-admin end user travelling with orders' call
            actor = access.require_admin("adding stock")
            assert actor.service == "orders" and actor.may_act_for("bob")
        assert access.require_self_or_admin("bob", "reading").user is None
    finally:
        calling_service.reset(token)
