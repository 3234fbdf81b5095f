"""Traffic management: subsets (instance tracks), per-service traffic policies (weights,
fault injection), their stores and watchers.

`policy` holds the model and its validation; `file_store` (beside the embedded
registry) and `consul_store` (Consul KV) the stores, `stores.policy_store_for(registry)`
the one that goes with a registry; `watcher` one shared watch per service and process;
`admin.change_policy` the validated compare-and-set write (`meshctl traffic set`, `cli`);
`server` the faults an instance applies. The client side is mesh/balancer/subsets.py.
The Envoy side (`mesh/edge`) and `meshctl release` read the same model.
"""

from mesh.traffic.policy import (
    ANY,
    TRACK_HEADER,
    Fault,
    InvalidPolicy,
    PolicyConflict,
    PolicyStore,
    TrafficPolicy,
    describe_policy,
    parse_weights,
    subset_counts,
    track_of,
    validate,
)

__all__ = [
    "ANY",
    "TRACK_HEADER",
    "Fault",
    "InvalidPolicy",
    "PolicyConflict",
    "PolicyStore",
    "TrafficPolicy",
    "describe_policy",
    "parse_weights",
    "subset_counts",
    "track_of",
    "validate",
]
