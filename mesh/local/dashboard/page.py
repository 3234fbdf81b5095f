"""HTML of the dashboard, rendered on the server from a `Snapshot` (every value escaped)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape

from mesh.events.streams import DLQ_STREAM
from mesh.local.dashboard.collect import Snapshot
from mesh.local.traces.store import SpanNode

_NONE = "\u2013"  # an en dash: no value
# Shown when hovering a span's name: what explains a status or a hop.
_SHOWN_ATTRIBUTES = frozenset(
    {
        "rpc.grpc.status_code", "grpc.status_code", "grpc.message", "http.status_code",
        "http.url", "http.method", "upstream_address", "upstream_cluster", "response_flags",
        "messaging.destination.name", "messaging.message.id", "exception.type",
    }
)  # fmt: skip
_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _ms(value: float | None) -> str:
    if value is None:
        return _NONE
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _table(head: Sequence[str], rows: Iterable[str], empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<p class="mute">{_e(empty)}</p>'
    cells = "".join(
        f'<th class="num">{_e(h[1:])}</th>' if h.startswith("#") else f"<th>{_e(h)}</th>"
        for h in head
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _health_class(health: str) -> str:
    if health.startswith("healthy"):
        return "ok"
    if health.startswith(("degraded", "starting", "pending")):
        return "warn"
    return "bad"


def page(title: str, body: str, *, live: bool) -> str:
    script = '<script src="/static/app.js" defer></script>' if live else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)}</title><link rel=stylesheet href="/static/app.css">{script}'
        f"</head><body>{body}</body></html>"
    )


def dashboard(snap: Snapshot, csrf: str, links: Sequence[tuple[str, str]]) -> str:
    up = sum(1 for v in snap.instances if v.health.startswith("healthy"))
    extra = " · ".join(f'{_e(k)}: <a href="{_e(v)}">{_e(v)}</a>' for k, v in links)
    header = (
        "<header><h1>shop-mesh</h1>"
        f'<span class="sum">{up}/{len(snap.instances)} instances healthy'
        f"{' · ' + extra if extra else ''}</span>"
        '<span class="sum">refreshed <span id="refreshed">'
        f"{time.strftime('%H:%M:%S')}</span></span></header>"
    )
    return page(
        "shop-mesh dashboard",
        f'{header}<main id="panels">{panels(snap, csrf)}</main>',
        live=True,
    )


def panels(snap: Snapshot, csrf: str) -> str:
    parts = []
    if snap.notes:
        parts.append(f'<p class="notes">{"<br>".join(_e(n) for n in snap.notes)}</p>')
    parts += [
        _topology(snap),
        _processes(snap),
        _requests(snap),
        _traces(snap),
        _streams(snap),
        _breakers(snap),
        _sagas(snap, csrf),
    ]
    return "".join(parts)


def _topology(snap: Snapshot) -> str:
    rows = []
    for v in snap.instances:
        health = v.health + (f" ({', '.join(v.failing)})" if v.failing else "")
        edge = v.edge or _NONE
        edge_cls = "bad" if edge == "ejected" else ("ok" if edge == "routed" else "mute")
        ejections = f"{v.ejections:.0f}" if v.ejections else "0"
        rows.append(
            f'<tr data-instance="{_e(v.id)}"><td>{_e(v.service)}</td><td>{_e(v.id)}</td>'
            f"<td>{_e(v.address)}</td><td>{_e(v.version or _NONE)}</td>"
            f'<td><span class="pill {_health_class(v.health)}">{_e(health)}</span></td>'
            f'<td class="{edge_cls}">{_e(edge)}</td><td class="num">{ejections}</td></tr>'
        )
    table = _table(
        ("service", "instance", "gRPC", "version", "health", "edge", "#ejected by clients"),
        rows,
        "no instance registered",
    )
    return f'<section id="topology" class="wide"><h2>Topology</h2>{table}</section>'


def _processes(snap: Snapshot) -> str:
    """The mesh's own processes `meshctl up` supervises (none: no section)."""
    if not snap.processes:
        return ""
    rows = []
    for p in snap.processes:
        cls = "ok" if p.running else ("bad" if p.state == "gave up" else "warn")
        pid = _NONE if p.pid is None else str(p.pid)
        rows.append(
            f'<tr data-process="{_e(p.name)}"><td>{_e(p.name)}</td><td class="num">{pid}</td>'
            f'<td><span class="pill {cls}">{_e(p.state)}</span></td>'
            f'<td class="num">{p.restarts}</td><td>{_e(p.last_exit_text)}</td></tr>'
        )
    table = _table(("process", "pid", "state", "#restarts", "last exit"), rows, "")
    return f'<section id="processes"><h2>Mesh processes</h2>{table}</section>'


