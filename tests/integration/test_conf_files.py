"""
pgtls reads postgresql.conf's includes as PostgreSQL itself does: the same
file names, read in the same order, so the same value wins.  The reference
is the real server's ``postgres -C NAME``, which reads the configuration
files, prints the setting and exits without starting.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import find_bindir

from pgtls.core.conf import load_settings

TIMEOUT = 30

# Names whose strcmp order (bytes) differs from their order as decoded
# characters: 0xFF, not UTF-8, decodes to U+DCFF, which sorts before U+1F600.
NAMES = (b"Z.conf", b"z.conf", "é.conf".encode(), "\U0001f600.conf".encode(), b"\xff.conf")


@pytest.fixture
def data_directory() -> Iterator[Path]:
    """A directory the server's user can read (root's pytest tmp_path is 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="pgtls-conf-"))
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory)


def postgres_setting(directory: Path, name: str) -> str:
    """What the real server reads for ``name`` from ``directory``'s postgresql.conf."""
    argv = [str(find_bindir() / "postgres"), "-C", name, "-D", str(directory)]
    if os.geteuid() == 0:  # postgres refuses to run as root
        owner = pwd.getpwnam("postgres")
        for path in [directory, *directory.rglob("*")]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        argv = ["runuser", "-u", "postgres", "--", *argv]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, cwd="/"
    )
    assert done.returncode == 0, done
    return done.stdout.strip()


@pytest.mark.parametrize("order", [NAMES, tuple(reversed(NAMES))])
def test_include_dir_order_is_postgresql_s(data_directory: Path, order: tuple[bytes, ...]) -> None:
    """
    include_dir with names that are not ASCII (one not even UTF-8): the port
    of the file read last, which pgtls and PostgreSQL agree on, whatever
    order the files were made in.
    """
    conf_d = os.path.join(os.fsencode(data_directory), b"conf.d")
    os.mkdir(conf_d)
    for index, name in enumerate(order):
        with open(os.path.join(conf_d, name), "wb") as file:
            file.write(f"port = {5001 + index}\n".encode())
    (data_directory / "postgresql.conf").write_text("include_dir 'conf.d'\n")
    expected = postgres_setting(data_directory, "port")
    assert str(load_settings(str(data_directory)).port) == expected
    # The last file in strcmp order wins, not the last in character order.
    assert expected == str(5001 + order.index(b"\xff.conf"))
