"""Hot statements compiled once and run as driver SQL: `lean(statement)` marks a Core
statement built once (a store's prebuilt INSERT, UPDATE, DELETE, SELECT or `text()`),
and the mesh's sessions (`mesh.db_sessions.MeshSession`) run it through
`Connection.exec_driver_sql` with its parameters laid out by a plan made once per
statement, dialect and parameter names, instead of through SQLAlchemy's per-execute
work.

Why: SQLAlchemy spends more CPU per statement than the statement costs. For each
`session.execute(statement, params)` it builds the statement's cache key (a walk of the
whole construct) to find its compiled form, sets up the ORM session's execution, looks
up the transaction's connection, and builds an execution context that runs every
parameter through the compiled statement's processors (`_init_compiled`). In a py-spy
profile of an orders process under `bench orders` (6 Dec 2026, the 2-core box), the
database work took ~34 % of the process's samples, and the driver and SQLite ~4 % of
them; the same held in inventory and payments. Measured on a held SQLite file
(`SerialWriteSession`, one INSERT and one UPDATE ... RETURNING per transaction), a lean
statement cost 30-65 µs of CPU less than `session.execute` (the box drifts; see the
orders part of docs/performance-log.md for the shop's figures).

What a plan holds: the statement compiled for the dialect and the parameter names (what
SQLAlchemy compiles too, `column_keys` included, so the SQL is the same string), each
positional parameter's name, its default (a value bound in the statement, e.g.
`.where(c.status == "HELD")`) and its type's bind processor for the dialect (e.g. a
DateTime for SQLite). `exec_driver_sql` still fires the engine's cursor events
(`before_cursor_execute`), wraps driver errors (`IntegrityError`...) and returns a
buffered `CursorResult`. On the mesh's SQLite driver and SQLAlchemy's asyncpg adapter
the plan runs on the driver's cursor instead, where nothing but the statement would
happen (`mesh.db_cursor`).

The contract of a lean statement (what differs, so it is opt-in per statement): rows are
read by position or by name (`row.status`, `row._mapping["status"]`), not by Column
object; `inserted_primary_key`, `returned_defaults` and `last_inserted_params` are not
available. Everything else runs per call as SQLAlchemy compiles it, with nothing lost
but the saving: on the lean transaction's connection (`run_compiled_on`, since 6 Dec
2026's ninth session: a block whose only statement had no plan, GetProduct's read of a
DateTime on SQLite, began the ORM session for it), else through `session.execute`, and
always through `session.execute` where the session or engine asks for more (execution
options, ORM or execute listeners):

- statements SQLAlchemy would not compile to one fixed string: `literal_execute`,
  escaped parameter names, a non-positional paramstyle; an expanding `IN` list of tuples,
  several parameter sets with an expanding `IN`, or a 257th length of its lists
  (`Expanding`: an `IN` list runs lean with a plan per length of its lists, the SQL
  SQLAlchemy renders for that length, since 6 Dec 2026: the outbox relay's reads leave
  out the rows it has published but not yet marked with `NOT IN (...)`, and that
  fallback was ~10 % of a payments process's samples under `bench orders`);
- Python-side column defaults or `onupdate` (prefetched values), a parameter made by a
  callable, a required parameter missing from `params` (SQLAlchemy raises its error);
- result columns whose type converts values for the dialect (a SQLite DateTime);
- several parameter sets for RETURNING, or for an INSERT on a dialect where SQLAlchemy
  batches them into one multi-row INSERT (its "insertmanyvalues": asyncpg; not SQLite);
- a session with execution options, `do_orm_execute` listeners, or an engine with
  `before_execute`/`after_execute` listeners; a call with execution options or bind
  arguments; ORM-enabled statements are refused by `lean()` itself;
- `MESH_FASTPATH=0` when this module is imported, or `use_lean_statements(False)`
  (tests and `bench`).

A statement is known by identity: `lean()` keeps a weak reference, so a marked
statement that goes away takes its plans with it. Plans are made on first use, per
dialect (weakly) and per tuple of parameter names (the call's dict order), so a
statement called with the same names in a different order gets a second, equal plan.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from sqlalchemy import TextClause
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import TupleType

from interceptors import _fastpath
from mesh import db_cursor

S = TypeVar("S")

# An execution option every AsyncSession result gets: rows buffered before the greenlet
# returns (SQLAlchemy's `_EXECUTE_OPTIONS` for `AsyncSession.execute`).
_PREBUFFER: Final = {"prebuffer_rows": True}

# Read once: the environment is too slow to read per statement (~1 µs).
_enabled = _fastpath.requested()


def use_lean_statements(enabled: bool) -> None:
    """Run marked statements lean or through `session.execute` (tests, bench); the
    default is on unless `MESH_FASTPATH=0` when this module was imported."""
    global _enabled
    _enabled = enabled


def lean_statements() -> bool:
    """Whether marked statements run lean now."""
    return _enabled


class _Param:
    __slots__ = ("default", "name", "process", "required")

    def __init__(self, bind: BindParameter[Any], dialect: Dialect) -> None:
        self.name = bind.key
        self.required = bool(bind.required)
        self.default = None if self.required else bind.value
        self.process: Callable[[Any], Any] | None = bind.type.dialect_impl(dialect).bind_processor(
            dialect
        )


class Plan:
    """A lean statement's SQL for one dialect and set of parameter names, and how a
    call's parameters become the driver's positional ones."""

    __slots__ = ("_params", "columns", "sql")

    def __init__(self, sql: str, params: Sequence[_Param]) -> None:
        self.sql = sql
        self._params = tuple(params)
        self.columns: db_cursor.Columns | None = None  # its result's, once run on the cursor

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """The positional parameters; KeyError if a required one is missing."""
        out = []
        for p in self._params:
            value = params[p.name] if p.required else params.get(p.name, p.default)
            out.append(value if p.process is None else p.process(value))
        return tuple(out)


def _result_types_plain(statement: Any, dialect: Dialect) -> bool:
    """Whether no result column converts its values for `dialect` (driver rows are final)."""
    if isinstance(statement, TextClause):
        return True
    columns = statement.selected_columns if statement.is_select else statement.exported_columns
    for column in columns:
        if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
            return False
    return True


class _Item(_Param):
    """A positional parameter that is one element of an expanding parameter's list."""

    __slots__ = ("index",)

    def __init__(self, bind: BindParameter[Any], dialect: Dialect, index: int) -> None:
        super().__init__(bind, dialect)
        self.index = index


