"""
A SIGTERM to one of two pgtls processes sharing a port (pgtls.so_reuseport)
while clients connect in a loop; prints what happened as JSON.

Run by test_reuseport.py, in a network namespace of its own when the test
sets net.ipv4.tcp_migrate_req there (the namespace takes the setting with
it when it ends), so it is a script rather than a function:

    python reuseport_drain.py DATADIR PORT CA_FILE
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from scaleout import TIMEOUT, AppendLogServer, ConnectLoop, connect


def main(datadir: Path, port: int, ca_file: Path) -> dict[str, object]:
    servers = []
    for name in ("a", "b"):
        server = AppendLogServer(datadir, port)
        server.logfile = datadir / f"pgtls-{name}.log"
        servers.append(server.start())
    first, second = servers

    def once() -> None:
        with connect(port, ca_file) as conn:
            conn.execute("select 1")

    try:
        with ConnectLoop(once, clients=3) as loop:
            loop.wait_successes(10)
            deadline = time.monotonic() + TIMEOUT
            while not all("outcome=relayed" in server.log_text() for server in servers):
                assert time.monotonic() < deadline, "one process served no session"
                loop.wait_successes(1)
            assert first.process is not None
            first.process.send_signal(signal.SIGTERM)
            first_status = first.process.wait(TIMEOUT)
            loop.wait_successes(20)
        return {
            "successes": loop.successes,
            "failures": loop.failures,
            "first_status": first_status,
            "first_log": first.log_text(),
            "second_running": second.process is not None and second.process.poll() is None,
        }
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))))
