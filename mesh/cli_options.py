"""Whether a `meshctl` option shared by every command was given or is its default.

`--run-dir` and `--topology` have defaults (`.run`, `./mesh.toml`), and some commands
fall back when the default names nothing (`meshctl traffic` to the running mesh, `meshctl
policy` to the shop's contracts). A path the user typed must not fall back: until
7 Dec 2026 a typo'd `--run-dir` made `traffic set` change another live mesh, and
`--topology typo.toml policy` printed the shop's policy. The default is a `Default`, a
`str` that argparse hands back as it is (it converts only with a `type`), so a command
can tell it from the same text typed. Limits: a value set on the namespace by other
code (a test's `argparse.Namespace(run_dir=".run")`) counts as given.
"""

from __future__ import annotations


class Default(str):
    """An option's default value (equal to the same text typed, told apart by `given`)."""

    __slots__ = ()


def given(value: object) -> bool:
    """Whether `value` came from the command line rather than the option's default."""
    return not isinstance(value, Default)
