"""`meshctl pki renew`, as compose's `pki-renew` service runs it: a real process that
re-issues certificate files as they come due and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mesh.security.identity_files import ensure_identities
from mesh.security.pki import describe
from mesh.settings import SecuritySettings

LIFETIME_S = 3


def _meshctl(pki_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mesh.cli", "pki", *args]


def _env(pki_dir: Path) -> dict[str, str]:
    return {**os.environ, "MESH_PKI_DIR": str(pki_dir), "MESH_CERT_LIFETIME_S": str(LIFETIME_S)}


def test_renew_watches_until_sigterm_and_replaces_each_file_as_it_comes_due(
    tmp_path: Path,
) -> None:
    pki_dir = tmp_path / "pki"
    security = SecuritySettings(pki_dir=str(pki_dir), cert_lifetime_s=LIFETIME_S)
    store = ensure_identities(security, ["edge", "edge-meta"])
    first = {n: describe(store.cert_path(n).read_bytes()) for n in ("edge", "edge-meta")}
    proc = subprocess.Popen(
        _meshctl(pki_dir, "renew", "edge", "edge-meta"),
        env=_env(pki_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 3 * LIFETIME_S
        while time.monotonic() < deadline:  # poll: both renewed ~1 s before they expire
            now = {n: describe(store.cert_path(n).read_bytes()) for n in first}
            if all(now[n].not_after > first[n].not_after for n in first):
                break
            time.sleep(0.1)  # poll
        else:
            raise AssertionError("the files were not renewed")
        assert time.time() < min(i.not_after.timestamp() for i in first.values())  # in time
        assert proc.poll() is None  # still watching
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "edge: certificate file renewed" in out and "edge-meta: certificate" in out, out


def test_renew_once_and_a_name_with_no_certificate(tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    ensure_identities(SecuritySettings(pki_dir=str(pki_dir)), ["edge"])
    once = subprocess.run(
        _meshctl(pki_dir, "renew", "--once", "edge"),
        env=_env(pki_dir), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert once.returncode == 0 and "next renewal due" in once.stdout, once
    missing = subprocess.run(
        _meshctl(pki_dir, "renew", "nobody-issued-this"),
        env=_env(pki_dir), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert missing.returncode == 1, missing
    assert "no certificate for nobody-issued-this" in missing.stderr
    assert "meshctl pki issue NAME" in missing.stderr
