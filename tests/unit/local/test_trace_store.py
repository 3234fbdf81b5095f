"""The local trace store: traces listed by their root, trees in order, bounds enforced."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from mesh.local.traces.command import format_list, format_tree
from mesh.local.traces.store import (
    SpanRow,
    SpanWriter,
    connect,
    find_trace_id,
    recent_traces,
    route_name,
    span_tree,
    trace_spans,
)

T1 = "a" * 31 + "1"
T2 = "b" * 31 + "2"


def span(trace: str, sid: str, parent: str = "", *, start: int = 0, ms: float = 1.0,
         service: str = "orders", name: str = "", error: bool = False, kind: int = 2,
         attrs: Mapping[str, object] | None = None) -> SpanRow:  # fmt: skip
    base = 1_700_000_000_000_000_000 + start * 1_000_000
    return SpanRow(
        trace, sid, parent, service, name or f"op-{sid}", kind, base, base + int(ms * 1e6),
        error, "boom" if error else "", dict(attrs or {}),
    )  # fmt: skip


def test_a_trace_is_listed_by_its_root_even_when_the_root_arrives_last(tmp_path: Path) -> None:
    w = SpanWriter(tmp_path / "t.db")
    # Children first (their processes exported earlier), the edge's root later.
    w.add([span(T1, "c1", "r1", start=2, ms=3, error=True), span(T1, "c2", "c1", start=3)])
    conn = connect(tmp_path / "t.db", readonly=True)
    [early] = recent_traces(conn)
    assert early.root == "op-c1"  # the earliest span stands in meanwhile
    http = {"http.method": "POST", "http.url": "http://127.0.0.1:8080/api/v2/orders?x=1"}
    root = span(T1, "r1", start=0, ms=10, service="edge", name="ingress", attrs=http)
    w.add([root])
    [t] = recent_traces(conn)
    assert (t.root, t.service, t.spans, t.errors) == ("POST /api/v2/orders", "edge", 3, 1)
    assert t.duration_ms == 10.0
    w.close()


def test_tree_puts_children_under_parents_and_orphans_at_the_top(tmp_path: Path) -> None:
    w = SpanWriter(tmp_path / "t.db")
    w.add([
        span(T1, "r", start=0, ms=10), span(T1, "b", "r", start=5), span(T1, "a", "r", start=1),
        span(T1, "a1", "a", start=2), span(T1, "o", "missing", start=4),
    ])  # fmt: skip
    conn = connect(tmp_path / "t.db", readonly=True)
    nodes = span_tree(trace_spans(conn, T1))
    assert [(n.span.span_id, n.depth) for n in nodes] == [
        ("r", 0), ("a", 1), ("a1", 2), ("b", 1), ("o", 0)
    ]  # fmt: skip
    assert nodes[3].offset_ms == 5.0
    text = format_tree(T1, nodes)
    assert "orders: op-a1 (server)" in text and text.index("op-a1") < text.index("op-b")
    w.close()


def test_prefix_finds_one_trace_and_rejects_non_hex(tmp_path: Path) -> None:
    w = SpanWriter(tmp_path / "t.db")
    w.add([span(T1, "x"), span(T2, "y")])
    conn = connect(tmp_path / "t.db", readonly=True)
    assert find_trace_id(conn, "AAA") == [T1]
    assert find_trace_id(conn, "a' OR 1=1 --") == []
    assert find_trace_id(conn, "") == []
    assert "op-y" in format_list(recent_traces(conn))
    w.close()


def test_count_bound_drops_oldest_whole_traces(tmp_path: Path) -> None:
    w = SpanWriter(tmp_path / "t.db", max_spans=5, prune_every_s=3600)
    for i in range(4):
        tid = f"{i:032x}"
        w.add([span(tid, f"{i}a", start=i * 10), span(tid, f"{i}b", f"{i}a", start=i * 10 + 1)])
    assert w.prune() == 2  # 8 spans, at most 5: the two oldest traces (4 spans) go
    conn = connect(tmp_path / "t.db", readonly=True)
    assert [t.trace_id for t in recent_traces(conn)] == [f"{3:032x}", f"{2:032x}"]
    assert trace_spans(conn, f"{0:032x}") == []
    w.close()


def test_age_bound_drops_traces_not_seen_for_max_age(tmp_path: Path) -> None:
    w = SpanWriter(tmp_path / "t.db", max_age_s=60, prune_every_s=3600)
    w.add([span(T1, "old")])
    w.add([span(T2, "new")])
    # Pruning as if 61 s had passed since T1 was seen but T2 had been seen just now.
    conn = connect(tmp_path / "t.db")
    conn.execute("UPDATE traces SET seen = seen - 61 WHERE trace_id = ?", (T1,))
    conn.commit()
    assert w.prune(time.time()) == 1
    assert [t.trace_id for t in recent_traces(conn)] == [T2]
    w.close()


def test_route_name_only_for_http_server_spans() -> None:
    http = {"http.method": "GET", "http.url": "http://h:1/api/v1/products/9"}
    assert route_name(span(T1, "s", attrs=http)) == "GET /api/v1/products/9"
    assert route_name(span(T1, "s", kind=3, attrs=http)) == "op-s"
    assert route_name(span(T1, "s", name="shop.X/Y")) == "shop.X/Y"
    rest = {**http, "http.method": "POST", "grpc.path": "/shop.inventory.v1.InventoryService/Get"}
    assert route_name(span(T1, "s", attrs=rest)) == "/api/v1/products/9 -> InventoryService/Get"
    native = {
        "http.method": "POST",
        "http.url": "http://h:1/shop.a.v1.A/B",
        "grpc.path": "/shop.a.v1.A/B",
    }
    assert route_name(span(T1, "s", attrs=native)) == "/shop.a.v1.A/B"
