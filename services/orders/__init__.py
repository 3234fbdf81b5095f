"""The orders service: orders v1 and v2 over one store, placed by the order saga.

- `model`: the domain types both API versions map to.
- `validation`: v1/v2 requests → `PlaceOrder` commands, every bad field reported.
- `store`: orders, lines, status history, idempotency keys (+ saga, outbox, inbox tables).
- `saga`: the order saga (user → order → stock → charge → confirm) and the cancel saga.
- `orders`: the domain layer the servicers call (place, get, list, cancel).
- `servicer_v1`, `servicer_v2`: thin mappers between the protos and the domain.
- `events`: the `user.deleted` handler.
- `app`: assembly; `__main__`: `python -m services.orders`.
"""
