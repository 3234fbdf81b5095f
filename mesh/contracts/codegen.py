"""Regenerate Python stubs and the descriptor set from `protos/`.

One function, `generate`, writes everything protoc produces into a directory;
`make protos` points it at the repository and the contract tests point it at a
temp dir and compare byte for byte. Output is deterministic: files are
generated in sorted order and the package `__init__.py` files are empty.

Two owners, two output roots. protoc's Python output path follows the proto's
path, so the shop's contracts (`protos/shop/...`) go to `generated/` (their own
distribution, stubs + gRPC + `.pyi`), and the mesh's own contracts
(`protos/mesh/...`: method options, the event envelope) are generated into the
repository root, i.e. into the `mesh` package itself (`meshproto/api/v1/options_pb2.py`),
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

from mesh.cli_args import path_arg

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
GENERATED = ROOT / "generated"
DESCRIPTOR_SET = ROOT / "envoy" / "descriptors.binpb"
# Every contract is generated into generated/: the shop's (`shop`) and the mesh's own
# (`meshproto`: its options and event envelope). They ship together as the
# generated distribution, because the shop's stubs import the mesh's options.
TYPED_PACKAGES = ("shop", "meshproto")
MESH_PROTOS = "meshproto"  # the mesh's own contracts (options, envelope): shipped as sources too
# The file that tells a proto root holding the mesh's own contracts from one without.
_MESH_OPTIONS = Path(MESH_PROTOS, "api", "v1", "options.proto")


# The edge's descriptor set also carries the google.rpc error details that
# services attach to statuses: without them Envoy's transcoder cannot print a
# status with details as JSON, and grpcurl (via reflection) cannot decode them.
ERROR_DETAIL_FILES = ("google/rpc/error_details.proto",)

# Hand-written files in generated/ (its packaging as the clients distribution):
# regeneration keeps them, and they are not part of protoc's output.
HANDWRITTEN = ("pyproject.toml",)
PACKAGED_DESCRIPTORS = "descriptors.binpb"
# What building or installing generated/ leaves behind (never protoc's output).
_BUILD_LEFTOVERS = ("__pycache__", "build", "dist")


class CodegenError(RuntimeError):
    """protoc rejected the contracts; the message is protoc's own."""


def include_paths(proto_root: Path = PROTO_ROOT, *more: Path) -> list[str]:
    """Where protoc finds imports: our protos (then `more` roots), well-known types,
    google/api."""
    import google.api  # googleapis-common-protos ships annotations.proto

    # grpcio-tools ships no type information (no stubs, no py.typed).
    import grpc_tools  # type: ignore[import-untyped]

    wkt = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(google.api.__path__[0]).parent.parent
    return [str(proto_root), *map(str, more), str(wkt), str(googleapis)]


def proto_files(proto_root: Path = PROTO_ROOT) -> list[str]:
    """Every contract file, relative to the proto root, sorted."""
    return sorted(
        str(p.relative_to(proto_root))
        for p in proto_root.rglob("*.proto")
        if "baseline" not in p.relative_to(proto_root).parts
    )


def run_protoc(
    args: Sequence[str], *, proto_root: Path = PROTO_ROOT, more: Sequence[Path] = ()
) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    argv = ["protoc", *(f"-I{p}" for p in include_paths(proto_root, *more)), *args]
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
    more: Sequence[Path] = (),
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
        more=more,
    )


def build_descriptor_set(
    proto_root: Path = PROTO_ROOT, *, source_info: bool = False
) -> descriptor_pb2.FileDescriptorSet:
    """Compile every contract under proto_root (and its imports) into memory. A tree
    without the mesh's own contracts (another project's) imports them from the installed
    `meshproto` package, as `build_project` does."""
    own = (proto_root / _MESH_OPTIONS).is_file()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "descriptors.binpb"
        write_descriptor_set(
            path,
            source_info=source_info,
            proto_root=proto_root,
            more=() if own else [mesh_proto_root()],
        )
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(path.read_bytes())
    return fds


def generate(
    out_dir: Path,
    descriptor_set: Path,
    *,
    proto_root: Path = PROTO_ROOT,
) -> None:
    """Generate `*_pb2.py`, `*_pb2_grpc.py`, their `.pyi` and the descriptor set.

    Every contract goes to `out_dir` (the shop's and the mesh's own); the
    descriptor set holds them all.
    """
    every = proto_files(proto_root)
    _write_stubs(out_dir, every, proto_root=proto_root)
    for typed in TYPED_PACKAGES:
        if (out_dir / typed).is_dir():
            (out_dir / typed / "py.typed").touch()
    write_descriptor_set(descriptor_set, [*every, *ERROR_DETAIL_FILES], proto_root=proto_root)
    # The same set as package data of the clients distribution: an installed edge
    # companion finds it through the package (`meshctl edge serve --descriptors
    # shop:descriptors.binpb`), not through a checkout's envoy/ directory.
    (out_dir / "shop" / PACKAGED_DESCRIPTORS).write_bytes(descriptor_set.read_bytes())
    # The mesh's own contracts as sources beside their stubs: another project's protos
    # import them (`meshctl contracts build`), from a checkout or an installed wheel.
    for name in every:
        if Path(name).parts[0] == MESH_PROTOS:
            (out_dir / name).write_bytes((proto_root / name).read_bytes())


