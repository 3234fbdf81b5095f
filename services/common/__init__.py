"""Helpers shared by the shop's services (a library: services import it, never each other).

- `money`: supported ISO 4217 currencies, int64-safe amounts and arithmetic.
- `validation`: request-field checks that collect `FieldViolation`s (ids, text, money,
  quantities, page size and token).
- `pagination`: opaque, versioned page tokens (shop-agnostic).
- `db`: engine from settings, migrations that tolerate a racing instance, database
  errors turned into retryable statuses.
- `events`: runs a service's outbox relay in the background once NATS is reachable.
"""