def _requests(snap: Snapshot) -> str:
    rows = []
    for m in snap.methods:
        err = m.error_rate
        err_cls = "bad" if err else ""
        mark = ' <span class="mute" title="no call in the interval: since start">*</span>'
        q = mark if m.lifetime_quantiles and m.calls else ""
        rows.append(
            f"<tr><td>{_e(m.service)}</td><td>{_e(m.grpc_service)}/<b>{_e(m.method)}</b></td>"
            f'<td class="num">{_NONE if m.rate is None else f"{m.rate:.1f}"}</td>'
            f'<td class="num {err_cls}">{_NONE if err is None else f"{err * 100:.1f}%"}</td>'
            f'<td class="num">{_ms(m.p50_ms)}{q}</td><td class="num">{_ms(m.p99_ms)}{q}</td>'
            f'<td class="num">{m.calls:.0f}</td></tr>'
        )
    table = _table(
        ("service", "method", "#req/s", "#errors", "#p50 ms", "#p99 ms", "#calls"),
        rows,
        "no call served yet",
    )
    return (
        f'<section id="requests" class="wide"><h2>Requests (server side, all instances)</h2>'
        f'{table}<p class="mute">health checks left out; errors: server faults (UNKNOWN,'
        " INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, ...); rates over the last refresh"
        " interval.</p></section>"
    )


def _breakers(snap: Snapshot) -> str:
    shown = [b for b in snap.breakers if b[3] != "closed"]
    closed = len(snap.breakers) - len(shown)
    rows = [
        f"<tr><td>{_e(i)}</td><td>{_e(t)}</td><td>{_e(m)}</td>"
        f'<td class="{"bad" if s == "open" else "warn"}">{_e(s)}</td></tr>'
        for i, t, m, s in shown
    ]
    table = _table(("caller", "target", "method", "state"), rows, "no breaker open")
    return (
        f'<section id="breakers"><h2>Circuit breakers</h2>{table}'
        f'<p class="mute">{closed} closed</p></section>'
    )


def _streams(snap: Snapshot) -> str:
    rows = []
    for s in snap.streams:
        dlq = s.name == DLQ_STREAM
        cls = ' class="bad"' if dlq and s.messages else ""
        label = f"{s.name} (dead letters)" if dlq else s.name
        rows.append(
            f"<tr><td{cls}><b>{_e(label)}</b></td><td></td>"
            f'<td class="num"{cls}>{s.messages}</td><td></td><td></td><td></td></tr>'
        )
        for c in s.consumers:
            lag_cls = ' class="num warn"' if c["pending"] else ' class="num"'
            rows.append(
                f"<tr><td></td><td>{_e(c['name'])}</td><td></td>"
                f'<td{lag_cls}>{_e(c["pending"])}</td><td class="num">{_e(c["ack_pending"])}</td>'
                f'<td class="num">{_e(c["redelivered"])}</td></tr>'
            )
    table = _table(
        ("stream", "consumer", "#messages", "#lag", "#unacked", "#redelivered"),
        rows,
        "no stream (NATS not reachable?)",
    )
    return f'<section id="streams" class="wide"><h2>Event streams</h2>{table}</section>'


