"""Run a command as another account on this machine (`nobody`): the attacker of the
"secure on a shared machine" tests. Needs root (to switch) and util-linux's setpriv."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

NOBODY = 65534

needs_other_account = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv (util-linux) to act as another account",
)


def as_nobody(*argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """`argv` run as `nobody` with no supplementary groups; its output captured."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
