"""listen_addresses: every listed address on the one port, and clear failures."""

from __future__ import annotations

import socket
import subprocess

from pgtlsproc import PgtlsServer, free_port


def _connects(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect((host, port))
        except OSError:
            return False
        return True


def test_ipv4_and_ipv6_addresses(pgtls) -> None:
    """'127.0.0.1, ::1' listens on both, logged as PostgreSQL logs it."""
    server = pgtls.start(settings=["listen_addresses = '127.0.0.1, ::1'"])
    assert _connects(socket.AF_INET, "127.0.0.1", server.port)
    assert _connects(socket.AF_INET6, "::1", server.port)
    log = server.log_text()
    assert f'listening on IPv4 address "127.0.0.1", port {server.port}' in log
    assert f'listening on IPv6 address "::1", port {server.port}' in log


def test_unbindable_address_is_skipped(pgtls) -> None:
    """An address this machine does not have is a warning while another one binds."""
    server = pgtls.start(settings=["listen_addresses = '192.0.2.1, 127.0.0.1'"])
    assert _connects(socket.AF_INET, "127.0.0.1", server.port)
    assert "could not bind tcp:" in server.log_text()


def test_no_address_binds(pgtls) -> None:
    """When nothing binds, pgtls refuses to start with PostgreSQL's one line."""
    port = free_port()
    datadir = pgtls.datadir(port=port, settings=["listen_addresses = '192.0.2.1'"])
    proc = subprocess.run(
        PgtlsServer(datadir, port).command(),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    # twistd sends stderr to its log file once logging has started.
    log = (datadir / "pgtls.log").read_text()
    assert "pgtls: could not create any TCP/IP sockets" in proc.stdout + proc.stderr + log
    assert "Traceback" not in proc.stdout + proc.stderr + log


def test_bad_host_name_refuses_start(pgtls) -> None:
    """A listen_addresses name that does not resolve stops the start, naming it."""
    port = free_port()
    datadir = pgtls.datadir(port=port, settings=["listen_addresses = 'no-such-host.invalid'"])
    proc = subprocess.run(
        PgtlsServer(datadir, port).command(),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert 'pgtls: listen_addresses: could not translate host name "no-such-host.invalid"' in out
    assert "Traceback" not in out
