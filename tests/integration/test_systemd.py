"""
pgtls as a service (issue 5): the systemd units verify, socket activation
with systemd-socket-activate, sd_notify messages on a NOTIFY_SOCKET bound by
the test, and PostgreSQL's shutdown modes with live psycopg sessions:
SIGINT (fast) sends FATAL 57P01 to every session, SIGTERM (smart) refuses new
sessions with FATAL 57P03 and waits for the open ones, up to
pgtls.smart_shutdown_timeout.

systemd-analyze and systemd-socket-activate come with Debian's systemd
package; without them these tests fail, as the PostgreSQL tests do without
PostgreSQL.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from pgtlsproc import REPO, TWISTD, PgtlsServer, Pki, connect_verified, free_port

from pgtls.core import wire

TIMEOUT = 10.0
ADMIN_SHUTDOWN = "terminating connection due to administrator command"
SHUTTING_DOWN = "the database system is shutting down"
VENV_BIN = os.path.dirname(sys.executable)


def need(tool: str) -> str:
    """The path of a systemd tool; fail (not skip) without it, naming the package."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: install Debian's systemd package", pytrace=False)
    return path


def connect(port: int, pki: Pki, **options: object) -> psycopg.Connection[tuple[object, ...]]:
    """A psycopg session through pgtls on 127.0.0.1, TLS with full verification."""
    return connect_verified(port, pki.ca_file, connect_timeout=int(TIMEOUT), **options)


