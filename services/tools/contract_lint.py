"""The shop's contract rules, on top of the mesh's lint (`make lint` runs this module).

- shop-package: a contract under `protos/shop/` is in a `shop.<name>.v<N>`
  package whose directory it sits in (`shop/orders/v2/` -> `shop.orders.v2`).
- no-float: no `float`/`double` (nor their wrapper types) anywhere: money is
  integer minor units plus a currency (shop.common.v1.Money), and nothing
  else in the shop needs binary floating point either.

`python -m services.tools.contract_lint [--proto-root DIR]` prints every
violation and exits 1 if there is any.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from google.protobuf import descriptor_pb2

from mesh.contracts import descriptors as d
from mesh.contracts import lint

FieldProto = descriptor_pb2.FieldDescriptorProto

_SHOP_PACKAGE = re.compile(r"^shop\.[a-z][a-z0-9_]*\.v[1-9][0-9]*$")
_FLOATS = {FieldProto.TYPE_FLOAT, FieldProto.TYPE_DOUBLE}
_FLOAT_WRAPPERS = {".google.protobuf.FloatValue", ".google.protobuf.DoubleValue"}


def shop_package(f: descriptor_pb2.FileDescriptorProto) -> Iterator[lint.Violation]:
    if not f.name.startswith("shop/"):
        return
    directory = f.name.rsplit("/", 1)[0].replace("/", ".")
    if not _SHOP_PACKAGE.fullmatch(f.package) or f.package != directory:
        yield lint.Violation(
            "shop-package",
            f"package {f.package or '(none)'} in {f.name}",
            f"must be shop.<name>.v<N>, matching its directory ({directory})",
        )


def no_float(f: descriptor_pb2.FileDescriptorProto) -> Iterator[lint.Violation]:
    fields = [
        (field, f"{m.full_name} field {field.number} '{field.name}'")
        for m in d.messages(f)
        for field in m.proto.field
    ]
    fields += [
        (ext, f"extension {m.full_name}.{ext.name}")
        for m in d.messages(f)
        for ext in m.proto.extension
    ]
    fields += [(ext, f"extension {f.package}.{ext.name}") for ext in f.extension]
    for field, element in fields:
        if field.type in _FLOATS or field.type_name in _FLOAT_WRAPPERS:
            yield lint.Violation(
                "no-float",
                element,
                f"is {d.type_name(field)}: money and amounts are integers "
                "(shop.common.v1.Money: minor units + currency), never floating point",
            )


SHOP_RULES: tuple[lint.FileRule, ...] = (shop_package, no_float)


def main(argv: Sequence[str] | None = None) -> int:
    return lint.main(argv, SHOP_RULES)


if __name__ == "__main__":
    raise SystemExit(main())
