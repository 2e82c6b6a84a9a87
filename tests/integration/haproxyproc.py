"""
A real HAProxy (Debian's haproxy package) in TCP mode in front of pgtls,
for the PROXY protocol tests: ``haproxy -db -f CFG`` in the foreground.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from ports import free_port

__all__ = ["HAProxy", "find_haproxy"]


def find_haproxy() -> str:
    """
    The haproxy program (Debian puts it in /usr/sbin, which a user's PATH
    may lack).

    :raise FileNotFoundError: HAProxy is not installed (scripts/test installs it).
    """
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FileNotFoundError("haproxy not found: install Debian's haproxy package")
    return found


class HAProxy:
    """
    HAProxy listening on 127.0.0.1:``port`` and passing each connection to
    pgtls on 127.0.0.1:``backend_port``, from ``source`` (its own address,
    as pgtls sees it), with ``send_proxy`` (``send-proxy`` for version 1,
    ``send-proxy-v2``) and a layer-4 health check every half second.
    """

    def __init__(self, directory: Path, backend_port: int, *, send_proxy: str, source: str) -> None:
        self.directory = directory
        self.backend_port = backend_port
        self.send_proxy = send_proxy
        self.source = source
        self.port = free_port()
        self.config = directory / "haproxy.cfg"
        self.logfile = directory / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        return "\n".join(
            [
                "global",
                "    log stderr format raw local0 info",
                "defaults",
                "    mode tcp",
                "    log global",
                "    timeout connect 5s",
                "    timeout client 60s",
                "    timeout server 60s",
                "frontend postgres",
                f"    bind 127.0.0.1:{self.port}",
                "    default_backend pgtls",
                "backend pgtls",
                f"    server pgtls 127.0.0.1:{self.backend_port} {self.send_proxy}"
                f" source {self.source} check inter 500ms",
                "",
            ]
        )

    def start(self, timeout: float = 10.0) -> HAProxy:
        """Check the configuration, start HAProxy, wait until it accepts connections."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.config_text())
        haproxy = find_haproxy()
        checked = subprocess.run(
            [haproxy, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30
        )
        if checked.returncode != 0:
            raise RuntimeError(
                f"haproxy refused its configuration:\n{checked.stdout}{checked.stderr}"
            )
        with open(self.logfile, "wb") as log:
            self.process = subprocess.Popen(
                [haproxy, "-db", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"haproxy exited with {self.process.returncode}:\n{self.log_text()}"
                )
            if self._accepts():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"haproxy did not listen within {timeout}s:\n{self.log_text()}")

    def _accepts(self) -> bool:
        # Binding is the last step of HAProxy's start: a refused connection
        # means not yet.  The probe's connection reaches pgtls as one that
        # left before its first packet.
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """Stop HAProxy (SIGTERM: at once) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
