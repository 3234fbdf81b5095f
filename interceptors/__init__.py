"""Client and server interceptors, one module per concern, each covering all four arities.

Client (outermost first, as the mesh client runs them):
`deadline` -> `retry` -> `breaker` -> `tracing` -> `metrics` -> (pick instance).
Server (outermost first, as mesh.server runs them): `tracing` -> `metrics` ->
`logging` -> `errors` -> `deadline` -> `decoding`.

On a plain grpc.aio channel install client interceptors with
`interceptors.arity.for_channel(...)` (grpc.aio files a multi-arity
interceptor under its first arity only). Importing this package imports
nothing else: take what you need from the modules.
"""
