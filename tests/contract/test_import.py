"""The generated clients import as documented and carry type stubs."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from mesh.contracts import codegen

MODULES = sorted(
    ".".join(p.relative_to(codegen.GENERATED).with_suffix("").parts)
    for package in codegen.TYPED_PACKAGES  # not a wheel build's build/
    for p in (codegen.GENERATED / package).rglob("*_pb2*.py")
)


def test_documented_import_works_in_a_fresh_interpreter(tmp_path):
    # From an unrelated directory: the installed project, not the source tree's cwd.
    code = (
        "from shop.orders.v2 import orders_pb2, orders_pb2_grpc\n"
        "assert orders_pb2_grpc.OrderServiceStub\n"
        "print(orders_pb2.Order.DESCRIPTOR.full_name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "shop.orders.v2.Order"


def test_every_proto_has_its_modules():
    expected = set()
    for proto in codegen.proto_files():
        stem = proto.removesuffix(".proto").replace("/", ".")
        expected |= {f"{stem}_pb2", f"{stem}_pb2_grpc"}
    assert set(MODULES) == expected


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_and_has_stub(module):
    importlib.import_module(module)
    path = codegen.GENERATED.joinpath(*module.split("."))
    assert path.with_suffix(".pyi").is_file(), f"{module} has no .pyi: run `make protos`"


def test_package_is_typed():
    assert (codegen.GENERATED / "shop" / "py.typed").is_file()
