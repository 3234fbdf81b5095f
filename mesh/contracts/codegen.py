"""Regenerate Python stubs and the descriptor set from `protos/`.

One function, `generate`, writes everything protoc produces into a directory;
`make protos` points it at the repository and the contract tests point it at a
temp dir and compare byte for byte. Output is deterministic: files are
generated in sorted order and the package `__init__.py` files are empty.

Two owners, two output roots. protoc's Python output path follows the proto's
path, so the shop's contracts (`protos/shop/...`) go to `generated/` (their own
distribution, stubs + gRPC + `.pyi`), and the mesh's own contracts
(`protos/mesh/...`: method options, the event envelope) are generated into the
repository root, i.e. into the `mesh` package itself (`mesh/api/v1/options_pb2.py`),
so the runtime owns them and never imports an application's stubs. Mesh protos
declare no services: they get `_pb2.py` + `.pyi` only, and the hand-written
`__init__.py` files of `mesh/` are left alone.

Every function takes an optional `proto_root` (default: `protos/`), so the
contract tests can build descriptors from an edited copy of the contracts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
GENERATED = ROOT / "generated"
DESCRIPTOR_SET = ROOT / "envoy" / "descriptors.binpb"
# Contracts under protos/mesh/ belong to the mesh and are generated into ROOT.
MESH_PROTO_DIR = "mesh"
MESH_OUT = ROOT


# The edge's descriptor set also carries the google.rpc error details that
# services attach to statuses: without them Envoy's transcoder cannot print a
# status with details as JSON, and grpcurl (via reflection) cannot decode them.
ERROR_DETAIL_FILES = ("google/rpc/error_details.proto",)


class CodegenError(RuntimeError):
    """protoc rejected the contracts; the message is protoc's own."""


def include_paths(proto_root: Path = PROTO_ROOT) -> list[str]:
    """Where protoc finds imports: our protos, well-known types, google/api."""
    import google.api  # googleapis-common-protos ships annotations.proto

    # grpcio-tools ships no type information (no stubs, no py.typed).
    import grpc_tools  # type: ignore[import-untyped]

    wkt = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(google.api.__path__[0]).parent.parent
    return [str(proto_root), str(wkt), str(googleapis)]


def proto_files(proto_root: Path = PROTO_ROOT) -> list[str]:
    """Every contract file, relative to the proto root, sorted."""
    return sorted(
        str(p.relative_to(proto_root))
        for p in proto_root.rglob("*.proto")
        if "baseline" not in p.relative_to(proto_root).parts
    )


def is_mesh_proto(name: str) -> bool:
    """Whether a contract file (relative to the proto root) is the mesh's own."""
    return Path(name).parts[0] == MESH_PROTO_DIR


def run_protoc(args: Sequence[str], *, proto_root: Path = PROTO_ROOT) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    argv = ["protoc", *(f"-I{p}" for p in include_paths(proto_root)), *args]
    # protoc writes its diagnostics to stderr itself; the code is all we get.
    if protoc.main(argv) != 0:
        raise CodegenError(f"protoc failed: {' '.join(argv)}")


def _plugin(name: str) -> str:
    exe = Path(sys.executable).parent / f"protoc-gen-{name}"
    found = exe if exe.exists() else shutil.which(f"protoc-gen-{name}")
    if not found:
        raise CodegenError(f"protoc-gen-{name} not found: pip install mypy-protobuf")
    return f"--plugin=protoc-gen-{name}={found}"


def write_descriptor_set(
    path: Path,
    files: Sequence[str] | None = None,
    *,
    source_info: bool = False,
    proto_root: Path = PROTO_ROOT,
) -> None:
    """Write a FileDescriptorSet of `files` (default: all) and their imports."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = ["--include_source_info"] if source_info else []
    run_protoc(
        [
            f"--descriptor_set_out={path}",
            "--include_imports",
            *extra,
            *(files or proto_files(proto_root)),
        ],
        proto_root=proto_root,
    )


def build_descriptor_set(
    proto_root: Path = PROTO_ROOT, *, source_info: bool = False
) -> descriptor_pb2.FileDescriptorSet:
    """Compile every contract under proto_root (and its imports) into memory."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "descriptors.binpb"
        write_descriptor_set(path, source_info=source_info, proto_root=proto_root)
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(path.read_bytes())
    return fds


def generate(
    out_dir: Path,
    descriptor_set: Path,
    *,
    mesh_out: Path | None = None,
    proto_root: Path = PROTO_ROOT,
) -> None:
    """Generate `*_pb2.py`, `*_pb2_grpc.py`, their `.pyi` and the descriptor set.

    Application contracts go to `out_dir`; the mesh's own contracts to `mesh_out`
    (the repository root in `make protos`), or nowhere when it is None. The
    descriptor set holds both.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    every = proto_files(proto_root)
    files = [f for f in every if not is_mesh_proto(f)]
    mesh_files = [f for f in every if is_mesh_proto(f)]
    if mesh_out is not None and mesh_files:
        mesh_out.mkdir(parents=True, exist_ok=True)
        run_protoc(
            [
                _plugin("mypy"),
                f"--python_out={mesh_out}",
                f"--mypy_out={mesh_out}",
                "--mypy_opt=quiet",
                *mesh_files,
            ],
            proto_root=proto_root,
        )
    run_protoc(
        [
            _plugin("mypy"),
            _plugin("mypy_grpc"),
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--mypy_out={out_dir}",
            f"--mypy_grpc_out={out_dir}",
            "--mypy_opt=quiet",
            "--mypy_grpc_opt=quiet",
            *files,
        ],
        proto_root=proto_root,
    )
    for pkg in sorted({p.parent for p in out_dir.rglob("*_pb2.py")}):
        while pkg != out_dir:
            (pkg / "__init__.py").touch()
            pkg = pkg.parent
    (out_dir / "shop" / "py.typed").touch()
    write_descriptor_set(descriptor_set, [*every, *ERROR_DETAIL_FILES], proto_root=proto_root)


def generated_tree(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every generated file under root."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def mesh_generated_tree(root: Path) -> dict[str, bytes]:
    """Relative path -> content of the mesh's generated modules (`mesh/**/*_pb2.py[i]`)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / MESH_PROTO_DIR).rglob("*_pb2.py*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def regenerate_in_place() -> None:
    """Regenerate into a temp dir, then replace generated/ and the mesh's `_pb2` modules
    (no stale files left)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_out = Path(tmp) / "generated"
        tmp_mesh = Path(tmp) / "mesh-root"
        tmp_desc = Path(tmp) / "descriptors.binpb"
        generate(tmp_out, tmp_desc, mesh_out=tmp_mesh)
        shutil.rmtree(GENERATED, ignore_errors=True)
        shutil.copytree(tmp_out, GENERATED, ignore=shutil.ignore_patterns("__pycache__"))
        fresh = mesh_generated_tree(tmp_mesh)
        for stale in set(mesh_generated_tree(MESH_OUT)) - set(fresh):
            (MESH_OUT / stale).unlink()
        for rel, data in fresh.items():
            target = MESH_OUT / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.read_bytes() != data:
                target.write_bytes(data)
        DESCRIPTOR_SET.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_desc, DESCRIPTOR_SET)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)
    regenerate_in_place()
    print(f"generated {len(proto_files())} protos into {GENERATED.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
