"""A directory only its owner may enter, whatever the umask.

`mkdir(mode=0o700)` alone is not enough: the mode goes through the umask, and an
existing directory keeps whatever mode it has. `narrow` says whether an existing one
is the mesh's to narrow (`meshctl up`'s own `.run/data`, `.run/edge`, the NATS
directory) or may be a directory the user chose and shares on purpose (the run
directory itself, a data directory given by MESH_DATA_DIR): then only a directory made
here is made 0700. (The embedded registry's directory is stricter: `ensure_private_dir`
refuses one that others may write.)
"""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(directory: Path, *, narrow: bool) -> None:
    """`directory` made 0700 if missing; one that exists is made 0700 too when `narrow`."""
    if narrow or not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # mkdir's mode goes through the umask