def raw_startup_answer(port: int) -> dict[str, str]:
    """Send a plaintext StartupMessage and decode the FATAL ErrorResponse that comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(wire.startup_message({"user": "postgres", "database": "postgres"}))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return wire.parse_error_response(data)


def wait_exit(server: PgtlsServer, timeout: float = TIMEOUT) -> int:
    """Wait for pgtls to exit on its own; its exit status."""
    assert server.process is not None
    return server.process.wait(timeout)


def assert_admin_shutdown(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """The session was ended with FATAL 57P01, which libpq reports on the next query."""
    with pytest.raises(psycopg.errors.AdminShutdown) as raised:
        conn.execute("select 1")
    assert raised.value.sqlstate == "57P01"
    assert ADMIN_SHUTDOWN in str(raised.value)


# --- the units ------------------------------------------------------------------


def test_units_verify(tmp_path: Path) -> None:
    """
    systemd-analyze verify finds nothing to say about etc/pgtls.service and
    etc/pgtls.socket.  systemd 252 looks commands up in its own search path,
    not $PATH, so the copy verified names this checkout's pgtls and twistd
    rather than /opt/pgtls's (tests/integration/test_install.py verifies the
    installed units).
    """
    analyze = need("systemd-analyze")
    for name in ("pgtls.service", "pgtls@.service"):
        unit = (REPO / "etc" / name).read_text()
        located = re.sub(
            r"^(Exec\w*=)/opt/pgtls/bin/(pgtls|twistd) ",
            rf"\g<1>{VENV_BIN}/\g<2> ",
            unit,
            flags=re.MULTILINE,
        )
        assert located.count(VENV_BIN) == 2, name
        (tmp_path / name).write_text(located)
    shutil.copy(REPO / "etc" / "pgtls.socket", tmp_path / "pgtls.socket")
    # A template is verified through an instance of it.
    units = ["pgtls.service", "pgtls.socket", "pgtls@0.service"]
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / unit) for unit in units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_service_unit_essentials() -> None:
    """The service unit: Type=notify, twistd in the foreground, pgtls check first, HUP reloads."""
    unit = (REPO / "etc" / "pgtls.service").read_text()
    lines = set(unit.splitlines())
    for line in [
        "Type=notify",
        "User=pgtls",
        "ExecStartPre=/opt/pgtls/bin/pgtls check -D ${PGDATA}",
        "ExecStart=/opt/pgtls/bin/twistd --nodaemon --pidfile= --logfile=- pgtls -D ${PGDATA}",
        "ExecReload=kill -HUP $MAINPID",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadOnlyPaths=/var/lib/pgtls",
        "CapabilityBoundingSet=",
    ]:
        assert line in lines, line
    socket_unit = (REPO / "etc" / "pgtls.socket").read_text()
    assert "FileDescriptorName=pgtls" in socket_unit.splitlines()


def test_units_follow_a_sigusr2_hand_over() -> None:
    """
    Both service units let the process SIGUSR2 starts name itself the main
    process (NotifyAccess=all) and say how to send it to the main process only.
    """
    command = "systemctl kill --kill-whom=main --signal=SIGUSR2"
    for name in ("pgtls.service", "pgtls@.service"):
        unit = (REPO / "etc" / name).read_text()
        assert "NotifyAccess=all" in unit.splitlines(), name
        assert command in unit, name


def test_template_unit_shares_the_port() -> None:
    """pgtls@.service: so_reuseport on, and each instance its own metrics port."""
    lines = (REPO / "etc" / "pgtls@.service").read_text().splitlines()
    assert (
        "ExecStart=/opt/pgtls/bin/twistd --nodaemon --pidfile= --logfile=- pgtls "
        "-D ${PGDATA} -c pgtls.so_reuseport=on -c pgtls.metrics_listen=${PGTLS_METRICS}"
    ) in lines
    assert "Environment=PGTLS_METRICS=tcp:918%i:interface=127.0.0.1" in lines
    assert "EnvironmentFile=-/etc/pgtls/%i.env" in lines


# --- socket activation ----------------------------------------------------------


@pytest.mark.parametrize("fdname", [["--fdname=pgtls"], []], ids=["named", "unnamed"])
def test_socket_activation(pgtls, pki, tmp_path: Path, fdname: list[str]) -> None:
    """
    Under systemd-socket-activate pgtls serves the socket it was passed
    (started by the first client, which libpq then completes), not the port
    in postgresql.conf, and says so; with or without --fdname (an unnamed
    socket, which Twisted's systemd endpoint drops, is adopted by number).
    """
    activate = need("systemd-socket-activate")
    port, configured_port = free_port(), free_port()
    datadir = pgtls.datadir("activated", port=configured_port)
    logfile = datadir / "pgtls.log"
    process = subprocess.Popen(
        [
            activate,
            "--listen",
            f"127.0.0.1:{port}",
            *fdname,
            TWISTD,
            "--nodaemon",
            "--pidfile=",
            f"--logfile={logfile}",
            "pgtls",
            "-D",
            str(datadir),
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        with connect(port, pki) as conn:
            assert conn.execute("select 42").fetchone() == (42,)
            assert conn.pgconn.ssl_in_use
        log = logfile.read_text()
        assert (
            "using the 1 socket(s) passed by systemd; listen_addresses and port are not used"
        ) in log
        assert f'listening on IPv4 address "127.0.0.1", port {port}' in log
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", configured_port), timeout=1).close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        if process.stdout:
            process.stdout.close()


# --- sd_notify -------------------------------------------------------------------


class NotifySocket:
    """The test's stand-in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout: float = TIMEOUT) -> dict[str, str]:
        """The next notification, as a dictionary."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def wait_for(self, predicate: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        """Skip notifications until one satisfies ``predicate``."""
        deadline = time.monotonic() + TIMEOUT
        seen = []
        while time.monotonic() < deadline:
            message = self.next(max(0.1, deadline - time.monotonic()))
            if predicate(message):
                return message
            seen.append(message)
        raise AssertionError(f"no such notification; saw {seen}")


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """A bound NOTIFY_SOCKET, in the environment pgtls is started with."""
    listener = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    yield listener
    listener.sock.close()


def test_sd_notify(pgtls, pki, notify_socket: NotifySocket) -> None:
    """
    With NOTIFY_SOCKET, pgtls sends READY=1 once it listens, a STATUS line
    that follows the session count, RELOADING=1 (with MONOTONIC_USEC) and
    READY=1 around a SIGHUP reload, and STOPPING=1 at SIGTERM.
    """
    server = pgtls.start()
    assert notify_socket.next() == {
        "READY": "1",
        "STATUS": "ready to accept connections; 0 sessions",
    }
    with connect(server.port, pki) as conn:
        conn.execute("select 1")
        notify_socket.wait_for(
            lambda m: m.get("STATUS") == "ready to accept connections; 1 session"
        )
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        server.reload()
        reloading = notify_socket.wait_for(lambda m: "RELOADING" in m)
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"])
        assert notify_socket.next() == {
            "READY": "1",
            "STATUS": "ready to accept connections; 1 session",
        }
    notify_socket.wait_for(lambda m: m.get("STATUS") == "ready to accept connections; 0 sessions")
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert notify_socket.wait_for(lambda m: "STOPPING" in m) == {
        "STOPPING": "1",
        "STATUS": "shutting down; 0 connections left",
    }
    assert wait_exit(server) == 0


# --- shutdown ----------------------------------------------------------------------


def test_fast_shutdown(pgtls, pki) -> None:
    """
    SIGINT: every open session, idle or inside a transaction, gets FATAL
    57P01 `terminating connection due to administrator command`, and pgtls
    exits at once, logging PostgreSQL's lines.
    """
    server = pgtls.start()
    with connect(server.port, pki) as idle, connect(server.port, pki) as busy:
        idle.execute("select 1")
        busy.execute("begin")
        busy.execute("select 1")
        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        assert wait_exit(server) == 0
        assert time.monotonic() - started < 5
        assert_admin_shutdown(idle)
        assert_admin_shutdown(busy)
    log = server.log_text()
    assert "received fast shutdown request" in log
    assert "aborting any active transactions" in log


def test_smart_shutdown(pgtls, pki) -> None:
    """
    SIGTERM: new sessions are refused with FATAL 57P03 `the database system
    is shutting down` (after TLS, as PostgreSQL answers), the open session
    goes on working, and pgtls exits once it has closed.
    """
    server = pgtls.start()
    assert server.process is not None
    with connect(server.port, pki) as conn:
        conn.execute("select 1")
        server.process.send_signal(signal.SIGTERM)
        server.wait_for_log("received smart shutdown request")
        with pytest.raises(psycopg.OperationalError, match=SHUTTING_DOWN):
            connect(server.port, pki)
        fields = raw_startup_answer(server.port)
        assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "57P03", SHUTTING_DOWN)
        time.sleep(0.5)
        assert conn.execute("select 42").fetchone() == (42,)
        assert server.process.poll() is None
    assert wait_exit(server) == 0
    assert "waiting for 1 connection(s) to end (at most 30s)" in server.log_text()


def test_smart_shutdown_timeout(pgtls, pki) -> None:
    """
    When pgtls.smart_shutdown_timeout expires, the sessions still open get
    FATAL 57P01, as in a fast shutdown, and pgtls exits.
    """
    server = pgtls.start(settings=["pgtls.smart_shutdown_timeout = 2s"])
    assert server.process is not None
    with connect(server.port, pki) as conn:
        conn.execute("select 1")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert wait_exit(server) == 0
        assert 1.5 < time.monotonic() - started < 6
        assert_admin_shutdown(conn)
    assert "pgtls.smart_shutdown_timeout expired with 1 connection(s) open" in server.log_text()
