"""`meshctl up --detach`'s log kept bounded (mesh/local/log_rotation.py), in a real child
process whose stdout and stderr are the file, as the detached `up`'s are."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from mesh.local.log_rotation import LogRotation

    rotation = LogRotation(Path(sys.argv[1]), max_bytes=1000, backups=2)
    print("small", flush=True)
    assert not rotation.check()  # under the limit: nothing happens
    for generation in range(4):
        print(f"gen{generation} " + "x" * 1200, flush=True)
        assert rotation.check()
        print(f"after{generation} from print", flush=True)
        os.write(2, f"after{generation} from fd 2\\n".encode())  # as C code writes
    """
)


def test_past_the_limit_the_file_moves_aside_and_every_writer_follows(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    with log.open("ab") as out:
        log.chmod(0o600)
        subprocess.run(
            [sys.executable, "-c", CHILD, str(log)],
            stdout=out, stderr=out, check=True, timeout=30, cwd=Path(__file__).parents[2],
        )  # fmt: skip
    # The current file holds only what came after the last rotation, from both writers.
    assert log.read_text() == "after3 from print\nafter3 from fd 2\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    one, two = (tmp_path / "up.log.1").read_text(), (tmp_path / "up.log.2").read_text()
    assert one.startswith("after2 from print\nafter2 from fd 2\ngen3 ")
    assert two.startswith("after1 from print\nafter1 from fd 2\ngen2 ")
    assert not (tmp_path / "up.log.3").exists()  # two backups: the oldest is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up.log", "up.log.1", "up.log.2"]
