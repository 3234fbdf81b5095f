"""Which methods are idempotent, from the `shop.api.v1.idempotent` method option.

The contract says it once, next to the method:

    rpc GetOrder(...) returns (...) { option (shop.api.v1.idempotent) = true; }

and the retry interceptor asks `IdempotentMethods()(path)`. Lookups go to a
descriptor pool by name (the default pool unless given one, e.g. built from a
descriptor set) and are cached per method.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
from shop.api.v1 import visibility_pb2

from interceptors._call import split_method


def _is_idempotent(method: MethodDescriptor) -> bool:
    options = method.GetOptions()
    try:
        return bool(options.Extensions[visibility_pb2.idempotent])
    except KeyError:
        # Options from a pool that did not know the extension when parsing:
        # re-read them against the generated extension.
        reparsed = descriptor_pb2.MethodOptions.FromString(options.SerializeToString())
        return bool(reparsed.Extensions[visibility_pb2.idempotent])


class IdempotentMethods:
    """`self("/pkg.Service/Method")` is True when the method is marked idempotent.

    Unknown services and methods are not idempotent (retrying them is never
    assumed safe).
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()
        self._cache: dict[str, bool] = {}

    def __call__(self, full_method: str) -> bool:
        known = self._cache.get(full_method)
        if known is None:
            known = self._cache[full_method] = self._lookup(full_method)
        return known

    def _lookup(self, full_method: str) -> bool:
        service, method = split_method(full_method)
        try:
            descriptor = self._pool.FindServiceByName(service)
        except KeyError:
            return False
        m = descriptor.methods_by_name.get(method)
        return m is not None and _is_idempotent(m)


def _loaded_files(pool: descriptor_pool.DescriptorPool) -> Iterable[FileDescriptor]:
    # The pool cannot list its files; the generated `*_pb2` modules imported
    # so far can (their stubs are imported before any call is made).
    for name, module in list(sys.modules.items()):
        if name.endswith("_pb2"):
            file = getattr(module, "DESCRIPTOR", None)
            if isinstance(file, FileDescriptor) and file.pool is pool:
                yield file


def idempotent_methods(
    pool: descriptor_pool.DescriptorPool | None = None, *, services: Iterable[str] | None = None
) -> frozenset[str]:
    """Full paths (`/pkg.Service/Method`) of the idempotent methods.

    Of `services` (full names) when given, else of every service in the
    generated modules imported so far that belong to `pool`.
    """
    pool = pool or descriptor_pool.Default()
    if services is None:
        found = [s for f in _loaded_files(pool) for s in f.services_by_name.values()]
    else:
        found = [pool.FindServiceByName(s) for s in services]
    return frozenset(
        f"/{s.full_name}/{m.name}" for s in found for m in s.methods if _is_idempotent(m)
    )
