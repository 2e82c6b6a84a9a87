"""
Helpers for the tests of several pgtls processes (issue 19): a pgtls that
logs to a file opened for appending (which a process started by SIGUSR2
shares), a loop of clients that counts failed connections, the certificate
a server presents, and waiting for a process that is not our child.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from pgtlsproc import REPO, TWISTD, PgtlsServer, connect_verified

from pgtls.core import wire

TIMEOUT = 20.0


class AppendLogServer(PgtlsServer):
    """
    ``twistd -n pgtls --logfile=-`` with its output appended to the log
    file: twistd's own log file is not opened for appending, so two
    processes writing it would overwrite each other's lines.
    """

    def command(self) -> list[str]:
        return [
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            "--logfile=-",
            "pgtls",
            "-D",
            str(self.datadir),
            *self.extra_args,
        ]

    def start(self, timeout: float = TIMEOUT) -> AppendLogServer:
        with open(self.logfile, "ab") as out:
            self.process = subprocess.Popen(
                self.command(),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                raise RuntimeError(f"pgtls exited with {status}: {self.log_text()}")
            if f"port {self.port}" in self.log_text():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgtls did not listen within {timeout}s:\n{self.log_text()}")


def connect(port: int, ca_file: Path) -> psycopg.Connection[tuple[object, ...]]:
    """A psycopg session through pgtls on 127.0.0.1, TLS verified against ``ca_file``."""
    return connect_verified(port, ca_file, connect_timeout=int(TIMEOUT))


class ConnectLoop:
    """Clients in threads that connect, query and disconnect until stopped; failures are kept."""

    def __init__(self, connect_once: Callable[[], None], clients: int = 2) -> None:
        self.connect_once = connect_once
        self.successes = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.connect_once()
            except Exception as error:  # every failure counts, whatever its kind
                with self._lock:
                    self.failures.append(f"{type(error).__name__}: {error}")
            else:
                with self._lock:
                    self.successes += 1

    def __enter__(self) -> ConnectLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_successes(self, count: int, timeout: float = TIMEOUT) -> None:
        """Wait until ``count`` more connections have succeeded."""
        target = self.successes + count
        deadline = time.monotonic() + timeout
        while self.successes < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} more connections did not succeed: {self.failures}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT)


def served_certificate(port: int, ca_file: Path) -> bytes:
    """The DER certificate pgtls on 127.0.0.1:``port`` presents (after SSLRequest)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(wire.ssl_request())
        assert sock.recv(1) == b"S"
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def started_pid(log: str) -> int:
    """The PID of the last process a SIGUSR2 started, from the log."""
    found = re.findall(r"received SIGUSR2: started process (\d+)", log)
    assert found, log
    return int(found[-1])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which no one has reaped yet, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = TIMEOUT) -> None:
    """Wait until ``pid`` has exited."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still runs after {timeout}s")
        time.sleep(0.05)


def stop_pid(pid: int) -> None:
    """Fast-shut down a pgtls that is not our child, and wait for it (SIGKILL if it hangs)."""
    if not alive(pid):
        return
    os.kill(pid, signal.SIGINT)
    try:
        wait_gone(pid, 10)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 5)
