"""
Tests for pgtls.tls.passphrase: asking the terminal for a key's passphrase.
ssl_passphrase_command is tested through load_server_tls in test_serverctx.py.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable

from pgtls.tls.passphrase import terminal_passphrase

ASK_ON_TERMINAL = """
from pgtls.tls.passphrase import terminal_passphrase
from pgtls.tls.errors import TLSConfigError
try:
    answer = terminal_passphrase("Pass phrase please:")
except TLSConfigError as error:
    print("ERROR", error)
else:
    print("REVERSED", answer[::-1])
"""


def test_terminal_passphrase_without_a_terminal() -> None:
    """A process with no controlling terminal gets a TLSConfigError, not a hang."""
    done = subprocess.run(
        [sys.executable, "-c", ASK_ON_TERMINAL],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        start_new_session=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.startswith(b"ERROR no terminal to ask for its pass phrase (")


def _read_pty(fd: int, until: bytes | None, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline and (until is None or until not in data):
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the child has exited and closed the terminal
            break
        if not chunk:
            break
        data += chunk
    return data


def test_terminal_passphrase_reads_the_terminal_without_echo() -> None:
    """On a terminal the prompt is shown and the typed passphrase is not echoed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, never return into pytest
        os.execv(sys.executable, [sys.executable, "-c", ASK_ON_TERMINAL])
    try:
        deadline = time.monotonic() + 30
        output = _read_pty(fd, b"Pass phrase please:", deadline)
        os.write(fd, b"s3cret\n")
        output += _read_pty(fd, None, deadline)
    finally:
        os.close(fd)
        os.waitpid(pid, 0)
    assert b"Pass phrase please:" in output
    assert b"REVERSED terc3s" in output
    assert b"s3cret" not in output


def test_terminal_passphrase_is_the_callers_default_shape() -> None:
    """terminal_passphrase fits load_server_tls's ask_passphrase parameter."""
    ask: Callable[[str], str] = terminal_passphrase
    assert callable(ask)
