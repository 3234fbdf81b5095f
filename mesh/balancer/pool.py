"""The instances of one service a client may call, kept in step with the registry.

Python grpcio has no pluggable name resolver, so discovery lives here: the
pool watches the registry, keeps one `Endpoint` (one channel, one HTTP/2
connection) per healthy instance, follows each channel's connectivity, ejects
outliers, and hands the picker a fresh tuple of candidates whenever any of
that changes. Picking itself only reads that tuple.

Candidates are the connected (READY), non-ejected instances; while none is
connected (start-up, reconnects) the ones connecting are used, as gRPC's own
round_robin does; when all of them are ejected, the ejected ones are used
anyway (Envoy's panic mode) rather than failing every call. Removed instances
are drained: no new calls, and the channel closes once their calls in flight
have finished (or after `drain_timeout_s`).
When the registry is unreachable the pool keeps its last known instances.

Subsets (mesh/traffic): each instance belongs to its `track`. With a traffic
policy that has weights (`set_policy`), `pick` chooses a subset by weight and
then an instance inside it (mesh/balancer/subsets.py, which documents the
fallback when a subset has no usable instance); without one, `pick` is the plain
picker over all candidates, exactly as before. `pick_track` serves the header
override (`x-mesh-track`): only that track's instances (ejected ones too when
all of them are ejected, since the caller asked for that subset explicitly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from base.backoff import Backoff
from interceptors._call import local_error
from mesh.balancer.endpoint import Endpoint
from mesh.balancer.outlier import OutlierConfig
from mesh.balancer.picker import Picker, make_picker
from mesh.balancer.subsets import SubsetPicker
from mesh.discovery.registry import Instance, Registry
from mesh.settings import RESILIENCE_DEFAULTS
from mesh.traffic.policy import TrafficPolicy, track_of

log = logging.getLogger(__name__)

# Calls in flight on a removed instance get this long before its channel closes.
DEFAULT_DRAIN_TIMEOUT_S = 30.0
# Pauses between attempts to watch the registry again after it failed.
_WATCH_RETRY_INITIAL_S = 0.2
_WATCH_RETRY_MAX_S = 5.0

_READY = grpc.ChannelConnectivity.READY
_STANDBY = (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING)
_IDLE = grpc.ChannelConnectivity.IDLE
_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN
_USABLE = (_READY, *_STANDBY)

ChannelFactory = Callable[[Instance], grpc.aio.Channel]
EjectionHook = Callable[[Instance], None]


NO_INSTANCE = "no-instance"


def no_instance_error(service: str, detail: str = "") -> grpc.aio.AioRpcError:
    """The UNAVAILABLE a call gets when no instance could take it before its deadline.

    Marked as a local error (never sent), so the retry interceptor may retry it
    even for a method that is not idempotent.
    """
    text = f"no healthy instance of {service}" + (f" ({detail})" if detail else "")
    return local_error(grpc.StatusCode.UNAVAILABLE, text, NO_INSTANCE)


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One instance as `meshctl status` shows it."""

    id: str
    address: str
    state: str
    inflight: int
    ejected: bool
    ejections: int
    draining: bool


