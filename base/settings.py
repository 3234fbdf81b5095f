"""Declarative settings: a frozen dataclass whose fields name their environment variable.

A setting is declared once, as a dataclass field made by `setting(...)`: the
variable's name, the field's default, the parser (which also states the rule a
value must follow) and a one-line description. From that one declaration come

- reading and parsing (`load(cls, env)`): an unset or blank variable keeps the
  default; a value is stripped of surrounding blanks;
- validation errors that name the variable (`SettingsError`:
  `MESH_GRPC_PORT='abc' is invalid: must be a port number from 0 to 65535 ...`),
  which `mesh.server.run_service` prints before exiting 2;
- the README's settings tables (`markdown_table(...)`, printed by
  `python -m mesh.settings --markdown` / `python -m services.settings_tables
  --markdown`, written between the README's markers by `make readme-settings`;
  a contract test fails when the README is stale).

The dataclass stays an ordinary frozen dataclass: code and tests construct it
directly (`Settings(service="x", registry="none")`), and the field's default
is the only literal of that default anywhere (other classes that need it read
it from a default instance, e.g. `RESILIENCE_DEFAULTS.lb_policy`, or with
`default_of(cls, name)`).

Why dataclasses and not pydantic-settings: the settings objects are frozen
slotted dataclasses passed all over the code and built directly in tests; some
variable names are per service (`<SERVICE>_DATABASE_URL`) and some defaults
depend on other variables (the registry is Consul when `CONSUL_HTTP_ADDR` is
set), which pydantic-settings supports only through custom sources and
validators; and the bottom layer stays free of third-party dependencies. What
pydantic would add (coercion of types) is here one small parser per kind of
value, each stating its rule in words for the error message and the table.

Limits: flat dataclasses only (a nested one is loaded by its own `load`);
values are strings in the environment, so lists and mappings are not settings.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
D = TypeVar("D")
S = TypeVar("S", bound=str)

_SPEC = "base.settings"


class SettingsError(ValueError):
    """A setting from the environment is malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Parser(Generic[T]):
    """Turns the variable's text into a value; `rule` says in words what is accepted.

    `convert` raises ValueError (or TypeError) on a bad value; `check` returns
    whether a converted value is allowed. The error message is always the rule.
    """

    convert: Callable[[str], T]
    rule: str
    check: Callable[[T], bool] = lambda _value: True

    def __call__(self, raw: str) -> T:
        try:
            value = self.convert(raw)
        except (TypeError, ValueError):
            raise ValueError(f"must be {self.rule}") from None
        if not self.check(value):
            raise ValueError(f"must be {self.rule}")
        return value


TEXT: Parser[str] = Parser(str, "text")
PORT: Parser[int] = Parser(
    int, "a port number from 0 to 65535 (0: any free port)", lambda v: 0 <= v <= 65535
)
RATIO: Parser[float] = Parser(float, "a number from 0 to 1", lambda v: 0.0 <= v <= 1.0)


def number(*, minimum: float = 0.0, above: bool = False) -> Parser[float]:
    """A finite number >= `minimum` (> `minimum` when `above`)."""
    if above:
        rule = "a positive number" if minimum == 0 else f"a number above {minimum:g}"
        return Parser(float, rule, lambda v: math.isfinite(v) and v > minimum)
    return Parser(
        float, f"a number of at least {minimum:g}", lambda v: math.isfinite(v) and v >= minimum
    )


def whole(*, minimum: int = 0) -> Parser[int]:
    """A whole number >= `minimum`."""
    return Parser(int, f"a whole number of at least {minimum}", lambda v: v >= minimum)


def choice(options: Iterable[S]) -> Parser[S]:
    """One of `options` (exactly as written; typed as the options, e.g. a Literal)."""
    allowed = tuple(options)

    def convert(raw: str) -> S:
        return cast(S, raw)

    return Parser(convert, f"one of {', '.join(allowed)}", lambda v: v in allowed)


@dataclass(frozen=True, slots=True)
class Spec:
    """What `setting()` stores in the field's metadata."""

    env: str
    parse: Parser[Any]
    doc: str
    # How the table shows the default when it is computed at start (None: the literal).
    shown_default: str | None = None


