"""The traffic policy model: subset weights and fault injection for one service.

A policy belongs to one registry service name (`orders`) and says

* `weights`: integer percents per subset, summing to 100. A subset is the set of
  the service's instances whose `track` (registry metadata, `MESH_TRACK`,
  defaulting to the instance's version) equals the key. No weights (or no policy)
  means one pool: every healthy instance, as without any policy.
* `faults`: Istio-style fault injection, applied by the callee's server chain (and
  by the edge): abort `abort_percent` % of the matching calls with `abort_status`,
  and/or delay `delay_percent` % of them by `delay_ms`.
* `revision`: a counter the stores bump on every accepted `put` (1 for the first
  policy); `put(policy, expected_revision)` is a compare-and-set on it, so two
  writers (`meshctl traffic set` and `meshctl release`) never lose an update.

The header override (`x-mesh-track: green` → only green) is not part of the
policy: it works for any service and needs no configuration.

JSON form (what the stores hold and `meshctl traffic show` prints):

    {"service": "orders", "revision": 3, "weights": {"blue": 90, "green": 10},
     "faults": [{"method": "*", "subset": "green", "abort_percent": 20,
                 "abort_status": "UNAVAILABLE", "delay_percent": 0, "delay_ms": 0}]}

`from_json` checks the shape (types, ranges, status names); `validate` checks the
policy against the registry: weights summing to 100, no unknown subset, no subset
with a positive weight and no healthy instance. Limits: subsets are known only
through the instances that are registered now, so a subset whose instances are
all gone is "unknown"; a weight of 0 is accepted for any subset, registered or
not, healthy or not (what a rollback writes while green is failing or gone: it
sends no traffic anywhere).
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from interceptors.plumbing import PLUMBING_PREFIXES

__all__ = [
    "ANY",
    "DEFAULT_FAULT_STATUS",
    "FAULT_STATUSES",
    "INFRASTRUCTURE_METHODS",
    "MAX_DELAY_MS",
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

# The metadata key a call carries to go to one subset only.
TRACK_HEADER = "x-mesh-track"
# "every method" / "every subset" in a fault.
ANY = "*"
# What a "*" fault never touches: a registry's health check must not see injected
# failures (it would deregister the instance). Naming them explicitly still works.
INFRASTRUCTURE_METHODS = PLUMBING_PREFIXES
DEFAULT_FAULT_STATUS = "UNAVAILABLE"
# Statuses a fault may abort with (grpc.StatusCode names, OK excluded).
FAULT_STATUSES = frozenset(
    {
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)
# A delay longer than this is a typo, not a rehearsal (a minute).
MAX_DELAY_MS = 60_000
# Subset (track) names: what Consul meta values and file names can carry.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# "*", "/pkg.Service/*" or "/pkg.Service/Method".
_METHOD = re.compile(r"^(\*|/[A-Za-z_][\w.]*/(\*|[A-Za-z_]\w*))$")


class InvalidPolicy(ValueError):
    """A policy that cannot be applied; the message names the problem."""


class PolicyConflict(RuntimeError):
    """`put` expected another revision than the stored one (someone else wrote first)."""

    def __init__(self, service: str, expected: int | None, current: int) -> None:
        super().__init__(
            f"traffic policy of {service!r} is at revision {current}, not {expected}:"
            " someone else changed it; read it again and retry"
        )
        self.service = service
        self.expected = expected
        self.current = current


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPolicy(f"{what} must be a number, got {value!r}")
    return float(value)


def _percent(value: object, what: str) -> float:
    number = _number(value, what)
    if not 0 <= number <= 100:
        raise InvalidPolicy(f"{what} must be between 0 and 100, got {value!r}")
    return number


def _json_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def check_subset_name(name: object, what: str = "subset") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidPolicy(
            f"{what} {name!r} must be 1-64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class Fault:
    """Abort and/or delay a share of the calls to `method` on the instances of `subset`.

    `method` is "*" (every method but health checks and reflection), "/pkg.Service/*"
    or a full method name "/pkg.Service/Method";
    `subset` is "*" (every instance) or a track. A call first draws the abort (with
    `abort_percent` %) and, when not aborted, the delay (with `delay_percent` %):
    abort and delay are independent draws, as in Istio.
    """

    method: str = ANY
    subset: str = ANY
    abort_percent: float = 0.0
    abort_status: str = DEFAULT_FAULT_STATUS
    delay_percent: float = 0.0
    delay_ms: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not _METHOD.fullmatch(self.method):
            raise InvalidPolicy(
                f"fault method {self.method!r} must be '*', '/pkg.Service/*' or"
                " '/pkg.Service/Method'"
            )
        if self.subset != ANY:
            check_subset_name(self.subset, "fault subset")
        object.__setattr__(self, "abort_percent", _percent(self.abort_percent, "abort_percent"))
        object.__setattr__(self, "delay_percent", _percent(self.delay_percent, "delay_percent"))
        if self.abort_status not in FAULT_STATUSES:
            raise InvalidPolicy(
                f"abort_status {self.abort_status!r} is not a gRPC status name"
                f" (one of {', '.join(sorted(FAULT_STATUSES))})"
            )
        delay = self.delay_ms
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_MS:
            raise InvalidPolicy(f"delay_ms must be a whole number 0-{MAX_DELAY_MS}, got {delay!r}")
        if self.delay_percent > 0 and delay == 0:
            raise InvalidPolicy("a fault with delay_percent > 0 needs delay_ms > 0")
        if self.abort_percent == 0 and (self.delay_percent == 0 or delay == 0):
            raise InvalidPolicy("a fault must abort or delay something (all percents are 0)")

    def applies_to(self, method: str, track: str) -> bool:
        """Whether this fault covers `method` (full name) on an instance of `track`.
        "*" leaves out health checks and reflection (`INFRASTRUCTURE_METHODS`)."""
        if self.subset not in (ANY, track):
            return False
        if self.method == ANY:
            return not method.startswith(INFRASTRUCTURE_METHODS)
        if self.method == method:
            return True
        return self.method.endswith("/*") and method.startswith(self.method[:-1])

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "subset": self.subset,
            "abort_percent": _json_number(self.abort_percent),
            "abort_status": self.abort_status,
            "delay_percent": _json_number(self.delay_percent),
            "delay_ms": self.delay_ms,
        }

    @classmethod
    def from_json(cls, doc: object) -> Fault:
        if not isinstance(doc, dict):
            raise InvalidPolicy(f"a fault must be a JSON object, got {doc!r}")
        known = {"method", "subset", "abort_percent", "abort_status", "delay_percent", "delay_ms"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise InvalidPolicy(f"unknown fault field(s): {', '.join(map(str, unknown))}")
        return cls(**doc)

    @classmethod
    def parse(cls, text: str) -> Fault:
        """A fault from the CLI form `key=value,...`, e.g.
        `subset=green,abort_percent=20,abort_status=UNAVAILABLE` or
        `method=/shop.orders.v1.Orders/*,delay_percent=50,delay_ms=200`."""
        doc: dict[str, Any] = {}
        for part in text.split(","):
            key, sep, value = part.strip().partition("=")
            if not sep or not key:
                raise InvalidPolicy(f"fault {text!r}: expected key=value pairs, got {part!r}")
            key = key.strip()
            value = value.strip()
            if key in ("abort_percent", "delay_percent"):
                try:
                    doc[key] = float(value)
                except ValueError:
                    raise InvalidPolicy(f"fault {key} must be a number, got {value!r}") from None
            elif key == "delay_ms":
                try:
                    doc[key] = int(value)
                except ValueError:
                    raise InvalidPolicy(f"fault delay_ms must be whole, got {value!r}") from None
            else:
                doc[key] = value.upper() if key == "abort_status" else value
        return cls.from_json(doc)


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """One service's traffic policy (see the module docstring)."""

    service: str
    weights: Mapping[str, int] = field(default_factory=dict, hash=False)
    faults: tuple[Fault, ...] = ()
    revision: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.service, str) or not _NAME.fullmatch(self.service):
            raise InvalidPolicy(f"service {self.service!r} is not a valid service name")
        if not isinstance(self.weights, Mapping):
            raise InvalidPolicy("weights must map subsets to percents")
        weights: dict[str, int] = {}
        for name, weight in self.weights.items():
            check_subset_name(name)
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise InvalidPolicy(
                    f"weight of subset {name!r} must be a whole percent 0-100, got {weight!r}"
                )
            weights[name] = weight
        if weights and sum(weights.values()) != 100:
            shown = " ".join(f"{k}={v}" for k, v in weights.items())
            raise InvalidPolicy(f"weights must sum to 100, got {sum(weights.values())} ({shown})")
        object.__setattr__(self, "weights", types.MappingProxyType(weights))
        faults = tuple(self.faults)
        if not all(isinstance(f, Fault) for f in faults):
            raise InvalidPolicy("faults must be Fault objects")
        object.__setattr__(self, "faults", faults)
        rev = self.revision
        if isinstance(rev, bool) or not isinstance(rev, int) or rev < 0:
            raise InvalidPolicy(f"revision must be a whole number >= 0, got {rev!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrafficPolicy):
            return NotImplemented
        return (self.service, dict(self.weights), self.faults, self.revision) == (
            other.service,
            dict(other.weights),
            other.faults,
            other.revision,
        )

    def __hash__(self) -> int:
        return hash((self.service, tuple(sorted(self.weights.items())), self.faults, self.revision))

    @property
    def subsets(self) -> tuple[str, ...]:
        """The subsets the weights name, in their order."""
        return tuple(self.weights)

    @property
    def split(self) -> bool:
        """Whether the policy splits traffic (False: one pool, as without a policy)."""
        return bool(self.weights)

    def with_revision(self, revision: int) -> TrafficPolicy:
        return replace(self, revision=revision)

    def same_rules(self, other: TrafficPolicy | None) -> bool:
        """Equal weights and faults, whatever the revisions."""
        return other is not None and self.with_revision(0) == other.with_revision(0)

    def faults_for(self, track: str) -> tuple[Fault, ...]:
        """The faults an instance of `track` applies (subset "*" or its own)."""
        return tuple(f for f in self.faults if f.subset in (ANY, track))

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "revision": self.revision,
            "weights": dict(self.weights),
            "faults": [f.to_json() for f in self.faults],
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def from_json(cls, doc: object) -> TrafficPolicy:
        """The policy a JSON document holds; `InvalidPolicy` naming what is wrong."""
        if not isinstance(doc, dict):
            raise InvalidPolicy("a traffic policy must be a JSON object")
        unknown = sorted(set(doc) - {"service", "revision", "weights", "faults"})
        if unknown:
            raise InvalidPolicy(f"unknown policy field(s): {', '.join(map(str, unknown))}")
        if "service" not in doc:
            raise InvalidPolicy("a traffic policy needs its 'service'")
        weights = doc.get("weights", {})
        if not isinstance(weights, dict):
            raise InvalidPolicy("weights must be a JSON object of subset → percent")
        faults = doc.get("faults", [])
        if not isinstance(faults, list):
            raise InvalidPolicy("faults must be a JSON list")
        return cls(
            service=doc["service"],
            weights=weights,
            faults=tuple(Fault.from_json(f) for f in faults),
            revision=doc.get("revision", 0),
        )

    @classmethod
    def loads(cls, data: bytes | str) -> TrafficPolicy:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise InvalidPolicy(f"a traffic policy must be JSON: {exc}") from None
        return cls.from_json(doc)


def describe_fault(fault: Fault) -> str:
    """One fault in words, e.g. "green * abort 20% UNAVAILABLE"."""
    parts = [fault.subset, fault.method]
    if fault.abort_percent:
        parts.append(f"abort {_json_number(fault.abort_percent)}% {fault.abort_status}")
    if fault.delay_percent:
        parts.append(f"delay {_json_number(fault.delay_percent)}% {fault.delay_ms}ms")
    return " ".join(parts)


def describe_policy(policy: TrafficPolicy) -> str:
    """One line: "blue=90 green=10; faults: green * abort 20% UNAVAILABLE (revision 3)"."""
    weights = " ".join(f"{k}={v}" for k, v in policy.weights.items()) or "one pool"
    faults = "; ".join(describe_fault(f) for f in policy.faults)
    return f"{weights}{'; faults: ' + faults if faults else ''} (revision {policy.revision})"


def parse_weights(pairs: Iterable[str]) -> dict[str, int]:
    """`["blue=90", "green=10"]` → {"blue": 90, "green": 10} (the CLI form)."""
    weights: dict[str, int] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise InvalidPolicy(f"expected subset=percent, got {pair!r}")
        check_subset_name(name.strip())
        try:
            weight = int(value.strip())
        except ValueError:
            raise InvalidPolicy(f"weight of {name.strip()!r} must be a whole percent") from None
        if name.strip() in weights:
            raise InvalidPolicy(f"subset {name.strip()!r} is given twice")
        weights[name.strip()] = weight
    return weights


class _HasTrack(Protocol):
    @property
    def version(self) -> str: ...

    @property
    def meta(self) -> Mapping[str, str]: ...


def track_of(instance: _HasTrack) -> str:
    """An instance's subset: its `track` metadata, else its version."""
    return instance.meta.get("track") or instance.version


def subset_counts(instances: Iterable[_HasTrack]) -> dict[str, int]:
    """Instances per track, e.g. {"blue": 2, "green": 1}."""
    counts: dict[str, int] = {}
    for instance in instances:
        track = track_of(instance)
        counts[track] = counts.get(track, 0) + 1
    return counts


def validate(
    policy: TrafficPolicy,
    healthy_subsets: Collection[str],
    known_subsets: Collection[str] | None = None,
) -> TrafficPolicy:
    """Refuse a policy the registry cannot serve; return it unchanged when it can.

    `healthy_subsets`: the tracks with at least one healthy instance now (e.g.
    `subset_counts(await registry.healthy(service))`); `known_subsets`: every
    registered track, healthy or not (defaults to the healthy ones). The shape
    (sum of 100, ranges) was checked when the policy was built.
    """
    healthy = set(healthy_subsets)
    known = healthy | set(known_subsets or ())
    shown = ", ".join(sorted(known)) or "none"
    for name, weight in policy.weights.items():
        if weight == 0:
            continue  # no traffic: nothing to serve it
        if name not in known:
            raise InvalidPolicy(
                f"unknown subset {name!r} of {policy.service!r} (registered tracks: {shown})"
            )
        if name not in healthy:
            raise InvalidPolicy(
                f"subset {name!r} of {policy.service!r} has no healthy instance;"
                f" it cannot take {weight}% of the traffic"
            )
    for fault in policy.faults:
        if fault.subset != ANY and fault.subset not in known:
            raise InvalidPolicy(
                f"fault names unknown subset {fault.subset!r} of {policy.service!r}"
                f" (registered tracks: {shown})"
            )
    return policy


@runtime_checkable
class PolicyStore(Protocol):
    """Where traffic policies live (a file beside the embedded registry, or Consul KV)."""

    async def get(self, service: str) -> TrafficPolicy | None:
        """The stored policy, None when there is none (raises `InvalidPolicy` if the
        stored document is malformed, `RegistryUnavailable` when unreachable)."""

    async def put(self, policy: TrafficPolicy, expected_revision: int | None) -> TrafficPolicy:
        """Store `policy` if the stored revision is `expected_revision` (0: none stored;
        None: whatever is stored); return it with its new revision (old + 1).
        Raises `PolicyConflict` otherwise. Validation against the registry is the
        caller's (`validate`): a store only checks the shape."""

    async def delete(self, service: str, expected_revision: int | None) -> None:
        """Remove the policy (back to one pool); `PolicyConflict` as for `put`."""

    def watch(self, service: str) -> AsyncIterator[TrafficPolicy | None]:
        """Yield the policy (or None) at once, then again whenever it changes.

        A malformed stored document is logged and skipped (the last good policy
        stays); an outage yields nothing new. Ends when the store is closed."""

    async def close(self) -> None:
        """Stop watches."""
