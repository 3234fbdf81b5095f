"""shop-mesh runtime: settings, server bootstrap, discovery, client, events, saga.

    import mesh
    users = await mesh.connect("users", users_pb2_grpc.UserServiceStub)

`connect` without a runtime uses a default one, created from the environment
on first use (never at import) and closed by `await mesh.close_default_runtime()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import grpc

    from mesh.client.runtime import MeshRuntime

S = TypeVar("S")

__all__ = ["as_user", "close_default_runtime", "connect", "default_runtime", "instrument"]


class _Default:
    """The lazily created default runtime, tied to the event loop it was made in."""

    runtime: MeshRuntime | None = None
    loop: asyncio.AbstractEventLoop | None = None
    lock: asyncio.Lock | None = None


async def default_runtime() -> MeshRuntime:
    """The process's default runtime (settings from the environment; service name from
    MESH_SERVICE, else "mesh-client"; the PKI of the running `meshctl up` unless
    MESH_PKI_DIR names one), created on first use in this event loop."""
    from mesh.client.runtime import MeshRuntime
    from mesh.settings import Settings

    loop = asyncio.get_running_loop()
    if _Default.loop is not loop:  # first use, or a new loop: the old runtime died with its loop
        _Default.runtime, _Default.loop, _Default.lock = None, loop, asyncio.Lock()
    assert _Default.lock is not None
    async with _Default.lock:
        if _Default.runtime is None:
            env = dict(os.environ)
            if not env.get("MESH_PKI_DIR"):  # the running mesh's CA, as its registry
                from mesh.discovery.locate import locate

                recorded = locate(env).pki_dir
                if recorded is not None:
                    env["MESH_PKI_DIR"] = str(recorded)
            settings = Settings.from_env(env.get("MESH_SERVICE") or "mesh-client", env)
            _Default.runtime = await MeshRuntime.create(settings)
        return _Default.runtime


async def close_default_runtime() -> None:
    """Close the default runtime if one was created in this loop."""
    runtime = _Default.runtime
    if runtime is not None and _Default.loop is asyncio.get_running_loop():
        _Default.runtime = None
        await runtime.close()


async def connect(
    service: str,
    stub_cls: Callable[[grpc.aio.Channel], S],
    *,
    runtime: MeshRuntime | None = None,
    **options: Any,
) -> S:
    """A stub whose calls go through the mesh to `service`'s healthy instances.

    `options` are `mesh.client.connect.ClientOptions` fields (lb_policy, outlier_*,
    default_deadline_s, interceptors, ...); defaults come from the settings.
    """
    rt = runtime if runtime is not None else await default_runtime()
    return await rt.connect(service, stub_cls, **options)


@contextlib.contextmanager
def as_user(user_id: str, roles: Iterable[str] = ()) -> Iterator[None]:
    """Calls made through the mesh inside the block act for end user `user_id`.

        with mesh.as_user(user_id):                 # or roles=["admin"]
            await orders.CreateOrder(...)

    The calls carry `x-mesh-user-id` / `x-mesh-roles`, which services believe from
    the mesh's identities only: a `mesh.connect` process holds the CA (as
    `mesh-client`), so it may say who it acts for, as the edge does after checking a
    token. Methods declared USER answer UNAUTHENTICATED without an end user.
    Inside a service's handler the incoming call's end user travels on by itself.
    """
    from interceptors.end_user import EndUser, acting_as

    if not user_id:
        raise ValueError("user_id is empty")
    with acting_as(EndUser(user_id, frozenset(roles))):
        yield


def instrument(tracer_provider: Any = None, *, client: bool = True, server: bool = True) -> Any:
    """Trace plain grpc.aio channels/servers built from now on (see mesh.instrumentation).

    Returns the function that undoes it.
    """
    from mesh.instrumentation import instrument as _instrument

    return _instrument(tracer_provider, client=client, server=server)
