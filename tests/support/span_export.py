"""One OTLP span export by grpcurl, runnable by another account too: the trace sink's
attacker (`tests.support.other_account`) and its control send the same request.

grpcurl is copied into a directory every account may enter and run (the venv's copy
may sit under a private home), with the OTLP descriptors as a protoset: the sink
serves no reflection."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from mesh.tools import grpcurl_binary

EXPORT = "opentelemetry.proto.collector.trace.v1.TraceService/Export"


def protoset(file: FileDescriptor) -> descriptor_pb2.FileDescriptorSet:
    """`file` and everything it imports, dependencies first (what grpcurl reads)."""
    out = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(f: FileDescriptor) -> None:
        if f.name in seen:
            return
        seen.add(f.name)
        for dep in f.dependencies:
            add(dep)
        f.CopyToProto(out.file.add())

    add(file)
    return out


class SpanExport:
    """`argv(port, name)`: grpcurl exporting one server span called `name`."""

    def __init__(self, directory: Path) -> None:
        self.grpcurl = directory / "grpcurl"
        shutil.copy(grpcurl_binary(), self.grpcurl)
        os.chmod(self.grpcurl, 0o755)
        self.protoset = directory / "otlp.protoset"
        self.protoset.write_bytes(protoset(trace_service_pb2.DESCRIPTOR).SerializeToString())
        os.chmod(self.protoset, 0o644)

    def argv(self, port: int, name: str) -> tuple[str, ...]:
        span = {"traceId": base64.b64encode(os.urandom(16)).decode(),
                "spanId": base64.b64encode(os.urandom(8)).decode(),
                "name": name, "kind": "SPAN_KIND_SERVER",
                "startTimeUnixNano": "1700000000000000000",
                "endTimeUnixNano": "1700000000001000000"}  # fmt: skip
        body = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
        return (
            str(self.grpcurl), "-plaintext", "-protoset", str(self.protoset),
            "-d", json.dumps(body), f"127.0.0.1:{port}", EXPORT,
        )  # fmt: skip


@contextmanager
def span_export() -> Iterator[SpanExport]:
    base = Path(tempfile.mkdtemp(prefix="mesh-span-export-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        yield SpanExport(base)
    finally:
        shutil.rmtree(base)
