"""Spans in one SQLite file, bounded by count and age, and the queries that read them.

Why SQLite: the sink (a writer process) and its readers (`meshctl traces`, the
dashboard in `meshctl up`) are separate processes on one machine; a WAL-mode
file lets them read while it writes, and survives the sink's restart.

Two tables: `spans` (one row per span) and `traces` (one row per trace, kept
up to date on every insert: first start, last end, span and error counts, and
the root span's name and service), so listing recent traces never scans the
spans. A trace's root is its span without a parent; until that one arrives
(spans come in batches from several processes, in any order) the earliest
span seen stands in.

Limits: at most `max_spans` spans and nothing older than `max_age_s`, enforced
by whole traces (oldest first) at most once per `prune_every_s` on insert, so
the file can exceed `max_spans` by one pruning interval's worth. Attribute
values are stored as JSON (OTLP arrays and key-value lists become JSON
arrays/objects; bytes become hex). One writer only: the sink.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DB_NAME = "traces.db"
DEFAULT_MAX_SPANS = 100_000
DEFAULT_MAX_AGE_S = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
  trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT NOT NULL,
  service TEXT NOT NULL, name TEXT NOT NULL, kind INTEGER NOT NULL,
  start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
  error INTEGER NOT NULL, status TEXT NOT NULL, attributes TEXT NOT NULL,
  PRIMARY KEY (trace_id, span_id)
);
CREATE TABLE IF NOT EXISTS traces (
  trace_id TEXT PRIMARY KEY, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
  spans INTEGER NOT NULL, errors INTEGER NOT NULL,
  root_name TEXT NOT NULL, root_service TEXT NOT NULL,
  root_start_ns INTEGER NOT NULL, has_root INTEGER NOT NULL, seen REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE INDEX IF NOT EXISTS traces_by_seen ON traces (seen);
"""

# One encoder for every span's attributes (json.dumps builds one per call).
_to_json = json.JSONEncoder(separators=(",", ":"), default=str).encode

# A candidate root replaces the stored one when it is a real root and the stored one is
# not, or when neither is and it started earlier.
_UPSERT_TRACE = """
INSERT INTO traces VALUES (:trace_id, :start_ns, :end_ns, :spans, :errors,
  :root_name, :root_service, :root_start_ns, :has_root, :seen)
ON CONFLICT (trace_id) DO UPDATE SET
  start_ns = min(start_ns, excluded.start_ns),
  end_ns = max(end_ns, excluded.end_ns),
  spans = spans + excluded.spans,
  errors = errors + excluded.errors,
  root_name = CASE WHEN {better} THEN excluded.root_name ELSE root_name END,
  root_service = CASE WHEN {better} THEN excluded.root_service ELSE root_service END,
  root_start_ns = CASE WHEN {better} THEN excluded.root_start_ns ELSE root_start_ns END,
  has_root = max(has_root, excluded.has_root),
  seen = excluded.seen
""".format(
    better="(excluded.has_root > has_root"
    " OR (excluded.has_root = has_root AND excluded.root_start_ns < root_start_ns))"
)


