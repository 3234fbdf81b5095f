"""What tests share: helpers that start real processes and servers, stand-ins, calls.

The rule (enforced by tests/contract/test_test_imports.py): a test imports from
`tests.` only what is here. Fixtures stay in the `conftest.py` of the folder
that uses them and build on these modules; nothing imports a conftest or
another test module.

Processes and servers: `nats` (nats-server), `envoy`, `consul_agent` (a
Consul-shaped HTTP server), `health_server`, `ping` / `ping_service` (the ping
service in-process or as a process), `shop` (the whole shop as processes),
`shop_backends` (that shop on SQLite or PostgreSQL), `e2e_stack` (`meshctl up`),
`postgres` (the machine's PostgreSQL, skip when absent), `ports`.
Waiting: `poll` (`eventually`: poll with a deadline, never sleep-and-hope).
Per area: `ping_calls` (the four arities through plain channels), `mesh_client`,
`discovery`, `bootstrap` + `stand_ins` (mesh.server), `events_db`, `saga` +
`saga_scenario` + `saga_crash_worker`, `services` (one service in-process),
`shop_calls`, `shop_events`, `orders_domain`, `end_user` (direct calls as an end user),
`edge` (REST and grpcurl clients),
`raw_http` (one HTTP/1.1 request exactly as written, from a chosen source address),
`edge_tokens` (sign up / log in / create-admin through the edge: access tokens),
`proto_tree` (an editable copy of protos/).
"""
