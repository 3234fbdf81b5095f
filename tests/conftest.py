"""Fixtures shared by every test layer live in tests/support/; this file only wires them in."""

from __future__ import annotations

import pathlib
import sys

# generated/ holds the `shop` package; importable without installing the project too.
_GENERATED = pathlib.Path(__file__).resolve().parents[1] / "generated"
if str(_GENERATED) not in sys.path:
    sys.path.insert(0, str(_GENERATED))
