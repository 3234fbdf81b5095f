"""Password hashing with argon2id, off the event loop.

A hash takes ~0.1 s of CPU and 64 MiB: it runs in a worker thread so the server
keeps answering, and a semaphore bounds how many run at once.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError

_PROFILES = {
    "rfc9106_low_memory": profiles.RFC_9106_LOW_MEMORY,
    "rfc9106_high_memory": profiles.RFC_9106_HIGH_MEMORY,
    "cheapest": profiles.CHEAPEST,
}


class Passwords:
    """Hash and verify passwords; `verify` of an unknown account costs the same as a real one."""

    def __init__(self, profile: str = "rfc9106_low_memory", max_concurrent: int = 2) -> None:
        self._hasher = PasswordHasher.from_parameters(_PROFILES[profile])
        self._slots = asyncio.Semaphore(max_concurrent)
        # Verified when the email is unknown, so that a wrong email takes as long
        # as a wrong password and timing does not reveal which accounts exist.
        self._decoy = self._hasher.hash("decoy password, never matches")

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True if `password` matches; with no hash (unknown email) burns the same time."""
        async with self._slots:
            return await asyncio.to_thread(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            self._hasher.verify(password_hash or self._decoy, password)
        except (VerificationError, InvalidHashError):
            return False
        return password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        """The hash was made with other parameters (the profile changed): rehash on login."""
        return self._hasher.check_needs_rehash(password_hash)
