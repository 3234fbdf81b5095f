"""An editable copy of protos/ for tests that break the contracts on purpose."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from google.protobuf import descriptor_pb2

from mesh.contracts import codegen


class ProtoTree:
    """A copy of the contracts under `root`; edits fail loudly if the text moved."""

    def __init__(self, root: Path) -> None:
        shutil.copytree(codegen.PROTO_ROOT, root, ignore=shutil.ignore_patterns("baseline"))
        self.root = root

    def path(self, rel: str) -> Path:
        return self.root / rel

    def edit(self, rel: str, old: str, new: str) -> None:
        """Replace `old` (which must occur exactly once) by `new` in one proto."""
        path = self.path(rel)
        text = path.read_text()
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {rel}"
        path.write_text(text.replace(old, new))

    def edit_re(self, rel: str, pattern: str, new: str) -> None:
        """Replace the single match of a (DOTALL) regex by `new`."""
        path = self.path(rel)
        text, n = re.subn(pattern, new, path.read_text(), flags=re.DOTALL)
        assert n == 1, f"{pattern!r} matched {n} times in {rel}"
        path.write_text(text)

    def write(self, rel: str, text: str) -> None:
        self.path(rel).parent.mkdir(parents=True, exist_ok=True)
        self.path(rel).write_text(text)

    def remove(self, rel: str) -> None:
        target = self.path(rel)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()

    def descriptor_set(self, *, source_info: bool = False) -> descriptor_pb2.FileDescriptorSet:
        """Compile the copy with grpc_tools.protoc."""
        return codegen.build_descriptor_set(self.root, source_info=source_info)

    def files(self) -> list[str]:
        return codegen.proto_files(self.root)