class _ExpandedPlan(Plan):
    """A plan for one length of each expanding parameter (`IN` lists)."""

    __slots__ = ()

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for p in self._params:
            value = params[p.name] if p.required else params.get(p.name, p.default)
            if type(p) is _Item:
                value = value[p.index]
            out.append(value if p.process is None else p.process(value))
        return tuple(out)


class Expanding:
    """The plans of a statement with expanding parameters (`IN` lists), one per length of
    each list (made at first use of that length, as SQLAlchemy renders the lists at
    execution: `SQLCompiler.construct_expanded_state`). Up to `MAX_LENGTHS` lengths are
    kept; a call with another one falls back."""

    MAX_LENGTHS = 256

    __slots__ = ("_compile", "_lists", "_plans")

    def __init__(self, compile_: Callable[[], Any], compiled: Any, names: Sequence[str]) -> None:
        # Compiled again per new length: a compiled form holds its statement, and the
        # plans must not keep a marked statement alive (`_Marked` forgets it with it).
        self._compile = compile_
        # (compiled name, required, default): an anonymous bind (a literal list) has a
        # compiled name no call passes, so its list is its default.
        self._lists = tuple(
            (n, bool(compiled.binds[n].required), compiled.binds[n].value) for n in names
        )
        self._plans: dict[tuple[int, ...], Plan | None] = {}

    def plan(self, params: Mapping[str, Any]) -> Plan | None:
        """The plan for the lengths of `params`' lists, or None (a missing or non-list
        value, too many lengths already: SQLAlchemy's path)."""
        try:
            lengths = tuple(
                len(params[n] if required else params.get(n, default))
                for n, required, default in self._lists
            )
        except (KeyError, TypeError):
            return None
        try:
            return self._plans[lengths]
        except KeyError:
            if len(self._plans) >= self.MAX_LENGTHS:
                return None
        plan = self._plans[lengths] = self._make(params, lengths)
        return plan

    def _make(self, params: Mapping[str, Any], lengths: tuple[int, ...]) -> Plan | None:
        compiled = self._compile()
        if compiled is None:  # the statement is gone
            return None
        dialect = compiled.dialect
        state = compiled.construct_expanded_state(dict(params))
        if state.positiontup is None:
            return None
        item: dict[str, tuple[str, int]] = {}
        for (key, _, _), length in zip(self._lists, lengths, strict=True):
            names = state.parameter_expansion.get(key, [])
            if len(names) != length:  # a guard: one name per element, in order, or no plan
                return None
            item.update((name, (key, i)) for i, name in enumerate(names))
        out: list[_Param] = []
        for name in state.positiontup:
            if name in item:
                key, index = item[name]
                out.append(_Item(compiled.binds[key], dialect, index))
            else:
                bind = compiled.binds[name]
                if bind.callable is not None:
                    return None
                out.append(_Param(bind, dialect))
        return _ExpandedPlan(state.statement, out)


