"""The embedded registry: a directory of leased instance files, no server needed.

Used when no Consul is configured (`MESH_REGISTRY=embedded`, the default). Each
registered instance is one JSON file, `<dir>/<service>/<instance id>.json`,
written atomically (temp file + rename). The registering process keeps it alive:

* **Lease.** Every `heartbeat_s` (0.5 s) the owner touches the file; readers
  treat a file whose mtime is older than `ttl_s` (3 s) as dead, and delete it
  once it is older than `3 * ttl_s`. A process that dies (or is SIGKILLed)
  therefore drops out within `ttl_s` plus one poll. If a reader deleted the file
  of a live but slow owner, the owner's next heartbeat writes it again.
* **Health.** Every heartbeat the owner also runs a grpc.health.v1 Check
  against its own instance (`host:port`, service `meta["health_service"]` or
  ""), exactly what Consul's gRPC check does, and rewrites the file when the
  status flips. The server bootstrap therefore only sets NOT_SERVING on its
  health servicer while draining, as it does for Consul, and the instance
  leaves `healthy()` within `heartbeat_s` + `poll_s` (~0.7 s): there is no
  second, registry-specific status API to keep in step with the real one.
* **Watching.** Watchers poll: one `stat` of the service directory per poll
  (`poll_s`, 0.15 s) plus one `stat` per instance file for the lease. File
  contents are re-read only when the directory changed (every content change
  is a rename into it); a directory mtime within 100 ms of now is not trusted,
  because coarse file-system timestamps could hide a second change in the same
  tick. A watcher yields only when the healthy set changes.

Limits:

* One machine. The directory must be on a local file system shared by the
  processes (not NFS: mtimes come from the writer's clock, leases need one
  clock). Containers need a shared volume and the same clock.
* Wall-clock based: a clock step larger than `ttl_s` can expire live instances
  (until their next heartbeat) or keep dead ones visible for the step.
* Health is seen from the owner process over loopback, not from the clients'
  network position; a partition between hosts cannot happen on one machine.
* Latency is the poll interval (~0.15 s), not push; cost is O(instances)
  `stat` calls per watcher per poll, fine for tens of instances, not thousands.
* Anyone who can write the directory can register or remove instances: it is
  created 0700 under a per-user path by default (`settings.registry_dir`), and
  a directory that is not owned by this user or is group/world writable is
  refused (`UnsafeRegistryDir`, before the first registration or read) rather
  than trusted. Only the directory itself is checked, not its parents.
* `deregister()` removes only instances this registry object registered;
  `close()` stops the heartbeats, so its instances expire after `ttl_s`.
* "Unreachable" means the directory cannot be read or written (for example
  it was replaced by a file or its file system failed): `healthy()` raises
  `RegistryUnavailable`, watches keep their last snapshot and retry. After an
  outage longer than `ttl_s` the leases are stale until each owner's next
  heartbeat, so a watcher may see instances leave and return within `heartbeat_s`.
* The file I/O is small and synchronous, on the event loop (a stat or a read of
  a few hundred bytes on a local file system costs microseconds).
* `health_check=False` trusts the lease alone (for processes without a gRPC
  health service); the probe's Health/Check calls otherwise reach the server
  every heartbeat, like Consul's checks do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.backoff import Backoff
from mesh.discovery.health_probe import ClientIdentity, HealthProbe
from mesh.discovery.lifecycle import Availability, Closed, Closer
from mesh.discovery.registry import Instance, RegistryUnavailable

log = logging.getLogger(__name__)

PASSING = "passing"
CRITICAL = "critical"
_SUFFIX = ".json"
# Names become path components: no separators, no dot files (temp files are dot files).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
# A directory mtime this recent may hide a second change in the same timestamp tick.
_RACY_NS = 100_000_000


class UnsafeRegistryDir(RuntimeError):
    """The registry directory could be written by someone else: refused, not an outage."""


def ensure_private_dir(directory: Path) -> None:
    """Create `directory` 0700 if missing; refuse it unless this user owns it and neither
    group nor others may write it (they could register a rogue instance otherwise)."""
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # mkdir's mode goes through the umask
    advice = f"`chmod 700 {directory}`, or set MESH_REGISTRY_DIR to a directory of your own"
    for st, what in ((os.lstat(directory), "link"), (os.stat(directory), "directory")):
        if st.st_uid != os.geteuid():
            raise UnsafeRegistryDir(
                f"embedded registry {what} {directory} is owned by uid {st.st_uid}, not by"
                f" this user (uid {os.geteuid()}): refusing to trust it; set MESH_REGISTRY_DIR"
                " to a directory of your own"
            )
    st = os.stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeRegistryDir(f"embedded registry {directory} is not a directory")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeRegistryDir(
            f"embedded registry {directory} is group or world writable"
            f" (mode {stat.S_IMODE(st.st_mode):o}): anyone who can write it can register"
            f" instances; refusing to use it: {advice}"
        )


# Directories of the registry that are not services (mesh/traffic/file_store.py).
RESERVED_SERVICE_NAMES = frozenset({"traffic"})


def check_name(kind: str, value: str) -> None:
    """Service names and instance ids are file names here: refuse anything else."""
    if not _SAFE_NAME.fullmatch(value) or value.endswith(_SUFFIX):
        raise ValueError(
            f"{kind} {value!r} must be 1-200 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if kind == "service" and value in RESERVED_SERVICE_NAMES:
        raise ValueError(
            f"service name {value!r} is reserved by the embedded registry (its directory"
            " holds the traffic policies)"
        )


def instance_document(instance: Instance, status: str, output: str) -> dict[str, Any]:
    """The JSON document stored for one instance."""
    return {
        "id": instance.id,
        "service": instance.service,
        "host": instance.host,
        "port": instance.port,
        "version": instance.version,
        "tags": list(instance.tags),
        "meta": dict(instance.meta),
        "status": status,
        "output": output,
        "pid": os.getpid(),
    }


def parse_document(doc: object) -> tuple[Instance, str]:
    """(instance, status) from a stored document; ValueError when malformed."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    try:
        tags, meta, port = doc["tags"], doc["meta"], doc["port"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("tags must be a list of strings")
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise ValueError("meta must map strings to strings")
        if not isinstance(port, int) or isinstance(port, bool):
            raise ValueError("port must be an integer")
        fields = {k: doc[k] for k in ("id", "service", "host", "version", "status")}
        if not all(isinstance(v, str) for v in fields.values()):
            raise ValueError("id, service, host, version and status must be strings")
    except KeyError as exc:
        raise ValueError(f"missing {exc}") from None
    instance = Instance(
        id=fields["id"],
        service=fields["service"],
        host=fields["host"],
        port=port,
        version=fields["version"],
        tags=tuple(tags),
        meta=meta,
    )
    return instance, fields["status"]


def write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old or the new file, never a partial one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def snapshot_key(instances: list[Instance]) -> list[tuple[Instance, list[tuple[str, str]]]]:
    """Instance equality ignores meta; a watcher must still notice a meta change."""
    return [(i, sorted(i.meta.items())) for i in instances]


@dataclass
class _Entry:
    instance: Instance
    status: str
    path: str  # the file, as a string: stat'ed every poll (pathlib's join costs more)


class ServiceScanner:
    """One service's directory, read cheaply again and again (one per watch).

    Raises OSError when the directory cannot be read; a missing directory is
    simply a service with no instances.
    """

    def __init__(
        self, directory: Path, ttl_s: float, gc_after_s: float, clock: Callable[[], float]
    ) -> None:
        self._dir = directory
        self._ttl_s = ttl_s
        self._gc_after_s = gc_after_s
        self._clock = clock
        self._dir_mtime_ns: int | None = None
        self._trust_mtime = False
        self._entries: dict[str, _Entry] = {}
        self._bad: set[str] = set()

    def healthy(self) -> list[Instance]:
        try:
            st = os.stat(self._dir)
        except FileNotFoundError:
            self._entries.clear()
            self._dir_mtime_ns = None
            return []
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{self._dir} is not a directory")
        if not (self._trust_mtime and st.st_mtime_ns == self._dir_mtime_ns):
            self._reload()
            self._dir_mtime_ns = st.st_mtime_ns
            self._trust_mtime = time.time_ns() - st.st_mtime_ns > _RACY_NS
        now = self._clock()
        alive: list[Instance] = []
        for name, entry in list(self._entries.items()):
            try:
                fst = os.stat(entry.path)
            except FileNotFoundError:
                del self._entries[name]
                continue
            age = now - fst.st_mtime
            if age > self._gc_after_s:
                self._collect(Path(entry.path), fst)
            elif age <= self._ttl_s and entry.status == PASSING:
                alive.append(entry.instance)
        return sorted(alive, key=lambda i: i.id)

    def _reload(self) -> None:
        entries: dict[str, _Entry] = {}
        for name in os.listdir(self._dir):
            if name.startswith(".") or not name.endswith(_SUFFIX):
                continue
            try:
                instance, status = parse_document(json.loads((self._dir / name).read_bytes()))
            except FileNotFoundError:
                continue  # deregistered between listdir and open
            except ValueError as exc:  # JSONDecodeError is a ValueError
                if name not in self._bad:
                    self._bad.add(name)
                    log.warning("ignoring malformed registry file %s: %s", self._dir / name, exc)
                continue
            entries[name] = _Entry(instance, status, str(self._dir / name))
        self._entries = entries

    def _collect(self, path: Path, seen: os.stat_result) -> None:
        """Delete a long-dead file unless its owner touched it since we looked."""
        with contextlib.suppress(FileNotFoundError):
            again = os.stat(path)
            if (again.st_ino, again.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns):
                path.unlink()
                log.info("removed expired registration %s", path)


@dataclass
class _Lease:
    instance: Instance
    path: Path
    probe: HealthProbe | None
    status: str = CRITICAL
    output: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class EmbeddedRegistry:
    """Registry backed by a directory of leased instance files (one machine)."""

    def __init__(
        self,
        directory: Path | str,
        *,
        ttl_s: float = 3.0,
        heartbeat_s: float = 0.5,
        poll_s: float = 0.15,
        health_check: bool = True,
        check_timeout_s: float = 1.0,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        where: str = "",
        identity: ClientIdentity | None = None,
    ) -> None:
        if not 0 < heartbeat_s < ttl_s:
            raise ValueError("heartbeat_s must be positive and shorter than ttl_s")
        self.directory = Path(directory)
        # Where this registry is and why (errors say it when a service has no instance).
        self.where = where or f"embedded registry {self.directory}"
        self._ttl_s = ttl_s
        self._heartbeat_s = heartbeat_s
        self._poll_s = poll_s
        self._health_check = health_check
        self._check_timeout_s = check_timeout_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._clock = clock
        # The registering process's identity: the owner-side probe speaks mTLS with it.
        self.identity = identity
        self._leases: dict[str, _Lease] = {}
        self._verified = False
        self._closer = Closer()
        self._reads = Availability(f"embedded registry {self.directory}", log)
        self._writes = Availability(
            f"embedded registry {self.directory} (heartbeats)",
            log,
            "this process's instances expire unless it recovers; retrying",
        )

    def _scanner(self, service: str) -> ServiceScanner:
        return ServiceScanner(self.directory / service, self._ttl_s, 3 * self._ttl_s, self._clock)

    async def register(self, instance: Instance) -> None:
        check_name("service", instance.service)
        check_name("instance id", instance.id)
        if self._closer.closed:
            raise RuntimeError("registry is closed")
        await self._drop_lease(instance.id)
        probe = None
        if self._health_check:
            probe = HealthProbe(
                instance.address,
                instance.meta.get("health_service", ""),
                self._check_timeout_s,
                identity=self.identity,
                callee=instance.service,
            )
        self._verify_directory()
        path = self.directory / instance.service / f"{instance.id}{_SUFFIX}"
        lease = _Lease(instance, path, probe)
        # First check inline: the instance appears at once with its real status.
        await self._check(lease)
        try:
            self._write(lease)
        except OSError as exc:
            if probe is not None:
                await probe.close()
            raise RegistryUnavailable(f"cannot register {instance.id}: {exc}") from exc
        lease.task = asyncio.create_task(self._keep(lease), name=f"registry-lease-{instance.id}")
        self._leases[instance.id] = lease

    async def deregister(self, instance_id: str) -> None:
        lease = await self._drop_lease(instance_id)
        if lease is not None:
            with contextlib.suppress(FileNotFoundError):
                lease.path.unlink()

    async def healthy(self, service: str) -> list[Instance]:
        check_name("service", service)
        # Reading creates nothing (`meshctl status` made `.run/registry` until 7 Dec
        # 2026): no directory yet, no instance; one that appears is checked when read.
        if not self._verified and not self.directory.is_dir():
            return []
        self._verify_directory()
        try:
            instances = self._scanner(service).healthy()
        except OSError as exc:
            self._reads.failed(exc)
            raise RegistryUnavailable(f"embedded registry {self.directory}: {exc}") from exc
        self._reads.ok()
        return instances

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        check_name("service", service)
        self._verify_directory()
        scanner = self._scanner(service)
        backoff = Backoff(self._retry_initial_s, self._retry_max_s)
        last: list[tuple[Instance, list[tuple[str, str]]]] | None = None
        while not self._closer.closed:
            try:
                current = scanner.healthy()
            except OSError as exc:
                self._reads.failed(exc)
                delay = backoff.next()
            else:
                self._reads.ok()
                backoff.reset()
                delay = self._poll_s
                key = snapshot_key(current)
                if key != last:
                    last = key
                    yield current
            try:
                await self._closer.sleep(delay)
            except Closed:
                return

    def _verify_directory(self) -> None:
        """`ensure_private_dir` once per registry object (then the directory is trusted)."""
        if not self._verified:
            try:
                ensure_private_dir(self.directory)
            except OSError as exc:
                raise RegistryUnavailable(f"embedded registry {self.directory}: {exc}") from exc
            self._verified = True

    async def close(self) -> None:
        self._closer.close()
        for instance_id in list(self._leases):
            await self._drop_lease(instance_id)

    # -- the owner's side: heartbeat + health ---------------------------------

    async def _drop_lease(self, instance_id: str) -> _Lease | None:
        lease = self._leases.pop(instance_id, None)
        if lease is None:
            return None
        if lease.task is not None:
            lease.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease.task
        if lease.probe is not None:
            await lease.probe.close()
        return lease

    async def _check(self, lease: _Lease) -> bool:
        """Run the health check; True when the stored status must change."""
        if lease.probe is None:
            serving, output = True, "no health check configured"
        else:
            try:
                serving, output = await lease.probe.check()
            except Exception as exc:  # a probe bug must not stop the heartbeat
                serving, output = False, f"health check error: {exc!r}"
        status = PASSING if serving else CRITICAL
        changed = status != lease.status
        if changed and lease.probe is not None:
            log.info("%s is now %s (%s)", lease.instance.id, status, output)
        lease.status, lease.output = status, output
        return changed

    def _write(self, lease: _Lease) -> None:
        # mkdir(parents=True) gives only the last directory `mode`: make the root private.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lease.path.parent.mkdir(mode=0o700, exist_ok=True)
        doc = instance_document(lease.instance, lease.status, lease.output)
        write_atomically(lease.path, json.dumps(doc, sort_keys=True).encode())

    def _touch(self, lease: _Lease) -> None:
        try:
            os.utime(lease.path)
        except FileNotFoundError:
            # A reader collected it while we were slow, or the directory was wiped.
            self._write(lease)

    async def _keep(self, lease: _Lease) -> None:
        rewrite = False
        while True:
            try:
                await self._closer.sleep(self._heartbeat_s)
            except Closed:
                return
            try:
                self._touch(lease)
                if await self._check(lease) or rewrite:
                    self._write(lease)
                rewrite = False
                self._writes.ok()
            except OSError as exc:
                rewrite = True
                self._writes.failed(exc)


def default_registry_dir(env: Mapping[str, str] | None = None) -> Path:
    """The directory a process given no MESH_REGISTRY_DIR uses: the running mesh's
    (recorded by `meshctl up`), else the per-user default (mesh.discovery.locate)."""
    from mesh.discovery.locate import locate

    return locate(env).directory
