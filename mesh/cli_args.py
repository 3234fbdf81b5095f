"""Argument types `meshctl`'s commands share (argparse `type=`), so a bad one is refused
as argparse refuses any: the usage line, `error: argument X: why`, exit 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path


def path_arg(text: str) -> Path:
    """A path the user named, never the empty string: `Path("")` is the current
    directory, so `events credentials ""` wrote its seeds there and `contracts build
    --protos ""` compiled every proto under it. Limit: says nothing of whether it exists
    (the command does, naming what it needed)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path: name one ('.' for this directory)")
    return Path(text)


def int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer from `low` to `high` (None: no upper bound). `int` alone took `traces
    --limit 0` (it listed nothing, "no trace stored yet"), `--limit -1` (everything) and
    `events dlq replay -1` (NATS's "cannot unmarshal number -1 ... uint64")."""
    rule = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text}")
        return value

    return parse


def finite_at_least(low: float) -> Callable[[str], float]:
    """A finite number of at least `low`: `float` takes "nan" (every comparison with it
    is false, so no bound stopped it) and "inf"."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"expected a finite number >= {low:g}, got {text!r}")
        return value

    return parse
