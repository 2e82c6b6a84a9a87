"""
A real ``twistd -n pgtls`` process for integration tests, and the data
directories it serves.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The tests and the benchmark take free_port from here too.
import psycopg
from ports import free_port as free_port

from pgtls.relay import fastpath
from pgtls.tls import certs

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
REPO = Path(__file__).resolve().parents[2]
#: Whether the servers the tests start use the relay's fast path: scripts/test
#: runs the suite a second time with PGTLS_FAST_PATH=off, which they inherit.
FAST_PATH = fastpath.from_environment(os.environ) is not False


@dataclass
class Pki:
    """A CA, a server certificate for localhost/127.0.0.1, client certificates."""

    root: Path
    ca: certs.Issued = field(default_factory=lambda: certs.make_ca("pgtls test CA"))
    other_ca: certs.Issued = field(default_factory=lambda: certs.make_ca("another CA"))

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.server = certs.issue_server_cert(self.ca, ["localhost", "127.0.0.1", "::1"])
        self.ca_file = self.root / "ca.crt"
        certs.write_pem(str(self.ca_file), self.ca.cert)

    def client(self, user: str, *, ca: certs.Issued | None = None) -> tuple[str, str]:
        """Write a client certificate for ``user``; return (cert path, key path)."""
        issued = certs.issue_client_cert(ca or self.ca, user, organization="Test")
        base = self.root / f"{user}-{issued.cert.serial_number:x}"
        certs.write_pem(f"{base}.crt", issued.cert)
        certs.write_key(f"{base}.key", issued.key)
        return f"{base}.crt", f"{base}.key"


def connect_verified(
    port: int, ca_file: Path, *, connect_timeout: int, **options: object
) -> psycopg.Connection[tuple[object, ...]]:
    """A psycopg session through pgtls on 127.0.0.1, TLS verified (verify-full) by ``ca_file``."""
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user="postgres",
        dbname="postgres",
        sslmode="verify-full",
        sslrootcert=str(ca_file),
        connect_timeout=connect_timeout,
        **options,
    )


def make_datadir(
    path: Path,
    pki: Pki,
    upstream: str,
    *,
    port: int,
    ssl: bool = True,
    client_ca: bool = False,
    hba_lines: Iterable[str] = ("host all all 127.0.0.1/32 trust", "host all all ::1/128 trust"),
    settings: Sequence[str] = (),
) -> Path:
    """A pgtls data directory serving 127.0.0.1:``port`` in front of ``upstream``."""
    path.mkdir(parents=True, exist_ok=True)
    certs.write_pem(str(path / "server.crt"), pki.server.cert)
    certs.write_key(str(path / "server.key"), pki.server.key)
    if client_ca:
        certs.write_pem(str(path / "root.crt"), pki.ca.cert)
    lines = [
        "listen_addresses = '127.0.0.1'",
        f"port = {port}",
        f"ssl = {'on' if ssl else 'off'}",
        f"pgtls.upstream = '{upstream}'",
        *settings,
    ]
    (path / "postgresql.conf").write_text("\n".join(lines) + "\n")
    (path / "pg_hba.conf").write_text("\n".join(hba_lines) + "\n")
    (path / "pg_ident.conf").write_text("")
    return path


class PgtlsServer:
    """``twistd --nodaemon pgtls -D DIR`` as a child process."""

    def __init__(
        self,
        datadir: Path,
        port: int,
        *,
        extra_args: Sequence[str] = (),
        new_session: bool = False,
    ) -> None:
        """
        :param new_session: start twistd in a session of its own, as a
            daemonized twistd or a systemd service runs: the scheduler then
            weighs it apart from the processes of the caller's session.
        """
        self.datadir = datadir
        self.port = port
        self.logfile = datadir / "pgtls.log"
        self.extra_args = list(extra_args)
        self.new_session = new_session
        self.cwd = REPO
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            f"--logfile={self.logfile}",
            "pgtls",
            "-D",
            str(self.datadir),
            *self.extra_args,
        ]

    def start(self, timeout: float = 20.0) -> PgtlsServer:
        """Start and wait until the port accepts connections."""
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out = self.process.stdout.read().decode() if self.process.stdout else ""
                raise RuntimeError(f"pgtls exited with {self.process.returncode}: {out}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgtls did not listen within {timeout}s:\n{self.log_text()}")

    def reload(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            # A fast shutdown (SIGINT): a smart one waits for open sessions.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()
        self.process = None

    def log_text(self) -> str:
        try:
            return self.logfile.read_text()
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears in the log; return the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log_text()
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.log_text()}")

    def __enter__(self) -> PgtlsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
