"""Record today's contracts as released: the baseline breaking changes are checked against.

`make baseline` writes one descriptor set per package, `protos/baseline/<package>.binpb`,
holding the package's files and everything they import, so each file loads
on its own into a fresh DescriptorPool (the wire-compatibility tests do).
`codegen.proto_files` skips the `baseline` directory, so it is never compiled.

The sets carry no source info: comments are documentation, free to improve
without a release, and leaving them out keeps the baseline stable.

Releasing refuses to record a breaking change over an existing baseline (that
would silently bless it); `--allow-breaking` is for the rare deliberate case.
`--check` only reports, exiting 1 on any breaking change.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

from mesh.contracts import breaking, codegen

BASELINE_DIR = codegen.PROTO_ROOT / "baseline"
SUFFIX = ".binpb"


def baseline_path(package: str, directory: Path = BASELINE_DIR) -> Path:
    return directory / f"{package}{SUFFIX}"


def package_set(
    fds: descriptor_pb2.FileDescriptorSet, package: str
) -> descriptor_pb2.FileDescriptorSet:
    """The package's files plus their transitive imports, dependencies first."""
    by_name = {f.name: f for f in fds.file}
    wanted: set[str] = set()
    todo = [f.name for f in fds.file if f.package == package]
    if not todo:
        raise KeyError(f"no file of package {package} in the descriptor set")
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        if name not in by_name:
            raise KeyError(f"{name} is imported but missing: build with --include_imports")
        wanted.add(name)
        todo.extend(by_name[name].dependency)
    # protoc emits a set with --include_imports in dependency order: keep it.
    return descriptor_pb2.FileDescriptorSet(file=[f for f in fds.file if f.name in wanted])


def release_sets(
    fds: descriptor_pb2.FileDescriptorSet, files: Iterable[str]
) -> dict[str, descriptor_pb2.FileDescriptorSet]:
    """One set per package of the contract `files` (names relative to the proto root)."""
    names = set(files)
    packages = sorted({f.package for f in fds.file if f.name in names})
    return {p: package_set(fds, p) for p in packages}


def load(directory: Path = BASELINE_DIR) -> dict[str, descriptor_pb2.FileDescriptorSet]:
    """The released packages and their recorded descriptor sets ({} if none yet)."""
    out = {}
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(path.read_bytes())
        out[path.name.removesuffix(SUFFIX)] = fds
    return out


def write(
    sets: Mapping[str, descriptor_pb2.FileDescriptorSet],
    directory: Path = BASELINE_DIR,
    *,
    prune: bool = False,
) -> list[Path]:
    """Write every set; return the files that changed. `prune` drops packages not in `sets`."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for package, fds in sorted(sets.items()):
        path = baseline_path(package, directory)
        data = fds.SerializeToString(deterministic=True)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            changed.append(path)
    if prune:
        for path in sorted(directory.glob(f"*{SUFFIX}")):
            if path.name.removesuffix(SUFFIX) not in sets:
                path.unlink()
                changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proto-root", type=Path, default=codegen.PROTO_ROOT)
    parser.add_argument("--dir", type=Path, default=None, help="default: <proto-root>/baseline")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only report breaking changes")
    mode.add_argument(
        "--allow-breaking", action="store_true", help="release even over breaking changes"
    )
    args = parser.parse_args(argv)
    directory: Path = args.dir or args.proto_root / "baseline"

    # Source info gives buf's findings their line numbers; the released sets leave it out.
    fds = codegen.build_descriptor_set(args.proto_root, source_info=True)
    released = load(directory)
    problems = breaking.check(released, fds)
    for p in problems:
        print(f"breaking: {p}")
    if args.check:
        print(f"{len(released)} released packages, {len(problems)} breaking changes")
        return 1 if problems else 0
    if problems and not args.allow_breaking:
        print(
            "refusing to release over breaking changes: put them in a new major package "
            "(shop.<name>.v<N+1>), or pass --allow-breaking if that is really intended"
        )
        return 1
    for f in fds.file:
        f.ClearField("source_code_info")
    sets = release_sets(fds, codegen.proto_files(args.proto_root))
    changed = write(sets, directory, prune=args.allow_breaking)
    print(f"released {len(sets)} packages into {directory}: {len(changed)} files changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
