"""Changing a traffic policy safely: validate against the registry, then compare-and-set.

`meshctl traffic set` goes through `change_policy` (the release controller writes its
weights with its own compare-and-set, mesh/release/controller.py, so the CLI's refusal
during a release never blocks it):

1. read the stored policy (its revision is what the write expects);
2. read the service's instances: the tracks with a healthy instance, and every
   registered track (healthy or not) so that "unknown subset" and "no healthy
   instance" are told apart;
3. `validate` (sum of 100, no unknown subset, no weighted subset without a
   healthy instance); an invalid policy raises `InvalidPolicy` and nothing is
   written, so the old policy stays in force;
4. `put(policy, expected_revision=<the one read>)`: a concurrent writer makes it
   raise `PolicyConflict` instead of being overwritten.

Limits: the registry check and the write are not atomic (an instance may die
between them); consumers then apply the subsets' fallback (mesh/balancer/subsets.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh.discovery.registry import Instance, Registry
from mesh.traffic.policy import (
    Fault,
    InvalidPolicy,
    PolicyStore,
    TrafficPolicy,
    subset_counts,
    track_of,
    validate,
)


@dataclass(frozen=True, slots=True)
class Subsets:
    """A service's tracks now: healthy instances per track, and every registered track."""

    healthy: Mapping[str, int]
    registered: frozenset[str]


async def registered_instances(registry: Registry, service: str) -> list[Instance] | None:
    """Every registered instance of `service`, healthy or not; None when the backend
    cannot list unhealthy ones (then only the healthy ones are known)."""
    from mesh.discovery.embedded import EmbeddedRegistry, parse_document

    if isinstance(registry, EmbeddedRegistry):
        directory = registry.directory / service
        ttl_s: float = getattr(registry, "_ttl_s", 3.0)
        out = []
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue
            path = directory / name
            try:
                if time.time() - path.stat().st_mtime > ttl_s:
                    continue  # an expired lease: the instance is gone
                instance, _status = parse_document(json.loads(path.read_bytes()))
            except (OSError, ValueError):
                continue
            out.append(instance)
        return out
    if type(registry).__name__ == "ConsulRegistry":
        from mesh.discovery.consul import instance_from_entry

        client: Any = registry._client()  # type: ignore[attr-defined]
        _, entries = await client.health.service(service)
        return [instance_from_entry(e) for e in entries or ()]
    return None


async def subsets_of(registry: Registry, service: str) -> Subsets:
    healthy = subset_counts(await registry.healthy(service))
    everyone = await registered_instances(registry, service)
    registered = {track_of(i) for i in everyone} if everyone is not None else set()
    return Subsets(healthy, frozenset(registered | set(healthy)))


async def change_policy(
    store: PolicyStore,
    registry: Registry,
    service: str,
    weights: Mapping[str, int] | None,
    faults: Iterable[Fault] | None = None,
    *,
    expected_revision: int | None = None,
) -> TrafficPolicy:
    """Validate and store `service`'s new policy; the stored policy is returned.

    `weights=None` keeps the current policy's weights and `faults=None` its faults,
    so changing one never drops the other (until 7 Dec 2026 `--no-faults` alone wiped
    the weights: one pool in a release's 0 % step); `{}` removes the weights on purpose.
    `expected_revision=None` expects the revision read in step 1 (any other writer in
    between → conflict). Raises `InvalidPolicy` (nothing written) or `PolicyConflict`.
    """
    broken = False
    try:
        current = await store.get(service)
    except InvalidPolicy:
        current, broken = None, True  # a hand-broken stored policy: replacing it is the fix
    if faults is None:
        faults = current.faults if current is not None else ()
    if weights is None:
        weights = current.weights if current is not None else {}
    policy = TrafficPolicy(service, dict(weights), tuple(faults))
    subsets = await subsets_of(registry, service)
    validate(policy, set(subsets.healthy), subsets.registered)
    expected = expected_revision
    if expected is None and not broken:
        expected = current.revision if current is not None else 0
    return await store.put(policy, expected)
