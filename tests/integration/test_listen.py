"""listen_addresses: every listed address on the one port, and clear failures."""

from __future__ import annotations

import re
import socket
import subprocess

from pgtlsproc import PgtlsServer, free_port


def _connects(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect((host, port))
        except OSError as error:
            print(f"connect to {host} port {port}: {error!r}")
            return False
        return True


def test_ipv4_and_ipv6_addresses(pgtls) -> None:
    """'127.0.0.1, ::1' listens on both, logged as PostgreSQL logs it."""
    server = pgtls.start(settings=["listen_addresses = '127.0.0.1, ::1'"])
    # The kernel accepts on 127.0.0.1 as soon as it is bound, a moment before
    # pgtls binds ::1 and logs both: wait for the log, then connect.
    server.wait_for_log(f'listening on IPv4 address "127.0.0.1", port {server.port}')
    server.wait_for_log(f'listening on IPv6 address "::1", port {server.port}')
    assert _connects(socket.AF_INET, "127.0.0.1", server.port)
    assert _connects(socket.AF_INET6, "::1", server.port)


def test_unbindable_address_is_skipped(pgtls) -> None:
    """An address this machine does not have is a warning while another one binds."""
    server = pgtls.start(settings=["listen_addresses = '192.0.2.1, 127.0.0.1'"])
    assert _connects(socket.AF_INET, "127.0.0.1", server.port)
    server.wait_for_log("could not bind tcp:")


def _run_to_exit(pgtls, setting: str) -> tuple[int, str]:
    """Start pgtls with ``setting``, expecting it to refuse; its exit code and output."""
    port = free_port()
    datadir = pgtls.datadir(port=port, settings=[setting])
    proc = subprocess.run(
        PgtlsServer(datadir, port).command(),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    # twistd sends stderr to its log file once logging has started.
    log = datadir / "pgtls.log"
    return proc.returncode, proc.stdout + proc.stderr + (log.read_text() if log.exists() else "")


def test_no_address_binds(pgtls) -> None:
    """When nothing binds, pgtls refuses to start with PostgreSQL's one line."""
    code, out = _run_to_exit(pgtls, "listen_addresses = '192.0.2.1'")
    assert code == 1
    assert "pgtls: could not create any TCP/IP sockets" in out
    assert "Traceback" not in out


def test_bad_host_name_refuses_start(pgtls) -> None:
    """
    A listen_addresses name that does not resolve stops the start, naming
    it, the file and line that set it, in PostgreSQL's words.
    """
    code, out = _run_to_exit(pgtls, "listen_addresses = 'no-such-host.invalid'")
    assert code == 1
    # make_datadir: listen_addresses, port, ssl, pgtls.upstream, then the setting.
    assert re.search(
        r"^pgtls: \S+/postgresql\.conf:5: listen_addresses: could not translate host name "
        r'"no-such-host\.invalid", service "\d+" to address: ',
        out,
        re.MULTILINE,
    ), out
    assert "Traceback" not in out
