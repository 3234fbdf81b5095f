"""gRPC `shop.inventory.v1.InventoryService` and `ReservationService`: validate, store, map."""

from __future__ import annotations

from typing import Any

from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

from mesh.service_db import db_guard
from services.common import access
from services.common.pagination import encode_page_token
from services.common.timestamps import to_timestamp
from services.inventory import validation
from services.inventory.store import (
    CONFIRMED,
    HELD,
    RELEASED,
    RETURNED,
    InventoryStore,
    ProductRow,
    Reservation,
)

Context = Any  # grpc.aio.ServicerContext; unused: errors travel as exceptions

_STATUS = {
    HELD: inventory_pb2.RESERVATION_STATUS_HELD,
    CONFIRMED: inventory_pb2.RESERVATION_STATUS_CONFIRMED,
    RELEASED: inventory_pb2.RESERVATION_STATUS_RELEASED,
    RETURNED: inventory_pb2.RESERVATION_STATUS_RETURNED,
}


def product_to_proto(row: ProductRow) -> inventory_pb2.Product:
    return inventory_pb2.Product(
        product_id=row.product_id,
        sku=row.sku,
        name=row.name,
        price=row.price.to_proto(),
        available=row.available,
        reserved=row.reserved,
        create_time=to_timestamp(row.created_at),
    )


def reservation_to_proto(r: Reservation) -> inventory_pb2.Reservation:
    return inventory_pb2.Reservation(
        saga_id=r.saga_id,
        status=_STATUS[r.status],
        items=[
            inventory_pb2.ReservedItem(
                product_id=x.product_id, quantity=x.quantity, unit_price=x.unit_price.to_proto()
            )
            for x in r.items
        ],
    )


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, store: InventoryStore) -> None:
        self.store = store

    @db_guard
    async def CreateProduct(
        self, request: inventory_pb2.CreateProductRequest, context: Context
    ) -> inventory_pb2.Product:
        access.require_admin("creating a product")  # the contract says so; checked again here
        new = validation.create_product(request)
        return product_to_proto(await self.store.create_product(new))

    @db_guard
    async def GetProduct(
        self, request: inventory_pb2.GetProductRequest, context: Context
    ) -> inventory_pb2.Product:
        return product_to_proto(await self.store.get_product(validation.product_id(request)))

    @db_guard
    async def ListProducts(
        self, request: inventory_pb2.ListProductsRequest, context: Context
    ) -> inventory_pb2.ListProductsResponse:
        page = validation.list_products(request)
        # One extra row tells whether another page follows.
        rows = await self.store.list_products(page.after_sku, page.size + 1)
        more = len(rows) > page.size
        rows = rows[: page.size]
        token = (
            encode_page_token(validation.PRODUCTS_PAGE, {"sku": rows[-1].sku})
            if more and rows
            else ""
        )
        return inventory_pb2.ListProductsResponse(
            products=[product_to_proto(r) for r in rows], next_page_token=token
        )

    @db_guard
    async def AddStock(
        self, request: inventory_pb2.AddStockRequest, context: Context
    ) -> inventory_pb2.Product:
        # Admins, and orders' cancel saga returning sold units (a service's own authority).
        access.require_admin("adding stock")
        return product_to_proto(await self.store.add_stock(validation.add_stock(request)))

    @db_guard
    async def CheckAvailability(
        self, request: inventory_pb2.CheckAvailabilityRequest, context: Context
    ) -> inventory_pb2.CheckAvailabilityResponse:
        result = await self.store.availability(validation.check_availability(request))
        return inventory_pb2.CheckAvailabilityResponse(
            all_available=all(a.sufficient for a in result),
            items=[
                inventory_pb2.ItemAvailability(
                    product_id=a.product_id,
                    requested=a.requested,
                    available=a.available,
                    sufficient=a.sufficient,
                )
                for a in result
            ],
        )


class ReservationServicer(inventory_pb2_grpc.ReservationServiceServicer):
    def __init__(self, store: InventoryStore) -> None:
        self.store = store

    @db_guard
    async def ReserveItems(
        self, request: inventory_pb2.ReserveItemsRequest, context: Context
    ) -> inventory_pb2.Reservation:
        saga_id, lines = validation.reserve_items(request)
        return reservation_to_proto(await self.store.reserve(saga_id, lines))

    @db_guard
    async def ConfirmReservation(
        self, request: inventory_pb2.ConfirmReservationRequest, context: Context
    ) -> inventory_pb2.Reservation:
        return reservation_to_proto(await self.store.confirm(validation.saga_id(request)))

    @db_guard
    async def ReleaseReservation(
        self, request: inventory_pb2.ReleaseReservationRequest, context: Context
    ) -> inventory_pb2.Reservation:
        saga_id, reason = validation.release(request)
        return reservation_to_proto(await self.store.release(saga_id, reason))

    @db_guard
    async def ReturnReservation(
        self, request: inventory_pb2.ReturnReservationRequest, context: Context
    ) -> inventory_pb2.Reservation:
        saga_id, reason = validation.release(request)
        return reservation_to_proto(await self.store.return_sold(saga_id, reason))