class EndpointPool:
    """Endpoints of `service` from `registry`; `pick()` is the per-call hot path."""

    def __init__(
        self,
        service: str,
        registry: Registry,
        channel_factory: ChannelFactory,
        *,
        lb_policy: str = RESILIENCE_DEFAULTS.lb_policy,
        outlier: OutlierConfig | None = None,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
        on_ejection: EjectionHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.service = service
        self._registry = registry
        self._channel_factory = channel_factory
        self._outlier = outlier or OutlierConfig()
        self._drain_timeout_s = drain_timeout_s
        self._on_ejection = on_ejection
        self._clock = clock
        self._lb_policy = lb_policy
        self._picker: Picker[Endpoint] = make_picker(lb_policy)
        # Bound once so the hot path is one attribute load and one call; with a
        # weighted traffic policy it is the subset picker's (set_policy).
        self.pick: Callable[[], Endpoint | None] = self._picker.pick
        self._policy: TrafficPolicy | None = None
        self._subsets: SubsetPicker[Endpoint] = SubsetPicker(self._picker, rng)
        # track → its picker (kept across refreshes: round-robin keeps its place).
        self._tracks: dict[str, Picker[Endpoint]] = {}
        self._known_tracks: frozenset[str] = frozenset()
        self._endpoints: dict[tuple[str, str], Endpoint] = {}
        self._draining: dict[Endpoint, asyncio.TimerHandle | None] = {}
        self._followers: dict[Endpoint, asyncio.Task[None]] = {}
        self._releases: dict[Endpoint, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Future[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._all_drained: asyncio.Future[None] | None = None
        self._snapshots = 0
        self._usable_tracks: frozenset[str] = frozenset()
        self._registry_down = False
        self._closed = False
        # Called once when the pool closes (e.g. unsubscribing from certificate renewals).
        self.close_hooks: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin watching the registry (idempotent; needs a running loop)."""
        if self._watch_task is None and not self._closed:
            self._watch_task = asyncio.get_running_loop().create_task(
                self._watch(), name=f"mesh-pool-watch-{self.service}"
            )

    async def close(self, grace_s: float | None = None) -> None:
        """Stop watching and close every channel.

        With `grace_s`, calls in flight first get up to that long to finish (no new
        call is picked meanwhile); whatever is still running then is cut, on instances
        removed earlier and still draining too (`_hurry_drains`).
        """
        if self._closed:
            return
        self._closed = True
        for hook in self.close_hooks:
            hook()
        if self._watch_task is not None:
            self._watch_task.cancel()
        if grace_s:
            self._hurry_drains(grace_s)
            for key in list(self._endpoints):
                self._drain(self._endpoints.pop(key), grace_s)
            self._clear_pickers()
            if self._draining:
                self._all_drained = asyncio.get_running_loop().create_future()
                await self._all_drained
        tasks: list[asyncio.Task[Any]] = list(self._followers.values())
        if self._watch_task is not None:
            tasks.append(self._watch_task)
        for task in tasks:
            task.cancel()
        for handle in [*self._releases.values(), *self._draining.values()]:
            if handle is not None:
                handle.cancel()
        channels = [ep.channel for ep in [*self._endpoints.values(), *self._draining]]
        self._endpoints.clear()
        self._draining.clear()
        self._releases.clear()
        self._followers.clear()
        self._clear_pickers()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(ch.close(None) for ch in channels), return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
        self._wake()

    # -- waiting ---------------------------------------------------------------------------

    async def wait_for_endpoint(self, wait_s: float | None, track: str | None = None) -> Endpoint:
        """An endpoint as soon as one is a candidate; UNAVAILABLE after `wait_s` seconds.

        With `track`, only an endpoint of that track (the header override), and
        UNAVAILABLE at once when the registry has been read and lists none."""
        loop = asyncio.get_running_loop()
        deadline = None if wait_s is None else loop.time() + wait_s
        while True:
            ep = self.pick() if track is None else self.pick_track(track)
            if ep is not None:
                return ep
            if self._closed:
                raise no_instance_error(self.service, "client closed")
            if track is not None and self._snapshots and not self.has_track(track):
                raise no_instance_error(self.service, self._why_none(track))
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise no_instance_error(self.service, self._why_none(track))
            if self._changed is None:
                self._changed = loop.create_future()
            try:
                # Shielded: the future is shared by every waiter.
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)
            except TimeoutError:
                raise no_instance_error(self.service, self._why_none(track)) from None

    async def wait_ready(self) -> None:
        """Wait until at least one instance is connected (bound it with asyncio.timeout)."""
        loop = asyncio.get_running_loop()
        while not any(ep.state is _READY for ep in self._endpoints.values()):
            if self._closed:
                raise RuntimeError(f"pool of {self.service} is closed")
            if self._changed is None:
                self._changed = loop.create_future()
            await asyncio.shield(self._changed)

    async def wait_changed(self) -> None:
        """Wait for the next change of candidates or connectivity."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)

    def _wake(self) -> None:
        fut, self._changed = self._changed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _why_none(self, track: str | None = None) -> str:
        if track is not None:
            shown = ", ".join(sorted(self._known_tracks)) or "none"
            return f"none in subset {track!r} (x-mesh-track); tracks here: {shown}"
        eps = list(self._endpoints.values())
        if not eps:
            if not self._snapshots:
                return "waiting for the registry"
            # Say where we looked: the usual cause is a registry other than the mesh's.
            where = getattr(self._registry, "where", "")
            return f"none registered in {where}" if where else "none registered"
        ejected = sum(1 for ep in eps if ep.outlier.ejected)
        return f"{len(eps)} known, none reachable, {ejected} ejected"

    # -- introspection ---------------------------------------------------------------------

    def status(self) -> list[EndpointStatus]:
        """Every endpoint, the draining ones included."""
        return [
            EndpointStatus(
                id=ep.instance.id,
                address=ep.address,
                state=ep.state.name,
                inflight=ep.inflight,
                ejected=ep.outlier.ejected,
                ejections=ep.outlier.ejections,
                draining=ep.draining,
            )
            for ep in [*self._endpoints.values(), *self._draining]
        ]

    def endpoints(self) -> list[Endpoint]:
        """The current (not draining) endpoints."""
        return list(self._endpoints.values())

    @property
    def registry_reachable(self) -> bool:
        return not self._registry_down

    @property
    def policy(self) -> TrafficPolicy | None:
        return self._policy

    @property
    def subset_shares(self) -> dict[str, float]:
        """The share of picks each usable subset gets now ({} without a weighted policy)."""
        if self._policy is None or not self._policy.split:
            return {}
        usable = [t for t, w in self._policy.weights.items() if w > 0 and self._usable(t)]
        return dict(zip(usable, self._subsets.shares, strict=True))

    # -- traffic policy --------------------------------------------------------------------

    def set_policy(self, policy: TrafficPolicy | None) -> None:
        """Follow `policy` (None or no weights: one pool); applies to the next pick."""
        if self._closed:
            return
        self._policy = policy
        split = policy is not None and policy.split
        self.pick = self._subsets.pick if split else self._picker.pick
        self._refresh()

    def has_track(self, track: str) -> bool:
        """Whether any current instance belongs to `track`."""
        return track in self._known_tracks

    def pick_track(self, track: str) -> Endpoint | None:
        """An endpoint of `track` only (the header override); None when it has none usable."""
        picker = self._tracks.get(track)
        return None if picker is None else picker.pick()

    def _clear_pickers(self) -> None:
        """No candidates anywhere (closing): no pick may return a draining endpoint."""
        self._picker.update(())
        self._subsets.update(())
        self._tracks = {}
        self._known_tracks = self._usable_tracks = frozenset()

    def _usable(self, track: str) -> bool:
        return track in self._usable_tracks

    # -- registry --------------------------------------------------------------------------

    async def _watch(self) -> None:
        backoff = Backoff(_WATCH_RETRY_INITIAL_S, _WATCH_RETRY_MAX_S)
        while not self._closed:
            try:
                async for snapshot in self._registry.watch(self.service):
                    self.apply(snapshot)
                    backoff.reset()
                    if self._registry_down:
                        self._registry_down = False
                        log.info("registry reachable again; watching %s", self.service)
                # The contract ends a watch only when the registry is closed: keep
                # serving from what we have rather than spinning on a dead registry.
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the backend's failure: keep the last instances
                if not self._registry_down:
                    self._registry_down = True
                    log.warning(
                        "registry unreachable while watching %s (%s: %s); "
                        "keeping the %d last known instances",
                        self.service,
                        type(exc).__name__,
                        exc,
                        len(self._endpoints),
                    )
            await asyncio.sleep(backoff.next())  # backoff, not synchronisation

    def apply(self, instances: Iterable[Instance]) -> None:
        """Make the endpoints match a registry snapshot (new ones used at once)."""
        if self._closed:
            return
        self._snapshots += 1
        wanted: dict[tuple[str, str], Instance] = {}
        for inst in instances:
            if inst.service == self.service or not inst.service:
                wanted[(inst.id, inst.address)] = inst
        for key in [k for k in self._endpoints if k not in wanted]:
            self._drain(self._endpoints.pop(key))
        for key, inst in wanted.items():
            ep = self._endpoints.get(key)
            if ep is None:
                self._add(inst, key)
            else:
                ep.instance = inst  # meta may have changed; the address has not
        self._refresh()

    def reconnect(self) -> None:
        """A new connection to every instance; the old ones drain.

        After this process's certificate was renewed: new connections present
        the new one (the channel factory asks for the current credentials),
        calls already running finish on the old connections, which then close.
        New endpoints start without outlier history.
        """
        if self._closed:
            return
        for key, old in list(self._endpoints.items()):
            del self._endpoints[key]
            self._drain(old)
            self._add(old.instance, key)
        self._refresh()
        log.info("%s: reconnecting to %d instance(s)", self.service, len(self._endpoints))

    def _add(self, inst: Instance, key: tuple[str, str]) -> None:
        ep = Endpoint(inst, self._channel_factory(inst), self._outlier, self)
        self._endpoints[key] = ep
        self._followers[ep] = asyncio.get_running_loop().create_task(
            self._follow(ep), name=f"mesh-conn-{inst.id}"
        )
        log.debug("%s: added %s at %s", self.service, inst.id, inst.address)

    def _drain(self, ep: Endpoint, drain_s: float | None = None) -> None:
        ep.draining = True
        release = self._releases.pop(ep, None)
        if release is not None:
            release.cancel()
        if ep.inflight == 0:
            self._close_endpoint(ep)
            return
        loop = asyncio.get_running_loop()
        limit = self._drain_timeout_s if drain_s is None else drain_s
        self._draining[ep] = loop.call_later(limit, self._close_endpoint, ep)
        log.debug("%s: draining %s (%d in flight)", self.service, ep.instance.id, ep.inflight)

    def _hurry_drains(self, grace_s: float) -> None:
        """Cut the drains already under way (instances removed earlier, each on its own
        `drain_timeout_s`, 30 s by default) at the close's grace at the latest: `close`
        waits for every drain, and its grace bounds them all. A drain due sooner keeps
        its own time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        for ep, handle in list(self._draining.items()):
            if handle is not None and handle.when() <= deadline:
                continue
            if handle is not None:
                handle.cancel()
            self._draining[ep] = loop.call_at(deadline, self._close_endpoint, ep)

    def _close_endpoint(self, ep: Endpoint) -> None:
        handle = self._draining.pop(ep, None)
        if handle is not None:
            handle.cancel()
        follower = self._followers.pop(ep, None)
        if follower is not None:
            follower.cancel()
        task = asyncio.get_running_loop().create_task(ep.channel.close(None))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        done = self._all_drained
        if not self._draining and done is not None and not done.done():
            done.set_result(None)

    # -- connectivity ----------------------------------------------------------------------

    async def _follow(self, ep: Endpoint) -> None:
        """Mirror the channel's connectivity into the endpoint, reconnecting when idle."""
        channel = ep.channel
        with contextlib.suppress(Exception):
            # Connect now: a new instance should take calls as soon as it is reachable.
            state = channel.get_state(try_to_connect=True)
            while state is not _SHUTDOWN:
                if state is _IDLE:
                    # Idle after a GOAWAY or idle timeout: with other instances READY it
                    # would never be picked again, so reconnect at once (as round_robin does).
                    state = channel.get_state(try_to_connect=True)
                if state is not ep.state:
                    ep.state = state
                    if not ep.draining:
                        self._refresh()
                await channel.wait_for_state_change(state)
                state = channel.get_state()

    def _refresh(self) -> None:
        """Recompute the picker's candidates; wake waiters when there are some.

        Best first: connected and not ejected; then connecting and not ejected;
        then, when every reachable instance is ejected, those anyway ("panic", as
        Envoy does): ejection steers calls away from bad instances, it must not
        turn a degraded service into an unavailable one.
        """
        eps = self._endpoints.values()
        self._picker.update(_preferred(eps))
        self._refresh_tracks(eps)
        self._wake()

    def _refresh_tracks(self, eps: Iterable[Endpoint]) -> None:
        """Per-track pickers (same preference, within the track) and the weights table."""
        by_track: dict[str, list[Endpoint]] = {}
        for ep in eps:
            by_track.setdefault(track_of(ep.instance), []).append(ep)
        self._known_tracks = frozenset(by_track)
        if len(by_track) <= 1 and (self._policy is None or not self._policy.split):
            # One track, no weights: the override needs only that track's picker,
            # which is the whole pool's; nothing else to keep.
            self._tracks = {t: self._picker for t in by_track}
            self._usable_tracks = frozenset(t for t, members in by_track.items() if _live(members))
            return
        usable = set()
        for track, members in by_track.items():
            picker = self._tracks.get(track)
            if picker is None or picker is self._picker:
                picker = make_picker(self._lb_policy)
            picker.update(_preferred(members))
            self._tracks[track] = picker
            if _live(members):
                usable.add(track)
        for track in [t for t in self._tracks if t not in by_track]:
            del self._tracks[track]
        self._usable_tracks = frozenset(usable)
        policy = self._policy
        if policy is not None and policy.split:
            self._subsets.update(
                [(w, self._tracks[t]) for t, w in policy.weights.items() if t in usable]
            )

    # -- outcomes (EndpointListener) -------------------------------------------------------

    def endpoint_succeeded(self, endpoint: Endpoint) -> None:
        endpoint.outlier.record_success(self._clock())

    def endpoint_failed(self, endpoint: Endpoint) -> None:
        if endpoint.draining or self._closed or not endpoint.outlier.record_failure():
            return
        eps = self._endpoints.values()
        ejected = sum(1 for ep in eps if ep.outlier.ejected)
        if not self._outlier.may_eject(ejected, len(eps)):
            return  # the streak stands; the next failure asks again
        duration = endpoint.outlier.eject(self._clock())
        self._releases[endpoint] = asyncio.get_running_loop().call_later(
            duration, self._release, endpoint
        )
        log.warning(
            "%s: ejected %s (%s) for %.1f s after consecutive UNAVAILABLE results",
            self.service,
            endpoint.instance.id,
            endpoint.address,
            duration,
        )
        if self._on_ejection is not None:
            self._on_ejection(endpoint.instance)
        self._refresh()

    def _release(self, endpoint: Endpoint) -> None:
        self._releases.pop(endpoint, None)
        endpoint.outlier.release(self._clock())
        log.info("%s: %s back on probation", self.service, endpoint.instance.id)
        self._refresh()

    def endpoint_drained(self, endpoint: Endpoint) -> None:
        if endpoint in self._draining:
            self._close_endpoint(endpoint)


def _live(eps: Iterable[Endpoint]) -> bool:
    """Whether any endpoint is usable without panic: not ejected, connected or connecting."""
    return any(not ep.outlier.ejected and ep.state in _USABLE for ep in eps)


def _preferred(eps: Iterable[Endpoint]) -> list[Endpoint]:
    """The candidates among `eps`: connected and not ejected; else connecting and not
    ejected; else (panic) connected, then connecting, ejected or not."""
    eps = list(eps)
    live = [ep for ep in eps if not ep.outlier.ejected]
    return (
        [ep for ep in live if ep.state is _READY]
        or [ep for ep in live if ep.state in _STANDBY]
        or [ep for ep in eps if ep.state is _READY]
        or [ep for ep in eps if ep.state in _STANDBY]
    )
