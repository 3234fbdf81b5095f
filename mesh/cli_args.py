"""Argument types `meshctl`'s commands share (argparse `type=`), so a bad one is refused
as argparse refuses any: the usage line, `error: argument X: why`, exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path


def path_arg(text: str) -> Path:
    """A path the user named, never the empty string: `Path("")` is the current
    directory, so `events credentials ""` wrote its seeds there and `contracts build
    --protos ""` compiled every proto under it. Limit: says nothing of whether it exists
    (the command does, naming what it needed)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path: name one ('.' for this directory)")
    return Path(text)
