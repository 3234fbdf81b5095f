"""Outlier detection for one instance: consecutive failures, growing ejections, probation.

Modelled on Envoy's and gRPC's outlier detection (consecutive gateway failures):
an instance that fails `consecutive_failures` calls in a row with UNAVAILABLE
(the status of refused connections, resets and servers shutting down) is taken
out of rotation for `base_ejection_s * n`, where `n` counts its recent
ejections, capped at `max_ejection_s`. When the time is up it is let back on
probation: its next result decides, a failure re-ejects it at once (for longer),
a success clears the probation. A calm period of `base_ejection_s` without
ejection forgets one past ejection, so an instance that recovered is not
punished forever.

This module is a pure state machine with the clock passed in, so it is tested
with a fake clock; the pool (mesh/balancer/pool.py) applies its verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.settings import RESILIENCE_DEFAULTS as _DEFAULTS


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """How eagerly failing instances are ejected; see the module docstring.

    Defaults: the `MESH_OUTLIER_*` settings' (mesh/settings.py).
    """

    consecutive_failures: int = _DEFAULTS.outlier_consecutive_failures
    base_ejection_s: float = _DEFAULTS.outlier_base_ejection_s
    max_ejection_s: float = _DEFAULTS.outlier_max_ejection_s
    # Never eject more than this share of the instances (at least one may always
    # be ejected): when most of a fleet fails, the fault is rarely in the instances.
    max_ejected_fraction: float = _DEFAULTS.outlier_max_ejected_fraction

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be at least 1")
        if not self.base_ejection_s > 0:
            raise ValueError("base_ejection_s must be positive")
        if self.max_ejection_s < self.base_ejection_s:
            raise ValueError("max_ejection_s must be at least base_ejection_s")
        if not 0.0 <= self.max_ejected_fraction <= 1.0:
            raise ValueError("max_ejected_fraction must be from 0 to 1")

    def may_eject(self, ejected: int, total: int) -> bool:
        """Whether one more of `total` instances may be ejected when `ejected` already are."""
        return ejected == 0 or (ejected + 1) <= self.max_ejected_fraction * total


class OutlierTracker:
    """One instance's failure streak and ejection history."""

    __slots__ = ("_calm_since", "_config", "consecutive", "ejected_until", "ejections", "probing")

    def __init__(self, config: OutlierConfig) -> None:
        self._config = config
        self.consecutive = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.probing = False
        self._calm_since = 0.0

    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0.0

    @property
    def clean(self) -> bool:
        """Nothing to update on a success (the hot path checks this first)."""
        return self.consecutive == 0 and not self.probing and self.ejections == 0

    def record_failure(self) -> bool:
        """Count a failed call; True when the instance should now be ejected."""
        if self.ejected:
            return False  # a call that was in flight when it got ejected
        self.consecutive += 1
        return self.probing or self.consecutive >= self._config.consecutive_failures

    def record_success(self, now: float) -> None:
        """Count a successful call: the streak and the probation end."""
        self.consecutive = 0
        self.probing = False
        base = self._config.base_ejection_s
        while self.ejections and not self.ejected and now - self._calm_since >= base:
            self.ejections -= 1
            self._calm_since += base

    def eject(self, now: float) -> float:
        """Take the instance out; returns how long for."""
        self.ejections += 1
        duration = min(self._config.base_ejection_s * self.ejections, self._config.max_ejection_s)
        self.ejected_until = now + duration
        self.consecutive = 0
        self.probing = False
        return duration

    def release(self, now: float) -> None:
        """Let the instance back in, on probation."""
        self.ejected_until = 0.0
        self.probing = True
        self._calm_since = now
