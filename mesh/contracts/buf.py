"""`buf lint` and `buf breaking` on the descriptor sets codegen builds, offline.

buf (the `buf-bin` wheel's binary) takes a protoc-built FileDescriptorSet as
its input (`<file>.binpb`), so no `buf build`, no module layout and no
registry access are needed: the same protoc (grpc_tools) that generates the
stubs compiles the contracts, and buf only checks. The rules it runs are in
`buf.yaml` at the repository root (categories and the justified exceptions).

- lint: the set must carry source info (comment rules read the comments);
  only the contract files are linted, not the imported google/* ones.
- breaking: today's set against the released baseline (one set per package in
  `protos/baseline/`, merged into one image here). A package that is not
  released yet is absent from the baseline, so it is not checked.

What buf does not know (HTTP bindings, internal visibility) stays in
`mesh.contracts.lint` and `mesh.contracts.breaking`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

from mesh.contracts import codegen
from mesh.tools import buf_binary

CONFIG = codegen.ROOT / "buf.yaml"
# Imported, not ours: googleapis and the well-known types follow their own style.
_FOREIGN = ("google",)


class BufError(RuntimeError):
    """buf could not run the check (bad input or config); the message is buf's own."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule buf reports, e.g. a field renamed in a released package."""

    path: str  # shop/orders/v1/orders.proto ("" for a deleted file)
    line: int  # 0 when buf has no location (no source info)
    rule: str  # FIELD_SAME_NAME
    message: str  # 'Field "4" on message "Order" changed name from "total_cents" to ...'

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}: " if self.line and self.path else ""
        return f"{where}{self.message} [buf {self.rule}]"


def lint(
    fds: descriptor_pb2.FileDescriptorSet, files: Iterable[str], *, config: Path = CONFIG
) -> list[Finding]:
    """buf lint findings for the contract `files` of `fds` (built with source info)."""
    with tempfile.TemporaryDirectory(prefix="buf-") as tmp:
        image = _write(Path(tmp) / "current.binpb", fds)
        paths = [arg for f in sorted(files) for arg in ("--path", f)]
        return _run(["lint", str(image), "--config", str(config), *paths])


def breaking(
    baseline: Mapping[str, descriptor_pb2.FileDescriptorSet],
    current: descriptor_pb2.FileDescriptorSet,
    *,
    config: Path = CONFIG,
) -> list[Finding]:
    """buf breaking findings of `current` against the released packages in `baseline`."""
    if not baseline:
        return []
    with tempfile.TemporaryDirectory(prefix="buf-") as tmp:
        image = _write(Path(tmp) / "current.binpb", current)
        against = _write(Path(tmp) / "baseline.binpb", merge(baseline.values()))
        excluded = [arg for p in _FOREIGN for arg in ("--exclude-path", p)]
        return _run(
            ["breaking", str(image), "--against", str(against), "--config", str(config), *excluded]
        )


def merge(sets: Iterable[descriptor_pb2.FileDescriptorSet]) -> descriptor_pb2.FileDescriptorSet:
    """One set holding every file of `sets` once (the baseline sets share their imports)."""
    out = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()
    for fds in sets:
        for f in fds.file:
            if f.name not in seen:
                seen.add(f.name)
                out.file.append(f)
    return out


def _write(path: Path, fds: descriptor_pb2.FileDescriptorSet) -> Path:
    path.write_bytes(fds.SerializeToString(deterministic=True))
    return path


def _run(args: Sequence[str]) -> list[Finding]:
    # buf exits 100 when it found something, other non-zero codes when it failed.
    proc = subprocess.run(
        [buf_binary(), *args, "--error-format", "json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=codegen.ROOT,
    )
    if proc.returncode not in (0, 100):
        raise BufError(f"buf {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    findings = []
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        findings.append(
            Finding(
                path=item.get("path", ""),
                line=int(item.get("start_line", 0)),
                rule=item.get("type", ""),
                message=item.get("message", ""),
            )
        )
    if proc.returncode == 100 and not findings:
        raise BufError(f"buf {args[0]} failed without findings: {proc.stderr.strip()}")
    return findings
