"""The edge gateway: Envoy config rendered from the contracts, endpoint sync, edge meta server."""
