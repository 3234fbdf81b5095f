"""`own_private_dir`: a fixed name in a shared directory is used only when it is this
account's own real directory, 0700; what another account could have put there first is
refused with the reason."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mesh.private_dir import NotPrivate, own_private_dir


def test_a_missing_directory_is_made_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        own_private_dir(tmp_path / "mine")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "mine").stat().st_mode) == 0o700
    own_private_dir(tmp_path / "mine")  # the next start finds it as it left it


def test_a_link_to_a_directory_of_ones_own_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "name").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(NotPrivate, match="is a symbolic link: refusing to use it; remove the link"):
        own_private_dir(tmp_path / "name")


def test_a_file_in_its_place_is_refused(tmp_path: Path) -> None:
    (tmp_path / "name").write_text("")
    with pytest.raises(NotPrivate, match="is not a directory"):
        own_private_dir(tmp_path / "name")


def test_a_directory_open_to_others_is_refused_not_narrowed(tmp_path: Path) -> None:
    (tmp_path / "name").mkdir()
    os.chmod(tmp_path / "name", 0o755)
    open_ = r"open to other accounts \(mode 755\): refusing to use it; `chmod 700` it"
    with pytest.raises(NotPrivate, match=open_):
        own_private_dir(tmp_path / "name")
    assert stat.S_IMODE((tmp_path / "name").stat().st_mode) == 0o755  # left as found


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory away")
def test_a_directory_another_account_made_first_is_refused(tmp_path: Path) -> None:
    (tmp_path / "name").mkdir(mode=0o700)
    os.chown(tmp_path / "name", 65534, 65534)  # nobody's, as if it had made it
    theirs = r"belongs to uid 65534, not to this account .* only its owner or an administrator"
    with pytest.raises(NotPrivate, match=theirs):
        own_private_dir(tmp_path / "name")
