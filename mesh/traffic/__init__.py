"""Traffic management: subsets (instance tracks), per-service traffic policies (weights,
fault injection), their stores and watchers.

`policy` holds the model and its validation; `file_store` the store beside the
embedded registry. The Envoy side (`mesh/edge`) and `meshctl release` read the same
model.
"""

from mesh.traffic.policy import (
    ANY,
    TRACK_HEADER,
    Fault,
    InvalidPolicy,
    PolicyConflict,
    PolicyStore,
    TrafficPolicy,
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
    "parse_weights",
    "subset_counts",
    "track_of",
    "validate",
]
