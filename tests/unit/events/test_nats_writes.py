"""`mesh.events.nats_writes`: a batch written as one is, byte for byte, what nats-py's own
`publish` and `Msg.ack` write one message at a time, and is refused for the same reasons.

On an unconnected client `publish` only appends its command to the pending list, which
is what these tests compare; tests/integration/events/test_batch_publish_and_pull.py
sends both ways through a real nats-server."""

from __future__ import annotations

from collections.abc import Iterator

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import MsgAlreadyAckdError, NotJSMessageError

from interceptors import _fastpath
from mesh.events import nats_writes
from mesh.events.nats_writes import Outgoing, encode_acks, encode_batch


@pytest.fixture(autouse=True)
def _batched() -> Iterator[None]:
    assert nats_writes.CAPABLE, "the installed nats-py is the one these fast paths were made for"
    yield
    nats_writes.use_batched_writes(True)


def _client(max_payload: int = 1 << 20) -> NATS:
    nc = NATS()
    nc._max_payload = max_payload
    nc._max_pending_size = 1 << 24  # unconnected, publish appends to the pending list
    return nc


def _public(nc: NATS, messages: list[Outgoing], prefix: str) -> bytes:
    for i, (subject, payload, headers) in enumerate(messages):
        _fastpath._step(nc.publish(subject, payload, reply=f"{prefix}{i}", headers=headers))
    written = b"".join(nc._pending)
    nc._pending.clear()
    return written


SHAPES: list[Outgoing] = [
    ("user.created", b"body", {"Nats-Msg-Id": "e1", "traceparent": "00-ab-cd-01"}),
    ("user.created", b"", None),  # no headers: PUB, not HPUB
    ("order.completed", b"\x00\x01binary\r\n", {}),  # an empty map: HPUB with no header
    ("user.deleted", b"x" * 4096, {" Spaced-Key ": "  trimmed value \t"}),
    ("user.deleted", b"y", {"Multi-Line": "one\r\ntwo\nthree\rfour"}),
    ("user.deleted", b"z", {"": "skipped", "  ": "skipped too", "Kept": "yes"}),
    ("user.deleted", b"u", {"Unicode": "café ☕", "Nats-Msg-Id": "ü-1"}),
]


def test_a_batch_is_what_publish_writes_one_message_at_a_time() -> None:
    nc = _client()
    expected = _public(nc, SHAPES, "_INBOX.abc.7.")
    blob, size = encode_batch(nc, SHAPES, "_INBOX.abc.7.")
    assert blob == expected
    assert size == sum(len(p) for _, p, _ in SHAPES)


def test_acks_are_what_msg_ack_writes() -> None:
    nc = _client()
    msgs = [Msg(nc, subject="s", reply=f"$JS.ACK.S.d.1.{i}.{i}.1700000000.0") for i in range(3)]
    for m in msgs:
        _fastpath._step(m.ack())
    expected = b"".join(nc._pending)
    assert encode_acks([Msg(nc, reply=m.reply) for m in msgs]) == expected


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (("bad subject", b"x", None), nats.errors.BadSubjectError),
        (("crlf\r\nPUB x 0", b"x", None), nats.errors.BadSubjectError),
        (("", b"x", None), nats.errors.BadSubjectError),
        (("ok", b"x", {"Bad:Key": "v"}), nats.errors.BadHeaderError),
        (("ok", b"x", {"Bad Key": "v"}), nats.errors.BadHeaderError),
        (("ok", b"x" * 65, None), nats.errors.MaxPayloadError),
    ],
)
def test_a_bad_message_is_refused_as_publish_refuses_it_and_nothing_is_written(
    message: Outgoing, error: type[Exception]
) -> None:
    nc = _client(max_payload=64)
    with pytest.raises(error):
        _public(nc, [message], "r.")
    nc._pending.clear()
    good: Outgoing = ("ok", b"x", None)
    with pytest.raises(error):
        encode_batch(nc, [good, message, good], "r.")
    assert nc._pending == []


def test_a_reply_prefix_with_whitespace_is_refused() -> None:
    with pytest.raises(nats.errors.BadSubjectError):
        encode_batch(_client(), [("ok", b"x", None)], "bad reply.")


async def test_unconnected_ack_all_refuses_as_msg_ack_does() -> None:
    """Not connected, `ack_all` is `Msg.ack` per message, errors included (connected, it
    checks them all before writing: the integration tests)."""
    nc = _client()
    acked = Msg(nc, reply="$JS.ACK.a")
    acked._ackd = True
    with pytest.raises(MsgAlreadyAckdError):
        await nats_writes.ack_all([Msg(nc, reply="$JS.ACK.b"), acked])
    with pytest.raises(NotJSMessageError):
        await nats_writes.ack_all([Msg(nc, reply="")])


def test_the_switch_turns_the_batched_writes_off() -> None:
    assert nats_writes.batched()
    nats_writes.use_batched_writes(False)
    assert not nats_writes.batched()
    nats_writes.use_batched_writes(True)
    assert nats_writes.batched()


def test_mesh_fastpath_0_turns_them_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_FASTPATH", "0")
    assert not nats_writes.batched()
