"""A directory of a test's own directly in /tmp, for paths that must stay short (a Unix
socket's, at most 107 bytes): pytest's `tmp_path` can itself be nearly that long."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def short_tmp_dir(prefix: str = "ms-") -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield base
    finally:
        shutil.rmtree(base)
