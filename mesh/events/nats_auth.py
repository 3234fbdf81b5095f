"""Who may do what on NATS: per-service identities, their grants, the server config.

Identity: one **nkey** per service (an Ed25519 key pair, `nkeys` package, the
one nats-py itself uses to sign the server's challenge). Why nkeys rather than
the mesh certificates with TLS `verify_and_map`:
- independent of the PKI: NATS auth works whether or not mTLS is configured
  (`MESH_TLS=off` for debugging must not open the event bus), and rotating a
  24-hour certificate never drops a NATS connection;
- the server config holds only public keys, never a secret: the config file
  can be read by anyone who can read the run dir without granting anything;
- challenge-response: the seed never crosses the wire (nothing replayable
  even on a plaintext loopback connection), unlike user/password or tokens;
- what every NATS deployment understands: an existing server or NGS account
  takes the same seed file (`NATS_NKEY_SEED_FILE`) or a `.creds` file
  (`NATS_CREDS`) without the mesh's CA.
Limit: a seed file is a long-lived bearer secret (0600, run dir 0700); it is
regenerated at every `meshctl up`, which is the rotation.

Permissions: each identity publishes only its own domain's events and the dead
letters of what it consumes, and reaches JetStream only through API subjects
naming its own streams and its own durable consumers (every grant below says
why). Core subscriptions are limited to its private reply inbox
(`_INBOX.<service>.>`, set as the client's inbox prefix): JetStream pull
consumers hand messages over through that inbox, so a service reads another
domain's events only through a consumer it was granted. Anonymous clients are
refused (no `no_auth_user`). The permission matrix in the README is rendered
from the same data (`matrix_markdown`).

Limits: permissions are checked per subject, so a consumer that names another
service's durable is refused, but one identity shared by several instances is
one principal (instances of a service are not told apart). JetStream API
*replies* are not filtered: a stream's info shows its config to whoever may
ask for it, which is only its owner here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import nkeys

from mesh.events.streams import DLQ_PREFIX, StreamSpec, dlq_subject

JS_API = "$JS.API"


@dataclass(frozen=True, slots=True)
class Consumes:
    """A durable consumer of one subject: the only way an identity reads events."""

    subject: str
    durable: str


@dataclass(frozen=True, slots=True)
class EventIdentity:
    """One principal on the bus: the domains it publishes and what it consumes.

    `observer` identities (tools such as `meshctl events tail`) read every domain
    subject with plain subscriptions and may publish nothing. `monitor` identities
    (the dashboard) ask JetStream for its streams' and consumers' state (message
    counts, what each consumer has pending) and read no event at all. The
    `dead_letters` identity (`meshctl events dlq`) reads the dead-letter stream's
    messages and removes them, and publishes no event: a replay is published by the
    event's own domain's identity (mesh/events/dead_letters.py). `local_only`
    identities (an example, a developer's script) are provisioned by `meshctl up`
    only: the Kubernetes secrets never carry their seed or their permissions.
    """

    name: str
    publishes: tuple[str, ...] = ()
    consumes: tuple[Consumes, ...] = ()
    observer: bool = False
    monitor: bool = False
    dead_letters: bool = False
    local_only: bool = False


# The read-only identity of meshctl's own tools (`events tail`, a project's demo): reads
# every event subject, publishes nothing. Every mesh `meshctl up` runs knows it.
MESHCTL = EventIdentity("meshctl", observer=True)
# The dashboard `meshctl up` serves: JetStream's stream and consumer state, no event.
DASHBOARD = EventIdentity("dashboard", monitor=True)
# `meshctl events dlq`: lists, removes (after a replay, or as dropped) dead letters.
DEAD_LETTERS = EventIdentity("dead-letters", dead_letters=True)
# The mesh's own tools' identities, beside a topology's services' on every local NATS.
MESH_TOOLS: tuple[EventIdentity, ...] = (MESHCTL, DASHBOARD, DEAD_LETTERS)
# What a monitor may ask JetStream (read-only requests; no message is ever returned).
_MONITOR_REQUESTS = (
    ("INFO", "the account's JetStream usage"),
    ("STREAM.LIST", "every stream's config and state (message counts)"),
    ("STREAM.NAMES", "the streams' names"),
    ("STREAM.INFO.*", "a stream's config and state"),
    ("CONSUMER.LIST.*", "a stream's consumers and what each has pending"),
    ("CONSUMER.NAMES.*", "a stream's consumers' names"),
    ("CONSUMER.INFO.*.*", "a consumer's state"),
)


@dataclass(frozen=True, slots=True)
class Grant:
    subject: str
    why: str


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[Grant, ...]
    subscribe: tuple[Grant, ...]
    subscribe_deny: tuple[Grant, ...] = field(default=())


class GrantError(ValueError):
    """The identities do not fit the streams (a subject no stream holds)."""


def inbox_prefix(identity: str) -> str:
    """The client's reply-inbox prefix: private per identity, so no one reads another's
    replies (pass as nats-py's `inbox_prefix`)."""
    return f"_INBOX.{identity}"


def valid_pattern(pattern: str) -> bool:
    """Whether `pattern` is a NATS subject a client may subscribe to: dot-separated
    non-empty tokens without whitespace, `*` a whole token, `>` only the last one."""
    tokens = pattern.split(".")
    for i, tok in enumerate(tokens):
        if not tok or any(c.isspace() for c in tok):
            return False
        if ("*" in tok or ">" in tok) and tok not in ("*", ">"):
            return False
        if tok == ">" and i != len(tokens) - 1:
            return False
    return True


def subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def stream_for(subject: str, streams: Sequence[StreamSpec]) -> StreamSpec:
    """The stream holding `subject` (a literal subject or a domain wildcard)."""
    probe = subject.replace(">", "x").replace("*", "x")
    for spec in streams:
        if any(subject_matches(p, probe) for p in spec.subjects):
            return spec
    raise GrantError(f"no stream holds subject {subject!r}")


def owned_streams(identity: EventIdentity, streams: Sequence[StreamSpec]) -> list[StreamSpec]:
    """The streams this identity declares (creates/updates) at start: its domains' streams,
    and the DLQ stream when it consumes (its consumers publish dead letters there)."""
    names = {stream_for(f"{d}.>", streams).name for d in identity.publishes}
    if identity.consumes:
        names.add(stream_for(f"{DLQ_PREFIX}.>", streams).name)
    return [s for s in streams if s.name in names]


def permissions(identity: EventIdentity, streams: Sequence[StreamSpec]) -> Permissions:
    """Every subject `identity` may publish to and subscribe to, each with its reason."""
    if identity.monitor:
        return Permissions(
            publish=tuple(Grant(f"{JS_API}.{api}", why) for api, why in _MONITOR_REQUESTS),
            subscribe=(
                Grant(f"{inbox_prefix(identity.name)}.>", "JetStream's answers to it, only"),
            ),
        )
    if identity.dead_letters:
        dlq = stream_for(f"{DLQ_PREFIX}.>", streams).name
        return Permissions(
            publish=(
                Grant(f"{JS_API}.STREAM.INFO.{dlq}", "the dead letters' sequence range"),
                Grant(f"{JS_API}.STREAM.MSG.GET.{dlq}", "reads a dead letter, its headers too"),
                Grant(
                    f"{JS_API}.STREAM.MSG.DELETE.{dlq}",
                    "removes a dead letter once replayed, or dropped",
                ),
            ),
            subscribe=(
                Grant(f"{inbox_prefix(identity.name)}.>", "JetStream's answers to it, only"),
            ),
        )
    if identity.observer:
        return Permissions(
            publish=(),
            subscribe=(Grant(">", "reads every event subject (tail, demo); publishes nothing"),),
            subscribe_deny=(
                Grant("$JS.>", "not JetStream's API traffic"),
                Grant("$SYS.>", "not the server's system events"),
                Grant("_INBOX.>", "not other clients' replies"),
            ),
        )
    pub: list[Grant] = []
    for d in identity.publishes:
        pub.append(Grant(f"{d}.>", f"its own domain's events (outbox relay of {identity.name})"))
    for c in identity.consumes:
        pub.append(Grant(dlq_subject(c.subject), f"dead letters of {c.subject} it gave up on"))
    for s in owned_streams(identity, streams):
        why = f"declares stream {s.name} it writes to (ensure_streams at start)"
        for op in ("INFO", "CREATE", "UPDATE"):
            pub.append(Grant(f"{JS_API}.STREAM.{op}.{s.name}", why))
    for name in sorted({stream_for(f"{d}.>", streams).name for d in identity.publishes}):
        why = "reads back one of its own events, to replay it (meshctl events dlq)"
        pub.append(Grant(f"{JS_API}.STREAM.MSG.GET.{name}", why))
    for c in identity.consumes:
        stream = stream_for(c.subject, streams).name
        pub += [
            Grant(f"{JS_API}.CONSUMER.CREATE.{stream}.{c.durable}.{c.subject}",
                  f"creates its durable {c.durable}, filtered to {c.subject} only"),
            Grant(f"{JS_API}.CONSUMER.INFO.{stream}.{c.durable}",
                  f"binds to {c.durable} and checks it still exists"),
            Grant(f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{c.durable}",
                  f"pulls the next batch from {c.durable}"),
            Grant(f"$JS.ACK.{stream}.{c.durable}.>",
                  f"acks, naks and terms messages of {c.durable}"),
        ]  # fmt: skip
    sub = [
        Grant(f"{inbox_prefix(identity.name)}.>",
              "its own replies: publish acks, API answers, pulled messages"),
    ]  # fmt: skip
    return Permissions(publish=tuple(pub), subscribe=tuple(sub))


# -- keys --------------------------------------------------------------------------------


def new_user_seed() -> bytes:
    """A fresh nkey user seed (`SU...`), from the OS's randomness."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed


def public_key(seed: bytes) -> str:
    """The public key (`U...`) the server config names for `seed`."""
    kp = nkeys.from_seed(bytearray(seed))
    try:
        return bytes(kp.public_key).decode()
    finally:
        kp.wipe()


# -- server config -----------------------------------------------------------------------


def _q(value: str) -> str:
    return json.dumps(value)  # a quoted string in nats-server's config syntax


def _grant_list(key: str, grants: Iterable[Grant], indent: str) -> list[str]:
    grants = list(grants)
    if not grants:
        return [f"{indent}{key}: []"]
    lines = [f"{indent}{key}: ["]
    for g in grants:
        lines.append(f"{indent}  {_q(g.subject)}  # {g.why}")
    lines.append(f"{indent}]")
    return lines


def render_users(
    users: Sequence[tuple[EventIdentity, str]],
    streams: Sequence[StreamSpec],
    extra_users: Sequence[str] = (),
) -> list[str]:
    """The `authorization.users` entries: one nkey each with its permissions, then the
    raw `extra_users` entries."""
    lines = ["  users: ["]
    for identity, pub_key in users:
        perms = permissions(identity, streams)
        lines.append(f"    # {identity.name}")
        lines.append(f"    {{ nkey: {_q(pub_key)}")
        lines.append("      permissions: {")
        lines.append("        publish: {")
        if perms.publish:
            lines += _grant_list("allow", perms.publish, "          ")
        else:
            lines += _grant_list("deny", [Grant(">", "publishes nothing")], "          ")
        lines.append("        }")
        lines.append("        subscribe: {")
        lines += _grant_list("allow", perms.subscribe, "          ")
        if perms.subscribe_deny:
            lines += _grant_list("deny", perms.subscribe_deny, "          ")
        lines.append("        }")
        lines.append("      }")
        lines.append("    }")
    lines += [f"    {u}" for u in extra_users]
    lines.append("  ]")
    return lines


def render_server_config(
    *,
    host: str,
    port: int,
    store_dir: str,
    users: Sequence[tuple[EventIdentity, str]],
    streams: Sequence[StreamSpec],
    extra_users: Sequence[str] = (),
) -> str:
    """A nats-server config: JetStream on, listening on `host:port`, nkey users only.

    `extra_users` are raw user entries appended as they are (tests add an
    administrator); anything not listed is refused (no anonymous user).
    """
    lines = [
        "# nats-server config rendered by the mesh (mesh/events/nats_auth.py); regenerated",
        "# at every start: edit the identities in code, not here.",
        f"host: {_q(host)}",
        f"port: {port}",
        f"jetstream: {{ store_dir: {_q(store_dir)} }}",
        "authorization: {",
        *render_users(users, streams, extra_users),
        "}",
    ]
    return "\n".join(lines) + "\n"


# -- documentation -----------------------------------------------------------------------


def matrix_markdown(identities: Sequence[EventIdentity], streams: Sequence[StreamSpec]) -> str:
    """The permission matrix as a Markdown table (the README's, kept current by a test)."""
    rows = [
        "| identity | publishes | consumes (durable) | JetStream streams it declares |",
        "|---|---|---|---|",
    ]
    for ident in identities:
        if ident.observer:
            rows.append(f"| `{ident.name}` | nothing | subscribes to every event subject"
                        " (no `$JS.>`, `_INBOX.>`, `$SYS.>`) | none |")  # fmt: skip
            continue
        if ident.monitor:
            rows.append(f"| `{ident.name}` | JetStream's read-only stream and consumer"
                        " info requests | nothing (no event subject) | none |")  # fmt: skip
            continue
        if ident.dead_letters:
            rows.append(f"| `{ident.name}` | JetStream's requests to read and remove the"
                        " dead letters (`DLQ`) | nothing (no event subject) | none |")  # fmt: skip
            continue
        pubs = [f"`{d}.>`" for d in ident.publishes]
        pubs += [f"`{dlq_subject(c.subject)}`" for c in ident.consumes]
        cons = [f"`{c.subject}` ({c.durable})" for c in ident.consumes]
        owned = [f"`{s.name}`" for s in owned_streams(ident, streams)]
        where = " (`meshctl up` only)" if ident.local_only else ""
        rows.append(
            f"| `{ident.name}`{where} | {', '.join(pubs) or 'nothing'}"
            f" | {', '.join(cons) or 'nothing'} | {', '.join(owned) or 'none'} |"
        )
    return "\n".join(rows) + "\n"
