"""
pgtls.so_reuseport (issue 19): two pgtls processes with one data directory
share one port; both serve under pgbench -C; a SIGTERM to one while clients
connect in a loop fails no connection where the kernel hands the closed
listener's queue to the other (net.ipv4.tcp_migrate_req).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgtlsproc import Pki, free_port, make_datadir
from scaleout import TIMEOUT, AppendLogServer

HERE = Path(__file__).resolve().parent
MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


@pytest.fixture
def shared_datadir(tmp_path: Path, pki: Pki, postgres) -> Path:
    return make_datadir(
        tmp_path / "pgtls",
        pki,
        postgres.conninfo(),
        port=free_port(),
        settings=["pgtls.so_reuseport = on"],
    )


@pytest.fixture
def two_servers(shared_datadir: Path) -> Iterator[list[AppendLogServer]]:
    """Two pgtls processes on the same data directory and port, each with its own log."""
    port = int(
        next(
            line.split("=")[1]
            for line in (shared_datadir / "postgresql.conf").read_text().splitlines()
            if line.startswith("port")
        )
    )
    servers = []
    try:
        for name in ("a", "b"):
            server = AppendLogServer(shared_datadir, port)
            server.logfile = shared_datadir / f"pgtls-{name}.log"
            servers.append(server.start())
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_two_processes_share_the_port_under_pgbench(
    two_servers: list[AppendLogServer], pki: Pki, postgres, tmp_path: Path
) -> None:
    """pgbench -C (a new connection per transaction) is served by both processes, without error."""
    script = tmp_path / "select1.sql"
    script.write_text("select 1;\n")
    port = two_servers[0].port
    done = subprocess.run(
        [
            str(postgres.bindir / "pgbench"),
            "-n",
            "-C",
            "-c",
            "4",
            "-t",
            "40",
            "-f",
            str(script),
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres "
            f"sslmode=verify-full sslrootcert={pki.ca_file}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "number of transactions actually processed: 160/160" in done.stdout
    # Each session is logged when it ends, a moment after pgbench saw it end;
    # pgbench also makes one connection of its own before the run.
    deadline = time.monotonic() + TIMEOUT
    while True:
        counts = [server.log_text().count("outcome=relayed") for server in two_servers]
        if sum(counts) >= 160 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sum(counts) >= 160, counts
    assert all(counts), counts


def _migrate_req() -> int | None:
    try:
        return int(MIGRATE_REQ.read_text())
    except (OSError, ValueError):
        return None


def _netns_with_migrate_req() -> list[str] | None:
    """
    A command prefix that runs in a new network namespace with loopback up and
    tcp_migrate_req = 1 (the setting ends with the namespace); None if this
    machine does not allow it.
    """
    unshare = shutil.which("unshare")
    ip = shutil.which("ip")
    if unshare is None or ip is None:
        return None
    prefix = [
        unshare,
        "--net",
        "sh",
        "-ec",
        f'{ip} link set lo up; echo 1 > {MIGRATE_REQ}; exec "$@"',
        "netns",
    ]
    probe = subprocess.run([*prefix, "cat", str(MIGRATE_REQ)], capture_output=True, text=True)
    return prefix if probe.returncode == 0 and probe.stdout.strip() == "1" else None


def test_sigterm_to_one_fails_no_connection(shared_datadir: Path, pki: Pki) -> None:
    """
    With so_reuseport, a smart shutdown closes the process's ports instead
    of answering 57P03 and exits once its sessions are done; the other
    process serves every connection meanwhile.  Zero failed connections
    needs tcp_migrate_req (else the kernel resets what was queued on the
    closed listener): the test uses the host's setting when it is on, or a
    network namespace of its own where it sets it.
    """
    if _migrate_req() == 1:
        prefix: list[str] = []
    else:
        found = _netns_with_migrate_req()
        if found is None:
            pytest.skip(
                "net.ipv4.tcp_migrate_req is off and no network namespace can be made to "
                "set it: without it connections queued on the closed listener are reset"
            )
        prefix = found
    port = free_port()
    conf = shared_datadir / "postgresql.conf"
    conf.write_text(conf.read_text() + f"port = {port}\n")
    done = subprocess.run(
        [
            *prefix,
            sys.executable,
            str(HERE / "reuseport_drain.py"),
            str(shared_datadir),
            str(port),
            str(pki.ca_file),
        ],
        capture_output=True,
        text=True,
        timeout=4 * TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["failures"] == []
    assert result["first_status"] == 0
    assert result["second_running"]
    assert (
        "the port is shared (pgtls.so_reuseport): no longer listening; new connections go "
        "to the other processes on the port"
    ) in result["first_log"]
    assert "57P03" not in result["first_log"]
