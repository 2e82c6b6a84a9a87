"""
Where a private key's passphrase comes from: ssl_passphrase_command, run as
PostgreSQL runs it, or the controlling terminal, with echo off.

Either failure is a :class:`~pgtls.tls.errors.TLSConfigError`; serverctx.py
puts the key file's name in front of it.
"""

from __future__ import annotations

import getpass
import os
import re
import signal
import subprocess
import warnings

from pgtls.tls.errors import TLSConfigError

__all__ = [
    "PASSPHRASE_COMMAND_TIMEOUT",
    "PASSPHRASE_PROMPT",
    "run_passphrase_command",
    "terminal_passphrase",
]

#: The prompt OpenSSL shows, and PostgreSQL substitutes for ``%p``.
PASSPHRASE_PROMPT = "Enter PEM pass phrase:"

#: How long ssl_passphrase_command may take before pgtls gives up.
PASSPHRASE_COMMAND_TIMEOUT = 60.0


def run_passphrase_command(
    command: str, *, prompt: str = PASSPHRASE_PROMPT, timeout: float = PASSPHRASE_COMMAND_TIMEOUT
) -> bytes:
    """
    Run ssl_passphrase_command and return the passphrase it prints.

    ``%p`` in the command becomes the prompt and ``%%`` a single ``%``; the
    command runs under ``sh -c`` with pgtls's stdin and stderr; the first
    line of its output, without trailing CR/LF, is the passphrase.

    :param command: the ssl_passphrase_command setting.
    :param prompt: what ``%p`` stands for.
    :param timeout: seconds to wait before killing the command.
    :raises TLSConfigError: the command could not run, failed or timed out.
    """
    expanded = _expand_passphrase_command(command, prompt)
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", expanded], stdout=subprocess.PIPE, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        # "from None": the exception holds whatever the command printed.
        raise TLSConfigError(
            f'command "{expanded}" failed', f"no pass phrase within {timeout:g} seconds"
        ) from None
    except OSError as error:
        raise TLSConfigError(f'could not execute command "{expanded}": {error.strerror}') from None
    if done.returncode != 0:
        raise TLSConfigError(f'command "{expanded}" failed', _wait_status(done.returncode))
    first_line = done.stdout.split(b"\n", 1)[0]
    del done
    return first_line.rstrip(b"\r")


def terminal_passphrase(prompt: str) -> str:
    """
    Ask for the key's passphrase on the controlling terminal, echo off.

    :param prompt: shown before reading.
    :raises TLSConfigError: there is no controlling terminal, or it was closed
        before a line was read.
    """
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError as error:
        raise TLSConfigError(
            f"no terminal to ask for its pass phrase ({error.strerror})",
            "run pgtls in the foreground on a terminal, or set ssl_passphrase_command",
        ) from None
    os.close(fd)
    # getpass falls back to reading stdin with echo on, with a warning: never
    # let a passphrase be typed visibly.
    with warnings.catch_warnings():
        warnings.simplefilter("error", getpass.GetPassWarning)
        try:
            return getpass.getpass(prompt)
        except (getpass.GetPassWarning, EOFError):
            raise TLSConfigError("the terminal gave no pass phrase") from None


def _expand_passphrase_command(command: str, prompt: str) -> str:
    """Replace ``%p`` with the prompt and ``%%`` with ``%``; keep other ``%``."""
    return re.sub(r"%([p%])", lambda m: prompt if m.group(1) == "p" else "%", command)


def _wait_status(returncode: int) -> str:
    """PostgreSQL's wait_result_to_str, from subprocess's returncode."""
    if returncode < 0:
        number = -returncode
        return f"child process was terminated by signal {number}: {signal.strsignal(number)}"
    if returncode == 126:
        return "command not executable"
    if returncode == 127:
        return "command not found"
    return f"child process exited with exit code {returncode}"
