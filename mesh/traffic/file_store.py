"""Traffic policies as files beside the embedded registry: `<registry dir>/traffic/<service>.json`.

* **Write**: `put` takes an exclusive `flock` on `traffic/.<service>.lock`, reads
  the stored revision, compares it with the expected one, and replaces the file
  atomically (temp file + rename, 0600): readers see the old or the new policy,
  never half of one, and two writers on this machine are serialised.
* **Watch**: one `stat` of the file per poll (`poll_s`, 0.2 s); the file is read
  again only when its inode, size or mtime changed (every write is a rename, so
  the inode changes). A change is seen within one poll.
* **Trust**: the registry directory is checked like the registry does
  (`ensure_private_dir`: this user's, not group/world writable); the `traffic`
  directory is created 0700.

Limits: one machine (like the embedded registry); the lock is advisory, so a hand
edit of the file bypasses the compare-and-set (it is still validated on read: a
malformed file is logged and the last good policy stays in force).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from mesh.discovery.embedded import check_name, ensure_private_dir, write_atomically
from mesh.discovery.lifecycle import Closed, Closer
from mesh.discovery.registry import RegistryUnavailable
from mesh.traffic.policy import InvalidPolicy, PolicyConflict, TrafficPolicy

log = logging.getLogger(__name__)

SUBDIR = "traffic"


class FilePolicyStore:
    """PolicyStore on the embedded registry's directory (see the module docstring)."""

    def __init__(self, registry_dir: Path | str, *, poll_s: float = 0.2) -> None:
        self.registry_dir = Path(registry_dir)
        self.directory = self.registry_dir / SUBDIR
        self._poll_s = poll_s
        self._closer = Closer()
        self._verified = False

    def describe(self) -> str:
        return f"file {self.directory}/<service>.json"

    def path(self, service: str) -> Path:
        check_name("service", service)
        return self.directory / f"{service}.json"

    def _verify(self) -> None:
        if not self._verified:
            try:
                ensure_private_dir(self.registry_dir)
                self.directory.mkdir(mode=0o700, exist_ok=True)
                ensure_private_dir(self.directory)
            except OSError as exc:
                raise RegistryUnavailable(f"traffic policies in {self.directory}: {exc}") from exc
            self._verified = True

    def _read(self, service: str) -> TrafficPolicy | None:
        path = self.path(service)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryUnavailable(f"cannot read {path}: {exc}") from exc
        policy = TrafficPolicy.loads(data)
        if policy.service != service:
            raise InvalidPolicy(f"{path} holds the policy of {policy.service!r}, not {service!r}")
        return policy

    async def get(self, service: str) -> TrafficPolicy | None:
        """The stored policy; reading creates nothing (`meshctl traffic show` made the
        registry's `traffic/` until 7 Dec 2026): no directory yet, no policy."""
        if not self._verified and not self.directory.is_dir():
            return None
        self._verify()
        return self._read(service)

    @contextlib.contextmanager
    def _locked(self, service: str) -> Iterator[None]:
        lock = self.directory / f".{service}.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RegistryUnavailable(f"cannot lock {lock}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _current_revision(self, service: str) -> int:
        try:
            current = self._read(service)
        except InvalidPolicy:
            # A hand-broken file: its revision is unknown; writing over it is the fix.
            return -1
        return current.revision if current is not None else 0

    async def put(self, policy: TrafficPolicy, expected_revision: int | None) -> TrafficPolicy:
        self._verify()
        path = self.path(policy.service)
        with self._locked(policy.service):
            current = self._current_revision(policy.service)
            if expected_revision is not None and current != expected_revision:
                raise PolicyConflict(policy.service, expected_revision, current)
            stored = policy.with_revision(max(current, 0) + 1)
            try:
                write_atomically(path, stored.dumps())
                os.chmod(path, 0o600)
            except OSError as exc:
                raise RegistryUnavailable(f"cannot write {path}: {exc}") from exc
        log.info(
            "traffic policy of %s is now revision %d: %s",
            stored.service,
            stored.revision,
            stored.to_json(),
        )
        return stored

    async def delete(self, service: str, expected_revision: int | None) -> None:
        self._verify()
        with self._locked(service):
            current = self._current_revision(service)
            if expected_revision is not None and current != expected_revision:
                raise PolicyConflict(service, expected_revision, current)
            with contextlib.suppress(FileNotFoundError):
                self.path(service).unlink()

    async def watch(self, service: str) -> AsyncIterator[TrafficPolicy | None]:
        self._verify()
        path = self.path(service)
        seen: tuple[int, int, int] | None = None
        last: TrafficPolicy | None = None
        first = True
        while not self._closer.closed:
            try:
                st = os.stat(path)
                key: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                key = None
            except OSError as exc:
                log.warning("cannot watch %s: %s", path, exc)
                key = seen  # keep the last policy
            if first or key != seen:
                seen = key
                try:
                    policy = self._read(service) if key is not None else None
                except (InvalidPolicy, RegistryUnavailable) as exc:
                    log.warning(
                        "ignoring traffic policy %s, keeping the last good one: %s", path, exc
                    )
                else:
                    if first or policy != last:
                        first = False
                        last = policy
                        yield policy
            try:
                await self._closer.sleep(self._poll_s)
            except Closed:
                return

    async def close(self) -> None:
        self._closer.close()