def _write_stubs(
    out_dir: Path, files: Sequence[str], *, proto_root: Path, more: Sequence[Path] = ()
) -> None:
    """`*_pb2.py`, `*_pb2_grpc.py` and their `.pyi` for `files`, with the (empty)
    `__init__.py` of every package on the way."""
    out_dir.mkdir(parents=True, exist_ok=True)
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
        more=more,
    )
    for pkg in sorted({p.parent for p in out_dir.rglob("*_pb2.py")}):
        while pkg != out_dir:
            (pkg / "__init__.py").touch()
            pkg = pkg.parent


def build_project(protos: Path, out_dir: Path) -> Path:
    """Another project's contracts: stubs for every `.proto` under `protos` into
    `out_dir`, and the descriptor set its edge serves (`out_dir/descriptors.binpb`, named
    by mesh.toml's `[edge] descriptors`), which is returned.

    The project's files may import the mesh's options (`meshproto/api/v1/options.proto`:
    `internal`, `callers`, `auth`...) and google/api's HTTP annotations: they resolve
    from the installed `meshproto` package (the clients distribution ships its sources,
    `generate`) and the installed googleapis protos, so no checkout is needed. Their
    stubs are not written again (that distribution has them), and the set carries them
    and the error details, as the shop's does (`ERROR_DETAIL_FILES`).
    """
    files = project_proto_files(protos)
    mesh = [mesh_proto_root()]
    _write_stubs(out_dir, files, proto_root=protos, more=mesh)
    descriptor_set = out_dir / PACKAGED_DESCRIPTORS
    write_descriptor_set(
        descriptor_set, [*files, *ERROR_DETAIL_FILES], proto_root=protos, more=mesh
    )
    return descriptor_set


def project_proto_files(protos: Path) -> list[str]:
    """The `.proto` files under a root the user named, refused (naming it) when it does
    not exist, is not a directory or holds none: `contracts build` said "no .proto files
    under it" of a missing root, `contracts.lint` a bare "protoc failed"."""
    if not protos.is_dir():
        raise CodegenError(
            f"{protos}: {'not a directory' if protos.exists() else 'does not exist'}"
        )
    files = proto_files(protos)
    if not files:
        raise CodegenError(f"{protos}: no .proto files under it")
    return files


def mesh_proto_root() -> Path:
    """The directory the installed `meshproto` package's `.proto` sources are imported
    from (`meshproto/api/v1/options.proto` under it): generated/ in a checkout, the
    site-packages of an installed clients wheel."""
    import meshproto

    root = Path(meshproto.__path__[0]).parent
    if not (root / _MESH_OPTIONS).is_file():
        raise CodegenError(f"{root}: the installed meshproto package ships no .proto sources")
    return root


def generated_tree(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every generated file under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or str(rel) in HANDWRITTEN:
            continue
        if any(part in _BUILD_LEFTOVERS or part.endswith(".egg-info") for part in rel.parts):
            continue
        out[str(rel)] = p.read_bytes()
    return out


def regenerate_in_place() -> None:
    """Regenerate into a temp dir, then replace generated/ (no stale files left)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_out = Path(tmp) / "generated"
        tmp_desc = Path(tmp) / "descriptors.binpb"
        generate(tmp_out, tmp_desc)
        for name in HANDWRITTEN:
            if (GENERATED / name).exists():
                shutil.copyfile(GENERATED / name, tmp_out / name)
        shutil.rmtree(GENERATED, ignore_errors=True)
        shutil.copytree(tmp_out, GENERATED, ignore=shutil.ignore_patterns("__pycache__"))
        DESCRIPTOR_SET.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_desc, DESCRIPTOR_SET)


def cmd_build(args: argparse.Namespace) -> int:
    try:
        written = build_project(Path(args.protos), Path(args.out))
    except CodegenError as exc:  # protoc has printed its diagnostics
        print(f"meshctl contracts build: {exc}", file=sys.stderr)
        return 1
    print(f"stubs in {args.out}/, the edge's descriptor set in {written}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `contracts build` to meshctl's commands: a project's own contracts."""
    contracts = subparsers.add_parser("contracts", help="a project's own contracts")
    sub = contracts.add_subparsers(dest="contracts_command", required=True, metavar="<command>")
    build = sub.add_parser("build", help="stubs and the edge's descriptor set from .proto files")
    build.add_argument(
        "--protos",
        type=path_arg,
        default=Path("protos"),
        help="the .proto files' root (default protos)",
    )
    build.add_argument(
        "--out",
        default=".",
        help="where stubs and descriptors.binpb go (default: here, importable by `python -m`)",
    )
    build.set_defaults(fn=cmd_build)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args(argv)
    regenerate_in_place()
    print(f"generated {len(proto_files())} protos into {GENERATED.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
