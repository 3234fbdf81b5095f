"""Many NATS publishes written as one: the one private API of nats-py the mesh touches,
fenced here with nats-py's own `publish`, one message at a time, as the fallback.

Why: the outbox relay publishes a batch of up to `RelayConfig.batch` rows at a time and
a consumer acks every message of a fetched batch, each through `NATS.publish`: the
subject checked with a regex, every header key with another, the command built with an
f-string and three concatenations, appended to the client's pending list, and a look
at the flusher's queue, per message. Measured on the 2-core box (one process, a
local nats-server, batches of 256 JetStream publishes of 300 bytes with the relay's
four headers, their PubAcks taken by `BatchPublisher`, alternating, two runs each):
15.4-16.2 µs of client CPU per message one publish at a time, 8.1-8.4 µs written as
one. At full speed the producer's single core is what limits `bench events` (the relay
shares it with the service's own commits): there the relay's publishing fell from 16 %
to 7 % of the producer's samples (py-spy) and the producer's CPU per event by a tenth
(docs/performance-log.md, "A batch written as one").

What: `publish_batch` encodes the batch's PUB/HPUB commands itself, byte for byte as
nats-py 2.16's `publish` does (tests/unit/events/test_nats_writes.py compares the two
on every shape: headers or none, an empty header map, keys and values nats-py trims,
replies), checks every message first as nats-py does (subject and reply, header keys,
the server's max payload) and raises the same errors before anything is written, then
hands the whole batch to the client in one `_send_command` and kicks its flusher as
`publish` does; each header key is checked once and remembered. `ack_all` writes the
acks (`Msg.ack`'s empty publish to each message's reply subject) the same way and
marks each message acked. The private parts:
`Client._send_command`, `_flush_queue`, `_flush_pending`, `_skip_subject_validation`,
`stats`, `_max_payload`, the module's `_SUBJECT_INVALID_RE`, `_HEADER_KEY_RE`,
`_HEADER_VALUE_NEWLINES`, `NATS_HDR_LINE`, and `Msg._client`, `_check_reply`, `_ackd`.

Selection: on when the capability check passes against the installed nats-py (those
names exist with the shapes read here, and a batch written on an unconnected client
leaves the same bytes in its pending list as `publish` does) and the fast paths are
asked for (`MESH_FASTPATH`, the switch of `interceptors/_fastpath.py`, read per call
here, or `use_batched_writes(False)` in tests); otherwise, and whenever the client is
not connected (a reconnect's buffering rules stay nats-py's), each message goes
through `publish` or `Msg.ack`.

Limits: a batch is all or nothing only up to the socket: like a run of publishes it
can be cut by a connection lost mid-write, and the relay's acks tell what arrived.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import nats.errors
from nats.aio import client as _client_mod
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from interceptors import _fastpath

log = logging.getLogger(__name__)

# (subject, payload, headers) of one message.
Outgoing = tuple[str, bytes, dict[str, str] | None]

_HDR_START: Final = b"NATS/1.0\r\n"


def _names() -> tuple[Any, Any, Any] | None:
    invalid = getattr(_client_mod, "_SUBJECT_INVALID_RE", None)
    key_re = getattr(_client_mod, "_HEADER_KEY_RE", None)
    newlines = getattr(_client_mod, "_HEADER_VALUE_NEWLINES", None)
    if not (hasattr(invalid, "search") and hasattr(key_re, "fullmatch")):
        return None
    if (
        not isinstance(newlines, dict)
        or bytes(getattr(_client_mod, "NATS_HDR_LINE", b"")) != (_HDR_START[:-2])
    ):
        return None
    return invalid, key_re, newlines


_NAMES: Final = _names()


# Header keys seen, checked: key -> b"Key: " (b"" for a key nats-py skips). The keys
# of events repeat (a handful), so each is checked once; the map stays small.
_KEYS: dict[str, bytes] = {}
_MAX_KEYS: Final = 256


def _key(k: str) -> bytes:
    assert _NAMES is not None
    key = k.strip()
    if not key:
        return b""  # as nats-py: an empty key is skipped
    if not _NAMES[1].fullmatch(key):
        raise nats.errors.BadHeaderError(key)
    line = key.encode() + b": "
    if len(_KEYS) < _MAX_KEYS:
        _KEYS[k] = line
    return line


def _headers(headers: dict[str, str]) -> bytes:
    assert _NAMES is not None
    newlines = _NAMES[2]
    parts = [_HDR_START]
    for k, v in headers.items():
        line = _KEYS.get(k)
        if line is None:
            line = _key(k)
        if line:
            v = v.strip()
            if "\r" in v or "\n" in v:
                v = v.translate(newlines)
            parts.append(line + v.encode() + b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _check_subject(nc: NATS, subject: str) -> None:
    assert _NAMES is not None
    if subject == "" or (not nc._skip_subject_validation and _NAMES[0].search(subject)):
        raise nats.errors.BadSubjectError


def encode_batch(nc: NATS, messages: Sequence[Outgoing], reply_prefix: str) -> tuple[bytes, int]:
    """The PUB/HPUB commands of `messages` (message `i` replying to `reply_prefix + i`)
    and their payload bytes; raises nats-py's error for the first bad message."""
    _check_subject(nc, reply_prefix + "0")
    max_payload = nc._max_payload
    parts: list[bytes] = []
    size = 0
    checked: set[str] = set()
    for i, (subject, payload, headers) in enumerate(messages):
        if subject not in checked:
            _check_subject(nc, subject)
            checked.add(subject)
        n = len(payload)
        if n > max_payload:
            raise nats.errors.MaxPayloadError
        size += n
        reply = f"{reply_prefix}{i}".encode()
        if headers is None:
            parts.append(b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply, n, payload))
        else:
            hdr = _headers(headers)
            h = len(hdr)
            parts.append(
                b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject.encode(), reply, h, h + n, hdr, payload)
            )
    return b"".join(parts), size