def make_plan(
    statement: Any, dialect: Dialect, keys: Sequence[str], many: bool
) -> Plan | Expanding | None:
    """The plan of `statement` for `dialect` called with parameter names `keys` (several
    parameter sets with `many`), its plans per length of its `IN` lists (`Expanding`), or
    None where the lean path would differ (the module's list); compiled as
    `Connection.execute` compiles it."""
    column_keys = sorted(keys)
    compiled = statement.compile(dialect=dialect, column_keys=column_keys, for_executemany=many)
    if not compiled.positional or compiled.positiontup is None:
        return None
    if compiled.literal_execute_params:
        return None
    expanding = [compiled.bind_names[b] for b in compiled.post_compile_params]
    if expanding and (
        many
        or any(
            not b.expanding or isinstance(b.type, TupleType) for b in compiled.post_compile_params
        )
    ):
        return None
    if compiled.escaped_bind_names:
        return None
    if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
        return None
    returning = bool(getattr(compiled, "effective_returning", None))
    if many and (returning or (statement.is_insert and dialect.use_insertmanyvalues_wo_returning)):
        return None  # SQLAlchemy batches these into one INSERT (rowcounts differ)
    if not _result_types_plain(statement, dialect):
        return None
    if expanding:
        statement_ref, dialect_ref = weakref.ref(statement), weakref.ref(dialect)

        def compile_again() -> Any:
            stmt, dia = statement_ref(), dialect_ref()
            return (
                None
                if stmt is None or dia is None
                else stmt.compile(dialect=dia, column_keys=column_keys)
            )

        return Expanding(compile_again, compiled, expanding)
    params = []
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        if bind.callable is not None:
            return None
        params.append(_Param(bind, dialect))
    return Plan(compiled.string, params)


class _Marked:
    __slots__ = ("plans", "ref")

    def __init__(self, statement: Any) -> None:
        key, marked = id(statement), _MARKED  # bound now: at exit the global may be None
        self.ref = weakref.ref(statement, lambda _r: marked.pop(key, None))
        self.plans: weakref.WeakKeyDictionary[
            Dialect, dict[tuple[tuple[str, ...], bool], Plan | Expanding | None]
        ] = weakref.WeakKeyDictionary()


_MARKED: dict[int, _Marked] = {}