@dataclass(frozen=True, slots=True)
class SpanRow:
    """One span as stored; ids are lowercase hex, times Unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    service: str
    name: str
    kind: int  # OTLP SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    start_ns: int
    end_ns: int
    error: bool
    status: str  # the status message of an error span
    attributes: dict[str, Any]

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """One trace in the recent list."""

    trace_id: str
    root: str  # the root span's name
    service: str  # the root span's service
    start_ns: int
    duration_ms: float
    spans: int
    errors: int


def route_name(row: SpanRow) -> str:
    """What a trace list shows for its root. For the edge's server span (Envoy names it
    "ingress"): the gRPC path of a gRPC call; `REST path -> Service/Method` of a
    transcoded REST call (Envoy reports the method after transcoding, always POST, so
    none is shown); `METHOD path` when no gRPC method was reached. Else the span's name.
    """
    method, url = row.attributes.get("http.method"), row.attributes.get("http.url")
    if row.kind != 2 or not isinstance(method, str) or not isinstance(url, str):
        return row.name
    path = urlsplit(url).path or url
    grpc_path = row.attributes.get("grpc.path")
    if not isinstance(grpc_path, str) or not grpc_path:
        return f"{method} {path}"
    if grpc_path == path:
        return path
    service, _, rpc = grpc_path.strip("/").partition("/")
    return f"{path} -> {service.rsplit('.', 1)[-1]}/{rpc}"


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the store at `path` (the writer creates it; readers open it as is)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
    return conn


class SpanWriter:
    """The sink's side: insert batches of spans, prune to the limits."""

    def __init__(
        self,
        path: Path,
        *,
        max_spans: int = DEFAULT_MAX_SPANS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        prune_every_s: float = 5.0,
    ) -> None:
        self.path = path
        self.max_spans = max_spans
        self.max_age_s = max_age_s
        self.prune_every_s = prune_every_s
        self._conn = connect(path)
        self._pruned_at = 0.0

    def add(self, rows: Sequence[SpanRow]) -> None:
        if not rows:
            return
        now = time.time()
        per_trace: dict[str, dict[str, Any]] = {}
        for r in rows:
            t = per_trace.get(r.trace_id)
            root = int(not r.parent_id)
            if t is None:
                per_trace[r.trace_id] = {
                    "trace_id": r.trace_id,
                    "start_ns": r.start_ns,
                    "end_ns": r.end_ns,
                    "spans": 1,
                    "errors": int(r.error),
                    "seen": now,
                    "root_name": route_name(r),
                    "root_service": r.service,
                    "root_start_ns": r.start_ns,
                    "has_root": root,
                }
                continue
            t["start_ns"] = min(t["start_ns"], r.start_ns)
            t["end_ns"] = max(t["end_ns"], r.end_ns)
            t["spans"] += 1
            t["errors"] += int(r.error)
            # The root candidate's name is worked out only when it wins.
            if root > t["has_root"] or (root == t["has_root"] and r.start_ns < t["root_start_ns"]):
                t["root_name"] = route_name(r)
                t["root_service"] = r.service
                t["root_start_ns"] = r.start_ns
                t["has_root"] = root
        with self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.trace_id, r.span_id, r.parent_id, r.service, r.name, r.kind,
                        r.start_ns, r.end_ns, int(r.error), r.status,
                        _to_json(r.attributes),
                    )
                    for r in rows
                ],
            )  # fmt: skip
            self._conn.executemany(_UPSERT_TRACE, list(per_trace.values()))
        if now - self._pruned_at >= self.prune_every_s:
            self.prune(now)

    def prune(self, now: float | None = None) -> int:
        """Drop whole traces older than max_age_s, then the oldest until max_spans fit;
        returns how many traces were dropped."""
        now = time.time() if now is None else now
        self._pruned_at = now
        doomed = [
            tid
            for (tid,) in self._conn.execute(
                "SELECT trace_id FROM traces WHERE seen < ?", (now - self.max_age_s,)
            )
        ]
        (total,) = self._conn.execute("SELECT count(*) FROM spans").fetchone()
        total -= sum(
            n
            for (n,) in self._conn.execute(
                "SELECT spans FROM traces WHERE seen < ?", (now - self.max_age_s,)
            )
        )
        if total > self.max_spans:
            excess = total - self.max_spans
            for tid, n in self._conn.execute(
                "SELECT trace_id, spans FROM traces WHERE seen >= ? ORDER BY start_ns",
                (now - self.max_age_s,),
            ):
                if excess <= 0:
                    break
                doomed.append(tid)
                excess -= n
        with self._conn:
            for chunk in _chunks(doomed, 500):
                marks = ",".join("?" * len(chunk))
                self._conn.execute(f"DELETE FROM spans WHERE trace_id IN ({marks})", chunk)
                self._conn.execute(f"DELETE FROM traces WHERE trace_id IN ({marks})", chunk)
        return len(doomed)

    def close(self) -> None:
        self._conn.close()


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def recent_traces(
    conn: sqlite3.Connection, limit: int = 50, *, errors_only: bool = False
) -> list[TraceSummary]:
    """The most recent traces (by start), newest first."""
    where = "WHERE errors > 0" if errors_only else ""
    rows = conn.execute(
        "SELECT trace_id, root_name, root_service, start_ns, end_ns, spans, errors"
        f" FROM traces {where} ORDER BY start_ns DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        TraceSummary(tid, name, svc, start, max(0, end - start) / 1e6, n, err)
        for tid, name, svc, start, end, n, err in rows
    ]


def find_trace_id(conn: sqlite3.Connection, prefix: str) -> list[str]:
    """Trace ids starting with `prefix` (lowercase hex), at most 10."""
    prefix = prefix.strip().lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        return []
    return [
        tid
        for (tid,) in conn.execute(
            "SELECT trace_id FROM traces WHERE trace_id >= ? AND trace_id < ? LIMIT 10",
            (prefix, prefix + "g"),
        )
    ]


def trace_spans(conn: sqlite3.Connection, trace_id: str) -> list[SpanRow]:
    """Every stored span of one trace, by start time."""
    rows = conn.execute(
        "SELECT trace_id, span_id, parent_id, service, name, kind, start_ns, end_ns, error,"
        " status, attributes FROM spans WHERE trace_id = ? ORDER BY start_ns, span_id",
        (trace_id,),
    ).fetchall()
    return [
        SpanRow(t, s, p, svc, n, k, st, en, bool(e), status, json.loads(attrs))
        for t, s, p, svc, n, k, st, en, e, status, attrs in rows
    ]


@dataclass(frozen=True, slots=True)
class SpanNode:
    """A span with its depth in the tree and its offset from the trace's start."""

    span: SpanRow
    depth: int
    offset_ms: float


def span_tree(spans: Sequence[SpanRow]) -> list[SpanNode]:
    """Spans in tree order (each parent before its children, siblings by start).

    A span whose parent was not stored (sampled out, pruned, still in a batch)
    is shown as a root, so nothing received is hidden.
    """
    if not spans:
        return []
    ids = {s.span_id for s in spans}
    children: dict[str, list[SpanRow]] = {}
    roots: list[SpanRow] = []
    for s in spans:
        if s.parent_id and s.parent_id in ids and s.parent_id != s.span_id:
            children.setdefault(s.parent_id, []).append(s)
        else:
            roots.append(s)
    start = min(s.start_ns for s in spans)
    out: list[SpanNode] = []
    stack = [(r, 0) for r in sorted(roots, key=lambda s: s.start_ns, reverse=True)]
    seen: set[str] = set()
    while stack:
        span, depth = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        out.append(SpanNode(span, depth, (span.start_ns - start) / 1e6))
        kids = sorted(children.get(span.span_id, ()), key=lambda s: s.start_ns, reverse=True)
        stack.extend((k, depth + 1) for k in kids)
    return out
