"""The inventory service: products, stock, and stock reservations held by order sagas."""