def lean(statement: S) -> S:
    """Mark a Core statement built once to run lean in the mesh's sessions (returned as
    is, so `self._insert = lean(insert(table))`). Its rows are read by position or name
    (the module's contract); TypeError for an ORM-enabled statement."""
    if not isinstance(statement, TextClause):
        if getattr(statement, "is_select", False):
            described = getattr(statement, "column_descriptions", [])
        else:
            described = [getattr(statement, "entity_description", {})]
        if any(d.get("entity") is not None for d in described):
            raise TypeError("lean() takes Core statements; this one selects ORM entities")
    marked = _MARKED.get(id(statement))
    if marked is None or marked.ref() is not statement:
        _MARKED[id(statement)] = _Marked(statement)
    return statement


def prepare(sync: Session, statement: Any, params: Any) -> tuple[Plan | None, Any] | None:
    """(plan, driver parameters) to run `statement` with `params` lean in `sync`'s
    transaction; (None, `params`) for a marked statement that has no plan for this call
    but may run compiled on the transaction's connection (`run_compiled_on`: what a
    lean transaction does with it); None to run it through `session.execute`."""
    marked = _MARKED.get(id(statement))
    if marked is None or marked.ref() is not statement or not _enabled:
        return None
    if sync.execution_options or sync.dispatch.do_orm_execute:
        return None
    engine = sync.get_bind(clause=statement)
    if not db_cursor.quiet(engine):
        dispatch = engine.dispatch
        if dispatch.before_execute or dispatch.after_execute:
            return None
    # `type() is` first: an ABC's isinstance costs ~1 µs, and params are dicts or lists.
    kind = type(params)
    if params is None:
        sets: Sequence[Mapping[str, Any]] = ({},)
    elif kind is dict or (kind is not list and isinstance(params, Mapping)):
        sets = (params,)
    elif isinstance(params, list | tuple) and params and isinstance(params[0], dict | Mapping):
        sets = params
    else:
        return None
    many = len(sets) > 1
    key = (tuple(sets[0]), many)
    dialect = engine.dialect
    by_keys = marked.plans.get(dialect)
    if by_keys is None:
        by_keys = marked.plans[dialect] = {}
    try:
        made = by_keys[key]
    except KeyError:
        made = by_keys[key] = make_plan(statement, dialect, key[0], many)
    # One parameter set for an Expanding (`make_plan` refuses many).
    plan = made.plan(sets[0]) if isinstance(made, Expanding) else made
    if plan is None:
        return None, params  # compiled, on a connection (`run_compiled_on`)
    try:
        args: Any = [plan.args(s) for s in sets] if many else plan.args(sets[0])
    except KeyError:  # a required parameter missing: SQLAlchemy raises its own error
        return None
    return plan, args


def run(sync: Session, statement: Any, plan: Plan, args: Any) -> Any:
    """In the session's greenlet (`AsyncSession.run_sync`): `plan` on the transaction's
    connection (begun here if it is the transaction's first statement)."""
    return run_on(sync.connection(bind_arguments={"clause": statement}), plan, args)


def run_on(conn: Connection, plan: Plan, args: Any) -> Any:
    """`plan` on `conn` (in a greenlet): a buffered result, as the session gives: on the
    driver's cursor where `mesh.db_cursor` may (the mesh's SQLite driver, asyncpg), else
    SQLAlchemy's `CursorResult`."""
    if db_cursor.usable(conn, args):
        result, plan.columns = db_cursor.run(conn, plan.sql, args, plan.columns)
        return result
    return conn.exec_driver_sql(plan.sql, args, execution_options=_PREBUFFER)


def run_compiled_on(conn: Connection, statement: Any, params: Any) -> Any:
    """A marked statement without a plan for this call (`prepare`'s (None, params)) on
    `conn`, as SQLAlchemy compiles and runs it: what `session.execute` does for a Core
    statement, without the ORM session around it (in a greenlet; a buffered result)."""
    return conn.execute(statement, params, execution_options=_PREBUFFER)
