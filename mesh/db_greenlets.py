"""SQLAlchemy's asyncio calls on reused greenlets: the one private API of SQLAlchemy the
mesh touches, fenced here with SQLAlchemy's own code as the fallback.

Why: every awaited SQLAlchemy asyncio call (`AsyncSession.execute`, `commit`, `close`,
`AsyncConnection.execute`, a result's `fetch*`...) runs its synchronous body in a new
greenlet (`sqlalchemy.util.concurrency.greenlet_spawn`), and on CPython 3.11 a new
greenlet's first Python frame gets a fresh frame-stack chunk from `mmap`, given back
with `munmap` when the greenlet ends (strace: one pair per greenlet). Measured on the
2-core box: a new greenlet per call 17.7 µs of CPU, a reused one 1.4 µs;
SQLAlchemy's `greenlet_spawn` of a trivial function 24.5 µs. A write transaction makes
three or more such calls, a read session two, an order about sixty across the shop.

What: `greenlet_spawn` below does what SQLAlchemy's does (same arguments, results,
errors, `AwaitRequired`, the caller's context variables seen inside, an awaited error
thrown in where the synchronous code awaited) on a worker greenlet taken from a small
per-thread pool: a worker that finished its function waits for the next one instead of
ending, so it keeps its frame-stack chunk. `install()` puts it in the three SQLAlchemy
modules that call `greenlet_spawn` by name (`sqlalchemy.ext.asyncio.engine`,
`.session`, `.result`); `mesh.db.create_engine` installs it. The private parts it
relies on: those module globals, and that `sqlalchemy.util.concurrency.await_` hands
the awaitable to the greenlet's `parent` of any greenlet marked
`__sqlalchemy_greenlet_provider__` (how SQLAlchemy 2.0 and 2.1 work).

Selection: installed only if the capability check passes against the installed
SQLAlchemy (the three names are SQLAlchemy's own function, and a marked worker that
calls SQLAlchemy's `await_` hands the awaitable to its parent and gets the value back);
otherwise, with `MESH_FASTPATH=0` (the switch of `interceptors/_fastpath.py`), or after
`use_pooled_greenlets(False)`, SQLAlchemy's own runs. tests/unit/test_db_greenlets.py
runs the same cases through both and a real database through the pooled one.

Limits: process-wide once installed (every AsyncEngine of the process, the mesh's or
not); a worker is pooled again only when its function has finished, so one abandoned
mid-way (its caller's coroutine dropped) ends with it as SQLAlchemy's would; at most
`MAX_IDLE` idle workers are kept per thread (each holds its ~16 KiB frame-stack chunk).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

from greenlet import GreenletExit, getcurrent, greenlet  # type: ignore[import-untyped]
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import engine as _engine_mod
from sqlalchemy.ext.asyncio import result as _result_mod
from sqlalchemy.ext.asyncio import session as _session_mod
from sqlalchemy.util import concurrency

from interceptors import _fastpath

T = TypeVar("T")

MAX_IDLE: Final = 64
_MODULES: Final = (_engine_mod, _session_mod, _result_mod)
_ORIGINAL: Final = concurrency.greenlet_spawn


class _Worker(greenlet):  # type: ignore[misc]
    """A greenlet SQLAlchemy's `await_` accepts: it switches to our `parent` (the caller)."""

    __sqlalchemy_greenlet_provider__ = True


class _Done:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_IDLE: Final = object()


def _serve() -> None:
    """A worker's life: run each job sent in, answer _Done / _Failed, wait for the next."""
    job = getcurrent().parent.switch(_IDLE)
    while True:
        fn, args, kwargs = job
        try:
            answer: _Done | _Failed = _Done(fn(*args, **kwargs))
        except GreenletExit:  # the worker is being collected: end, as SQLAlchemy's would
            raise
        except BaseException as error:
            answer = _Failed(error)
        del fn, args, kwargs
        job = getcurrent().parent.switch(answer)


def _new_worker(parent: Any) -> _Worker:
    """A worker started and waiting for its first job, switching back to `parent`."""
    worker = _Worker(_serve, parent)
    worker.switch()  # runs to its first wait (_IDLE)
    return worker


_local = threading.local()


def _idle() -> list[_Worker]:
    try:
        pool: list[_Worker] = _local.idle
    except AttributeError:
        pool = _local.idle = []
    return pool


async def greenlet_spawn(
    fn: Callable[..., T], *args: Any, _require_await: bool = False, **kwargs: Any
) -> T:
    """SQLAlchemy's `greenlet_spawn` on a pooled worker greenlet (see the module's doc)."""
    idle = _idle()
    caller = getcurrent()
    if idle:
        worker = idle.pop()
        worker.parent = caller
    else:
        worker = _new_worker(caller)
    worker.gr_context = caller.gr_context  # the caller's context variables, as SQLAlchemy
    switched = False
    result = worker.switch((fn, args, kwargs))
    while type(result) is not _Done and type(result) is not _Failed:
        switched = True  # `result` is what the function awaits (SQLAlchemy's await_)
        try:
            value = await result
        except BaseException:
            result = worker.throw(*sys.exc_info())
        else:
            result = worker.switch(value)
    worker.gr_context = None  # hold no task's context while idle
    if len(idle) < MAX_IDLE:
        idle.append(worker)
    if isinstance(result, _Failed):
        error = result.error
        del result
        raise error
    if _require_await and not switched:
        raise exc.AwaitRequired(
            "The current operation required an async execution but none was "
            "detected. This will usually happen when using a non compatible "
            "DBAPI driver. Please ensure that an async DBAPI is used."
        )
    done: T = result.value
    return done


def _capable() -> bool:
    """SQLAlchemy calls its own `greenlet_spawn` by name in the three modules, and its
    `await_` hands an awaitable to a marked worker's parent and returns what comes back."""
    if not all(getattr(m, "greenlet_spawn", None) is _ORIGINAL for m in _MODULES):
        return False
    if not hasattr(greenlet, "gr_context"):
        return False
    marker = object()

    def body() -> Any:
        return concurrency.await_(marker)  # type: ignore[arg-type]

    try:
        worker = _new_worker(getcurrent())
        handed = worker.switch((body, (), {}))
        if handed is not marker:
            return False
        answer = worker.switch("back")
        return type(answer) is _Done and answer.value == "back"
    except Exception:  # a changed SQLAlchemy: keep its own
        return False


CAPABLE: Final = _capable()


def use_pooled_greenlets(enabled: bool) -> None:
    """Put the pooled `greenlet_spawn` in SQLAlchemy's asyncio modules (where capable), or
    SQLAlchemy's own back."""
    fn = greenlet_spawn if enabled and CAPABLE else _ORIGINAL
    for module in _MODULES:
        module.greenlet_spawn = fn  # type: ignore[attr-defined]


def pooled() -> bool:
    """Whether SQLAlchemy's asyncio calls run on pooled greenlets now."""
    return _session_mod.greenlet_spawn is greenlet_spawn  # type: ignore[attr-defined,comparison-overlap]


def install() -> None:
    """What `mesh.db.create_engine` calls: pooled unless `MESH_FASTPATH=0` at this call."""
    if _fastpath.requested() and not pooled():
        use_pooled_greenlets(True)
