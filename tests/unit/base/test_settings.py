"""base/settings.py: declared fields, parsing, errors naming the variable, the README table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from base.settings import (
    PORT,
    SettingsError,
    choice,
    load,
    markdown_table,
    number,
    readme_table,
    setting,
    whole,
    with_readme_table,
)


@dataclass(frozen=True, slots=True)
class Knobs:
    name: str
    delay_s: float = setting("X_DELAY_S", 1.5, number(above=True), "a pause")
    count: int = setting("X_COUNT", 3, whole(minimum=1), "how many")
    mode: str = setting("X_MODE", "a", choice(("a", "b")), "which one")
    port: int = setting("<SERVICE>_PORT", 0, PORT, "where", shown_default="the service's")
    plain: int = 9  # not a setting: never read


def test_defaults_values_and_per_service_names() -> None:
    assert load(Knobs, {}, name="n") == Knobs("n")
    env = {"X_DELAY_S": "0.25", "X_COUNT": " 4 ", "X_MODE": "b", "SHOP_API_PORT": "8080"}
    got = load(Knobs, env, for_service="shop-api", name="n")
    assert (got.delay_s, got.count, got.mode, got.port, got.plain) == (0.25, 4, "b", 8080, 9)
    assert load(Knobs, {}, defaults={"count": 7}, name="n").count == 7


@pytest.mark.parametrize(
    ("var", "raw", "rule"),
    [
        ("X_DELAY_S", "0", "a positive number"),
        ("X_DELAY_S", "inf", "a positive number"),
        ("X_DELAY_S", "soon", "a positive number"),
        ("X_COUNT", "1.5", "a whole number of at least 1"),
        ("X_MODE", "c", "one of a, b"),
        ("P_PORT", "65536", "a port number from 0 to 65535 (0: any free port)"),
    ],
)
def test_a_bad_value_names_variable_value_and_rule(var: str, raw: str, rule: str) -> None:
    with pytest.raises(SettingsError) as err:
        load(Knobs, {var: raw}, for_service="p", name="n")
    assert str(err.value) == f"{var}={raw!r} is invalid: must be {rule}"


def test_table_lists_each_setting_once() -> None:
    table = markdown_table([Knobs])
    assert table.splitlines()[2:] == [
        "| `X_DELAY_S` | `1.5` | a positive number | a pause |",
        "| `X_COUNT` | `3` | a whole number of at least 1 | how many |",
        "| `X_MODE` | `a` | one of a, b | which one |",
        "| `<SERVICE>_PORT` | the service's "
        "| a port number from 0 to 65535 (0: any free port) | where |",
    ]


def test_readme_markers_round_trip() -> None:
    text = "intro\n<!-- settings:k (generated, do not edit) -->\nold\n<!-- /settings:k -->\nafter\n"
    new = with_readme_table(text, "k", "| t |\n")
    assert readme_table(new, "k") == "| t |\n"
    assert new.startswith("intro\n") and new.endswith("<!-- /settings:k -->\nafter\n")
    assert readme_table(text, "missing") is None
