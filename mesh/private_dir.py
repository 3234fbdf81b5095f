"""A directory only its owner may enter, whatever the umask.

`mkdir(mode=0o700)` alone is not enough: the mode goes through the umask, and an
existing directory keeps whatever mode it has. `narrow` says whether an existing one
is the mesh's to narrow (`meshctl up`'s own `.run/data`, `.run/edge`, the NATS
directory) or may be a directory the user chose and shares on purpose (the run
directory itself, a data directory given by MESH_DATA_DIR): then only a directory made
here is made 0700. (The embedded registry's directory is stricter: `ensure_private_dir`
refuses one that others may write.) `own_private_dir` is for a fixed name in a shared
directory such as /tmp, where another account could have made it first.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotPrivate(ValueError):
    """A directory that must be the account's own is not: why, and what to do."""


def private_dir(directory: Path, *, narrow: bool) -> None:
    """`directory` made 0700 if missing; one that exists is made 0700 too when `narrow`."""
    if narrow or not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # mkdir's mode goes through the umask


def own_private_dir(directory: Path) -> None:
    """`directory` made 0700 if missing (its parent must exist), then refused unless it is
    a real directory of this account that no other may enter.

    Why: a fixed name in a shared directory (`/tmp/meshctl-<uid>`) may have been made
    first by another account, to read what is put there or to put its own socket in its
    place; tmux checks its `/tmp/tmux-<uid>` the same way. The sticky bit of /tmp keeps
    others from renaming or removing one this account made.
    """
    try:
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode goes through the umask
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if st.st_uid != os.geteuid():
        problem = (
            f"belongs to uid {st.st_uid}, not to this account (uid {os.geteuid()}):"
            " refusing to use it; only its owner or an administrator can remove it"
        )
    elif stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link: refusing to use it; remove the link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory: refusing to use it; remove it"
    elif st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        problem = f"is open to other accounts (mode {mode:o}): refusing to use it; `chmod 700` it"
    else:
        return
    raise NotPrivate(f"{directory} {problem}")