def _sagas(snap: Snapshot, csrf: str) -> str:
    rows = []
    parked_rows = []
    for s in snap.sagas:
        rows.append(
            f'<tr><td>{_e(s.service)}</td><td class="num">{s.running}</td>'
            f'<td class="num">{s.compensating}</td>'
            f'<td class="num{" bad" if s.parked else ""}">{len(s.parked)}</td></tr>'
        )
        for p in s.parked:
            parked_rows.append(
                f'<tr class="error"><td>{_e(s.service)}</td><td>{_e(p.get("name"))}</td>'
                f'<td class="name">{_e(p.get("saga_id"))}</td>'
                f"<td>{_e(str(p.get('last_error', ''))[:120])}</td><td>"
                '<form method="post" action="/sagas/retry">'
                f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
                f'<input type="hidden" name="service" value="{_e(s.service)}">'
                f'<input type="hidden" name="saga_id" value="{_e(p.get("saga_id"))}">'
                "<button>retry</button></form></td></tr>"
            )
    table = _table(("service", "#running", "#compensating", "#parked"), rows, "no saga store")
    parked = _table(("service", "saga", "id", "last error", ""), parked_rows, "nothing parked")
    return f'<section id="sagas"><h2>Sagas</h2>{table}<h2>Parked</h2>{parked}</section>'


def _traces(snap: Snapshot) -> str:
    rows = []
    for t in snap.traces:
        when = time.strftime("%H:%M:%S", time.localtime(t.start_ns / 1e9))
        cls = ' class="error"' if t.errors else ""
        errs = f'<span class="bad">{t.errors}</span>' if t.errors else "0"
        rows.append(
            f'<tr{cls} data-trace="{_e(t.trace_id)}"><td>{when}</td>'
            f'<td><a href="/traces/{_e(t.trace_id)}">{_e(t.root)}</a></td>'
            f'<td>{_e(t.service)}</td><td class="num">{_ms(t.duration_ms)}</td>'
            f'<td class="num">{t.spans}</td><td class="num">{errs}</td>'
            f'<td class="name mute">{_e(t.trace_id[:12])}</td></tr>'
        )
    table = _table(
        ("start", "root", "service", "#ms", "#spans", "#errors", "trace"),
        rows,
        "no trace stored yet",
    )
    return f'<section id="traces" class="wide"><h2>Recent traces</h2>{table}</section>'


def waterfall(trace_id: str, nodes: Sequence[SpanNode]) -> str:
    if not nodes:
        body = f'<p class="mute">no span of trace {_e(trace_id)} is stored (pruned?)</p>'
    else:
        total = max(n.offset_ms + n.span.duration_ms for n in nodes) or 1.0
        rows = []
        for n in nodes:
            s = n.span
            left = n.offset_ms / total * 100
            width = max(s.duration_ms / total * 100, 0.3)
            cls = f"span svc-{_e(s.service)}" + (" err" if s.error else "")
            status = f' <span class="bad">{_e(s.status or "error")}</span>' if s.error else ""
            details = "\n".join(
                f"{k} = {v}" for k, v in sorted(s.attributes.items()) if k in _SHOWN_ATTRIBUTES
            )
            rows.append(
                f"<tr{' class=error' if s.error else ''}>"
                f'<td class="name" title="{_e(details)}"'
                f' style="padding-left:{8 + n.depth * 16}px">'
                f"{_e(s.name)}{status}</td>"
                f"<td>{_e(s.service)}</td><td>{_e(_KINDS.get(s.kind, s.kind))}</td>"
                f'<td class="num">{n.offset_ms:.1f}</td><td class="num">{s.duration_ms:.1f}</td>'
                f'<td class="bar"><div class="track"><div class="{cls}" '
                f'style="left:{left:.2f}%;width:{width:.2f}%"></div></div></td></tr>'
            )
        body = _table(("span", "service", "kind", "#start ms", "#ms", ""), rows, "")
    summary = ""
    if nodes:
        total_ms = max(n.offset_ms + n.span.duration_ms for n in nodes)
        errors = sum(1 for n in nodes if n.span.error)
        services = sorted({n.span.service for n in nodes})
        summary = (
            f'<span class="sum">{total_ms:.1f} ms · {len(nodes)} spans · {errors} errors'
            f" · {_e(', '.join(services))}</span>"
        )
    header = (
        '<header><h1><a href="/">shop-mesh</a> · trace</h1>'
        f'<span class="sum name">{_e(trace_id)}</span>{summary}</header>'
    )
    return page(
        f"trace {trace_id[:12]}",
        f'{header}<main><section class="wide waterfall">{body}</section></main>',
        live=False,
    )