def setting(
    env: str,
    default: T,
    parse: Parser[T],
    doc: str,
    *,
    shown_default: str | None = None,
) -> T:
    """A dataclass field read from the variable `env` (see the module docstring).

    `env` may contain `<SERVICE>`, replaced by `load(..., for_service=...)`.
    `shown_default` describes a default that `from_env` computes (e.g. "the
    service's port"); the field's `default` is then what direct construction gets.
    """
    spec = Spec(env, parse, doc, shown_default)
    # dataclasses.field's overloads do not cover "a default of type T" generically.
    result: T = dataclasses.field(default=default, metadata={_SPEC: spec})
    return result


def specs(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Spec]]:
    """The fields of `cls` declared with `setting()`, in declaration order."""
    return [(f, f.metadata[_SPEC]) for f in dataclasses.fields(cls) if _SPEC in f.metadata]


def variable(spec: Spec, service: str = "") -> str:
    """The variable's name, `<SERVICE>` replaced by `service` in capitals (`-` as `_`)."""
    return spec.env.replace("<SERVICE>", service.upper().replace("-", "_"))


def default_of(cls: type[Any], name: str) -> Any:
    """The declared default of field `name` of dataclass `cls` (to reuse it, not repeat it)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is dataclasses.MISSING:
                raise KeyError(f"{cls.__name__}.{name} has no plain default")
            return f.default
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def read(env: Mapping[str, str], name: str, default: T, parse: Parser[T]) -> T:
    """One variable: `default` when unset or blank, else parsed (SettingsError names it)."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is invalid: {exc}") from None


def read_field(cls: type[Any], name: str, env: Mapping[str, str], *, for_service: str = "") -> Any:
    """One field of `cls` from `env` (for defaults that depend on another setting)."""
    for f, spec in specs(cls):
        if f.name == name:
            return read(env, variable(spec, for_service), f.default, spec.parse)
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def load(
    cls: type[D],
    env: Mapping[str, str] | None = None,
    *,
    for_service: str = "",
    defaults: Mapping[str, Any] | None = None,
    **values: Any,
) -> D:
    """An instance of `cls` with every `setting()` field read from `env` (os.environ).

    `for_service` fills `<SERVICE>` in variable names; `defaults` replaces field
    defaults computed at start; `values` are fields given by the caller, not read.
    """
    e = os.environ if env is None else env
    given = dict(defaults or {})
    kwargs: dict[str, Any] = dict(values)
    for f, spec in specs(cls):
        if f.name in kwargs:
            continue
        default = given.get(f.name, f.default)
        kwargs[f.name] = read(e, variable(spec, for_service), default, spec.parse)
    return cls(**kwargs)


def _shown(f: dataclasses.Field[Any], spec: Spec) -> str:
    if spec.shown_default is not None:
        return spec.shown_default
    value = f.default
    if value == "":
        return "(empty)"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def markdown_table(classes: Iterable[type[Any]]) -> str:
    """The README table of the settings of `classes`: variable, default, rule, meaning."""
    lines = ["| variable | default | accepted | meaning |", "|---|---|---|---|"]
    for cls in classes:
        for f, spec in specs(cls):
            lines.append(f"| `{spec.env}` | {_shown(f, spec)} | {spec.parse.rule} | {spec.doc} |")
    return "\n".join(lines) + "\n"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- settings:{name} (generated, do not edit) -->", f"<!-- /settings:{name} -->"


def readme_table(text: str, name: str) -> str | None:
    """The table between the README's markers of `name` (None: no markers)."""
    start, end = _markers(name)
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        return None
    return text[i + len(start) : j].strip("\n") + "\n"


def with_readme_table(text: str, name: str, table: str) -> str:
    """`text` with the table between the markers of `name` replaced (markers must exist)."""
    start, end = _markers(name)
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"README has no {start} ... {end} markers")
    return text[: i + len(start)] + "\n" + table + text[j:]


def main(argv: list[str], tables: Mapping[str, str]) -> int:
    """`--markdown` prints the tables; `--write README.md` puts them between their markers."""
    if argv == ["--markdown"]:
        for name, table in tables.items():
            print(f"{_markers(name)[0]}\n{table}{_markers(name)[1]}\n")
        return 0
    if len(argv) == 2 and argv[0] == "--write":
        with open(argv[1], encoding="utf-8") as f:
            text = f.read()
        for name, table in tables.items():
            text = with_readme_table(text, name, table)
        with open(argv[1], "w", encoding="utf-8") as f:
            f.write(text)
        return 0
    print("usage: --markdown | --write README.md", file=sys.stderr)
    return 2
