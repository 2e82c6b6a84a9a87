"""
SIGUSR2 (issue 19): a restart that refuses no connection.  The certificate
is rotated under a loop of connecting clients while a long session stays
open; a broken new certificate leaves the old process serving.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from pgtlsproc import REPO, TWISTD, Pki, free_port, make_datadir
from scaleout import (
    TIMEOUT,
    AppendLogServer,
    ConnectLoop,
    alive,
    connect,
    served_certificate,
    started_pid,
    stop_pid,
    wait_gone,
)

from pgtls.tls import certs


@pytest.fixture
def server(tmp_path: Path, pki: Pki, postgres) -> Iterator[AppendLogServer]:
    """A pgtls logging by appending, and whatever process a SIGUSR2 started, stopped after."""
    port = free_port()
    datadir = make_datadir(tmp_path / "pgtls", pki, postgres.conninfo(), port=port)
    running = AppendLogServer(datadir, port)
    running.start()
    try:
        yield running
    finally:
        running.stop()
        for line in running.log_text().splitlines():
            if "received SIGUSR2: started process" in line:
                stop_pid(started_pid(line))


def replace_files(datadir: Path, issued: certs.Issued) -> None:
    """Replace server.crt and server.key, each by a rename, as certificate tools do."""
    certs.write_pem(str(datadir / "server.crt.new"), issued.cert)
    certs.write_key(str(datadir / "server.key.new"), issued.key)
    os.replace(datadir / "server.key.new", datadir / "server.key")
    os.replace(datadir / "server.crt.new", datadir / "server.crt")


def send_usr2(server: AppendLogServer) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGUSR2)


def test_rotation_under_load(server: AppendLogServer, pki: Pki) -> None:
    """
    Replace server.crt and server.key, send SIGUSR2 while clients connect in
    a loop and a session stays open: no connection fails, the open session
    goes on and ends normally, the old process exits after it, and new
    sessions are served by the new process with the new certificate.
    """
    old_der = served_certificate(server.port, pki.ca_file)
    renewed = certs.issue_server_cert(pki.ca, ["localhost", "127.0.0.1", "::1"])

    def once() -> None:
        with connect(server.port, pki.ca_file) as conn:
            conn.execute("select 1")

    with connect(server.port, pki.ca_file) as long, ConnectLoop(once) as loop:
        long.execute("begin")
        long.execute("select 1")
        loop.wait_successes(5)
        replace_files(server.datadir, renewed)
        send_usr2(server)
        log = server.wait_for_log("is ready: handing over to it", TIMEOUT)
        new_pid = started_pid(log)
        loop.wait_successes(10)
        assert served_certificate(server.port, pki.ca_file) == renewed.cert.public_bytes(
            Encoding.DER
        )
        assert old_der != renewed.cert.public_bytes(Encoding.DER)
        # The old process still relays the open session.
        assert server.process is not None and server.process.poll() is None
        assert long.execute("select 2").fetchone() == (2,)
        long.execute("commit")
    loop.stop()
    assert loop.failures == []
    assert server.process.wait(TIMEOUT) == 0
    assert alive(new_pid)
    # After the old process is gone, the new one serves alone.
    once()
    log = server.log_text()
    assert "Traceback" not in log


def test_broken_certificate_keeps_old(server: AppendLogServer, pki: Pki) -> None:
    """
    A new server.crt that does not load: the new process fails, the old one
    logs its one-line error and goes on serving the old certificate.
    """
    old_der = served_certificate(server.port, pki.ca_file)
    (server.datadir / "server.crt").write_text("not a certificate\n")
    send_usr2(server)
    log = server.wait_for_log("failed to start", TIMEOUT)
    line = next(line for line in log.splitlines() if "failed to start" in line)
    assert 'could not load server certificate file "' in line, line
    assert "this process goes on serving" in line
    wait_gone(started_pid(log))
    assert served_certificate(server.port, pki.ca_file) == old_der
    with connect(server.port, pki.ca_file) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    # A second SIGUSR2 is taken again (the failed hand-over is over).
    send_usr2(server)
    deadline = time.monotonic() + TIMEOUT
    while server.log_text().count("failed to start") < 2:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    assert server.process is not None and server.process.poll() is None


def test_new_process_cannot_prompt_for_a_passphrase(server: AppendLogServer, pki: Pki) -> None:
    """
    A new key with a passphrase and no ssl_passphrase_command: the new
    process fails clearly (it has no terminal) and the old one serves on;
    once postgresql.conf names a command, which the new process reads anew,
    the next SIGUSR2 hands over.
    """
    certs.write_key(str(server.datadir / "server.key.new"), pki.server.key, passphrase=b"secret")
    os.replace(server.datadir / "server.key.new", server.datadir / "server.key")
    send_usr2(server)
    log = server.wait_for_log("failed to start", TIMEOUT)
    line = next(line for line in log.splitlines() if "failed to start" in line)
    assert "a process started by SIGUSR2 has no terminal: set ssl_passphrase_command" in line
    with connect(server.port, pki.ca_file) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    conf = server.datadir / "postgresql.conf"
    conf.write_text(conf.read_text() + "ssl_passphrase_command = 'echo secret'\n")
    send_usr2(server)
    server.wait_for_log("is ready: handing over to it", TIMEOUT)
    assert server.process is not None and server.process.wait(TIMEOUT) == 0
    with connect(server.port, pki.ca_file) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_hand_over_of_activated_sockets_under_notify(
    tmp_path: Path, pki: Pki, postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    As under the shipped unit: a socket passed by socket activation and the
    metrics socket are handed over too; the new process tells systemd
    MAINPID= with READY=1, and the old one says nothing more (no STOPPING=1,
    which would stop the service).
    """
    activate = shutil.which("systemd-socket-activate")
    assert activate is not None, "systemd-socket-activate: install Debian's systemd package"
    port, metrics_port = free_port(), free_port()
    datadir = make_datadir(
        tmp_path / "pgtls",
        pki,
        postgres.conninfo(),
        port=free_port(),
        settings=[f"pgtls.metrics_listen = 'tcp:{metrics_port}:interface=127.0.0.1'"],
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(TIMEOUT)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    logfile = datadir / "pgtls.log"
    with open(logfile, "ab") as out:
        process = subprocess.Popen(
            [
                *(activate, "--listen", f"127.0.0.1:{port}", "--fdname=pgtls"),
                *("-E", "NOTIFY_SOCKET", TWISTD),
                *("--nodaemon", "--pidfile=", "--logfile=-", "pgtls", "-D", str(datadir)),
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    new_pid = None

    def next_message() -> dict[str, str]:
        data = notify.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    try:
        # The first client starts pgtls (activation on demand), once the socket is there.
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
                time.sleep(0.05)
        with connect(port, pki.ca_file) as conn:
            conn.execute("select 1")
        assert next_message()["READY"] == "1"
        process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + TIMEOUT
        while "MAINPID" not in (message := next_message()):
            assert time.monotonic() < deadline
        new_pid = started_pid(logfile.read_text())
        assert (message["MAINPID"], message["READY"]) == (str(new_pid), "1")
        assert process.wait(TIMEOUT) == 0
        log = logfile.read_text()
        assert "on the 1 listening socket(s) and the metrics socket" in log
        with connect(port, pki.ca_file) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            assert b"pgtls_sessions" in r.read()
        # The old process has exited: whatever it sent is queued by now.
        notify.setblocking(False)
        later = []
        with contextlib.suppress(BlockingIOError):
            while True:
                later.append(next_message())
        assert not [message for message in later if "STOPPING" in message], later
        assert {message.get("MAINPID", str(new_pid)) for message in later} <= {str(new_pid)}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        if new_pid is not None:
            stop_pid(new_pid)
        notify.close()