def encode_acks(msgs: Sequence[Msg]) -> bytes:
    """`Msg.ack`'s command for each of `msgs` (an empty publish to its reply subject)."""
    return b"".join(b"PUB %s  0\r\n\r\n" % m.reply.encode() for m in msgs)


async def _write(nc: NATS, blob: bytes, count: int, size: int) -> None:
    # What `publish` does after building its command, once for the lot.
    nc.stats["out_msgs"] += count
    nc.stats["out_bytes"] += size
    await nc._send_command(blob)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def _usable(nc: NATS) -> bool:
    # Connected: neither closed nor draining nor reconnecting (each is its own status);
    # in those `publish` decides (it raises, or buffers during a reconnect).
    return batched() and nc.is_connected


async def publish_batch(nc: NATS, messages: Sequence[Outgoing], reply_prefix: str) -> None:
    """Publish `messages` in order, message `i` with reply subject `reply_prefix + i`."""
    if not messages:
        return
    if _usable(nc):
        blob, size = encode_batch(nc, messages, reply_prefix)
        await _write(nc, blob, len(messages), size)
        return
    for i, (subject, payload, headers) in enumerate(messages):
        await nc.publish(subject, payload, reply=f"{reply_prefix}{i}", headers=headers)


async def ack_all(msgs: Sequence[Msg]) -> None:
    """`await m.ack()` for each of `msgs` (JetStream messages, all of one client)."""
    if not msgs:
        return
    nc = msgs[0]._client
    if any(m._client is not nc for m in msgs) or not _usable(nc):
        for m in msgs:
            await m.ack()
        return
    for m in msgs:
        m._check_reply()  # NotJSMessageError / MsgAlreadyAckdError, before any is written
    await _write(nc, encode_acks(msgs), len(msgs), 0)
    for m in msgs:
        m._ackd = True


def _capable() -> bool:
    """The private names have the shapes read here, and on an unconnected client a batch
    encoded here equals what nats-py's `publish` leaves in the pending list."""
    if _NAMES is None:
        return False
    try:
        nc = NATS()
        if not all(hasattr(nc, a) for a in ("_pending", "_send_command", "_flush_pending",
                                            "_flush_queue", "_skip_subject_validation",
                                            "stats", "_max_payload")):  # fmt: skip
            return False
        probe = Msg(nc, reply="r")
        if not (hasattr(probe, "_ackd") and probe._client is nc and hasattr(Msg, "_check_reply")):
            return False
        nc._max_payload = 1 << 20
        nc._max_pending_size = 1 << 20  # unconnected: publish only appends
        messages: list[Outgoing] = [("a.b", b"x", {"K": " v\r\n", "": "skip"}), ("a.c", b"", None)]

        async def public() -> None:
            for i, (s, p, h) in enumerate(messages):
                await nc.publish(s, p, reply=f"in.{i}", headers=h)
            await Msg(nc, reply="ack.1").ack()

        # Unconnected, `publish` only appends: it finishes without suspending, so one
        # step runs it (no event loop needed, whether or not one is running); one that
        # suspends raises, and the check fails.
        _fastpath._step(public())
        expected = b"".join(nc._pending)
        ours = encode_batch(nc, messages, "in.")[0] + encode_acks([Msg(nc, reply="ack.1")])
        return ours == expected
    except Exception:  # a changed nats-py: keep its own publish
        return False


CAPABLE: Final = _capable()
if not CAPABLE:  # pragma: no cover - depends on nats-py
    log.info("nats-py's internals changed: batches are published one message at a time")
_enabled = CAPABLE


def use_batched_writes(enabled: bool) -> None:
    """Write batches as one (where capable), or one `publish` per message (tests)."""
    global _enabled
    _enabled = enabled and CAPABLE


def batched() -> bool:
    """Whether batches are written as one now (the `MESH_FASTPATH` switch included)."""
    return _enabled and _fastpath.requested()
