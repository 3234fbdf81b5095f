"""`meshctl traces`: recent traces, and one trace's tree with timings, in the terminal.

Reads the store of the local sink (`<run dir>/traces.db`) directly, read-only,
so it works while `meshctl up` runs and after it stopped (until the bounds
prune the traces).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from mesh.cli_args import int_between
from mesh.local.traces.store import (
    DB_NAME,
    SpanNode,
    TraceSummary,
    connect,
    find_trace_id,
    recent_traces,
    span_tree,
    trace_spans,
)

_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def register(sub: Any) -> None:
    """Add `traces` to meshctl's subcommands."""
    p = sub.add_parser("traces", help="recent traces, or one trace's span tree")
    p.add_argument("trace_id", nargs="?", default="", help="a trace id (or a unique prefix)")
    # From 1 (0 listed none: "no trace stored yet"; -1 all) to SQLite's largest integer
    # (a LIMIT above it raised OverflowError).
    p.add_argument("--limit", type=int_between(1, 2**63 - 1), default=20, help="traces listed (20)")
    p.add_argument("--errors", action="store_true", help="only traces with an error span")
    p.set_defaults(fn=lambda args: run(args, sys.stdout))


def format_list(traces: list[TraceSummary]) -> str:
    rows = [("trace", "start", "root", "service", "ms", "spans", "errors")]
    for t in traces:
        rows.append(
            (
                t.trace_id,
                time.strftime("%H:%M:%S", time.localtime(t.start_ns / 1e9)),
                t.root,
                t.service,
                f"{t.duration_ms:.1f}",
                str(t.spans),
                str(t.errors) if t.errors else "-",
            )
        )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_tree(trace_id: str, nodes: list[SpanNode], width: int = 30) -> str:
    """One line per span: offset, duration, a bar on the trace's time scale, the tree."""
    total = max((n.offset_ms + n.span.duration_ms for n in nodes), default=0.0) or 1.0
    lines = [f"trace {trace_id}  {total:.1f} ms  {len(nodes)} spans", ""]
    lines.append(f"{'start ms':>9} {'ms':>8}  {'':{width}}  span")
    for n in nodes:
        s = n.span
        left = round(n.offset_ms / total * width)
        size = max(1, round(s.duration_ms / total * width))
        bar = (" " * left + "█" * size)[:width].ljust(width)
        status = f"  ERROR {s.status}".rstrip() if s.error else ""
        kind = _KINDS.get(s.kind, str(s.kind))
        lines.append(
            f"{n.offset_ms:9.1f} {s.duration_ms:8.1f}  {bar}  {'  ' * n.depth}"
            f"{s.service}: {s.name} ({kind}){status}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace, out: TextIO) -> int:
    db = Path(args.run_dir).resolve() / DB_NAME
    if not db.exists():
        print(f"no traces: {db} does not exist (is `meshctl up` running here?)", file=out)
        return 1
    if not db.is_file():  # SQLite says only "disk I/O error" of a directory
        print(f"cannot open {db}: not a file", file=out)
        return 1
    try:
        conn = connect(db, readonly=True)
    except sqlite3.Error as exc:
        print(f"cannot open {db}: {exc}", file=out)
        return 1
    try:
        return _show(conn, db, args, out)
    except sqlite3.Error as exc:
        # SQLite opens lazily: an empty file (no table) or not a database fails here.
        print(f"cannot read traces from {db}: {exc} (not the trace sink's store?)", file=out)
        return 1
    finally:
        conn.close()


def _show(conn: sqlite3.Connection, db: Path, args: argparse.Namespace, out: TextIO) -> int:
    """The list of recent traces, or one trace's tree; 1 when no trace matches."""
    if not args.trace_id:
        traces = recent_traces(conn, args.limit, errors_only=args.errors)
        if not traces:
            print(f"no trace stored yet in {db}", file=out)
            return 0
        print(format_list(traces), file=out)
        return 0
    ids = find_trace_id(conn, args.trace_id)
    if len(ids) != 1:
        what = "no trace" if not ids else f"{len(ids)} traces"
        print(f"{what} matching {args.trace_id!r} in {db}", file=out)
        return 1
    print(format_tree(ids[0], span_tree(trace_spans(conn, ids[0]))), file=out)
    return 0
