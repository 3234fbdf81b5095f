"""Released messages survive today's generated code, both ways, field for field.

For every message of every released package: classes built from the BASELINE
descriptors (in their own DescriptorPool, nothing shared with the generated
`shop` modules) fill every field with seeded random values, serialize; today's
generated class parses the bytes, serializes them again, and the baseline class
parses that back. Nothing may be lost, renamed or reinterpreted on the way.
"""

from __future__ import annotations

import importlib
import random
import struct
import zlib
from typing import Any, cast

import pytest
from google.protobuf import descriptor_pool, json_format, message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from mesh.contracts import baseline, codegen, descriptors

ROUNDS = 24  # more than any oneof has members: each member is chosen at least once
MAX_DEPTH = 4
_TEXT = "abcxyz019 _-é漢字🙂"
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _released_messages() -> list[tuple[str, str]]:
    """(package, message full name) of every released message, read at collection."""
    out: list[tuple[str, str]] = []
    for package, fds in sorted(baseline.load().items()):
        for f in fds.file:
            if f.package == package:
                out.extend(
                    (package, m.full_name) for m in descriptors.messages(f) if not m.is_map_entry
                )
    return out


@pytest.fixture(scope="module")
def baseline_pools() -> dict[str, descriptor_pool.DescriptorPool]:
    pools = {}
    for package, fds in baseline.load().items():
        pool = descriptor_pool.DescriptorPool()
        for f in fds.file:
            pool.Add(f)
        pools[package] = pool
    return pools


@pytest.fixture(scope="module")
def current_pool() -> descriptor_pool.DescriptorPool:
    """The default pool, holding every generated module: the shop's and the mesh's own."""
    for p in sorted(codegen.GENERATED.rglob("*_pb2.py")):
        importlib.import_module(".".join(p.relative_to(codegen.GENERATED).with_suffix("").parts))
    return descriptor_pool.Default()


def _scalar(field: FieldDescriptor, rng: random.Random) -> Any:
    """A random non-default value, so that the field is really on the wire."""
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return "".join(rng.choice(_TEXT) for _ in range(rng.randint(1, 12)))
    if t == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.randint(1, 12))
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return rng.choice([v.number for v in field.enum_type.values if v.number != 0] or [0])
    if t == FieldDescriptor.TYPE_FLOAT:  # none in the contracts (lint); kept for completeness
        return struct.unpack("f", struct.pack("f", rng.uniform(-1e6, 1e6)))[0]
    if t == FieldDescriptor.TYPE_DOUBLE:
        return rng.uniform(-1e12, 1e12)
    lo, hi = _INT_RANGES[t]
    return rng.choice([lo, hi, rng.randint(lo, hi), 1]) or 1


def _fill(msg: Message, rng: random.Random, round_: int, depth: int = 0) -> None:
    # The stubs type DESCRIPTOR as python-or-upb; both implement descriptor.Descriptor.
    desc = cast(Descriptor, msg.DESCRIPTOR)
    if desc.full_name == "google.protobuf.Timestamp":
        msg.seconds = rng.randint(1, 253402300799)  # type: ignore[attr-defined]
        msg.nanos = rng.randint(0, 999_999_999)  # type: ignore[attr-defined]
        return
    if desc.full_name == "google.protobuf.Any":
        # A payload of a type both descriptor worlds know: JSON resolves the type URL.
        msg.type_url = "type.googleapis.com/google.protobuf.Timestamp"  # type: ignore[attr-defined]
        stamp = timestamp_pb2.Timestamp(seconds=rng.randint(1, 253402300799))
        msg.value = stamp.SerializeToString()  # type: ignore[attr-defined]
        return
    if desc.full_name == "google.protobuf.Duration":
        msg.seconds = rng.randint(1, 315576000000)  # type: ignore[attr-defined]
        msg.nanos = rng.randint(0, 999_999_999)  # type: ignore[attr-defined]
        return
    # Cycle through each oneof's members (and "none"), so every member is covered.
    chosen = {}
    for oneof in desc.oneofs:
        options = [None, *oneof.fields]
        chosen[oneof.full_name] = options[(round_ + depth) % len(options)]
    for field in desc.fields:
        within = field.containing_oneof
        if within is not None and chosen[within.full_name] is not field:
            continue
        _set(msg, field, rng, round_, depth)


def _set(msg: Message, field: FieldDescriptor, rng: random.Random, round_: int, depth: int) -> None:
    value = getattr(msg, field.name)
    sub = field.message_type
    if sub is not None and sub.GetOptions().map_entry:
        key_field, value_field = sub.fields_by_name["key"], sub.fields_by_name["value"]
        for _ in range(rng.randint(1, 3)):
            key = _scalar(key_field, rng)
            if value_field.message_type is not None:
                if depth < MAX_DEPTH:
                    _fill(value[key], rng, round_, depth + 1)
            else:
                value[key] = _scalar(value_field, rng)
        return
    if field.is_repeated:
        for _ in range(rng.randint(1, 3)):
            if sub is not None:
                item = value.add()
                if depth < MAX_DEPTH:
                    _fill(item, rng, round_, depth + 1)
            else:
                value.append(_scalar(field, rng))
        return
    if sub is not None:
        value.SetInParent()  # present even when left empty at the depth limit
        if depth < MAX_DEPTH:
            _fill(value, rng, round_, depth + 1)
        return
    setattr(msg, field.name, _scalar(field, rng))


def _as_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


@pytest.mark.parametrize(("package", "name"), _released_messages())
def test_baseline_message_round_trips_through_current_code(
    baseline_pools, current_pool, package, name
):
    old_cls = message_factory.GetMessageClass(baseline_pools[package].FindMessageTypeByName(name))
    new_cls = message_factory.GetMessageClass(current_pool.FindMessageTypeByName(name))
    assert old_cls is not new_cls  # really two independent descriptor worlds
    rng = random.Random(zlib.crc32(name.encode()))
    covered: set[str] = set()
    for round_ in range(ROUNDS):
        original = old_cls()
        _fill(original, rng, round_)
        covered |= {f.name for f, _ in original.ListFields()}
        wire = original.SerializeToString(deterministic=True)

        current = new_cls.FromString(wire)
        assert _as_dict(current) == _as_dict(original), f"today's {name} reads it differently"

        back = old_cls.FromString(current.SerializeToString(deterministic=True))
        assert _as_dict(back) == _as_dict(original), f"{name} lost data through today's code"
        assert back.SerializeToString(deterministic=True) == wire
    # The round trips above only prove something for fields that were actually set.
    assert covered == {f.name for f in old_cls.DESCRIPTOR.fields}


def test_every_released_package_is_exercised():
    assert {package for package, _ in _released_messages()} >= {
        "shop.users.v1",
        "shop.inventory.v1",
        "shop.payments.v1",
        "shop.orders.v1",
        "shop.orders.v2",
        "shop.events.v1",
        "shop.common.v1",
        "shop.testing.v1",
        "meshproto.api.v1",
        "meshproto.events.v1",
    }
