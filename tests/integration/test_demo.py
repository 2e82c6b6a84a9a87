"""
scripts/demo (issue 16): started as ``bash scripts/demo &`` starts it from a
shell without job control (SIGINT ignored on entry), it serves the psql line
it prints, and ``kill -INT PID`` or ``kill PID`` on its process id stops
pgtls and the throwaway PostgreSQL, leaving nothing running.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pgtlsproc import REPO, free_port

# The first run builds .venv; here .venv exists and pip only checks it.
START_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0


def processes_naming(text: str) -> list[int]:
    """Process ids whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s")


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    # Under /tmp, searchable by the postgres user, as the demo's PostgreSQL
    # runs as postgres when the tests run as root.
    path = Path(tempfile.mkdtemp(prefix="pgtls-demo-"))
    path.chmod(0o755)
    yield path
    for pid in processes_naming(str(path)):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_demo_stops_on_its_signal(demo_dir: Path, signum: int) -> None:
    """
    The demo prints a psql line that connects with verify-full; SIGINT (fast
    shutdown) or SIGTERM (smart) to the demo's process id ends it, and its
    PostgreSQL stops too.
    """
    port = free_port()
    output = demo_dir / "output.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGTLS_PORT=str(port), PGTLS_DEMO_DIR=str(demo_dir))
    with output.open("w") as out:
        # As `bash scripts/demo &` from a script: SIGINT ignored on entry.
        demo = subprocess.Popen(
            ["bash", "-c", "trap '' INT; exec bash scripts/demo"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: (
                f'listening on IPv4 address "127.0.0.1", port {port}' in output.read_text()
                or demo.poll() is not None
            ),
            START_TIMEOUT,
            "the demo did not serve",
        )
        text = output.read_text()
        assert demo.poll() is None, text
        psql = next(line.strip() for line in text.splitlines() if line.strip().startswith("psql "))
        argv = shlex.split(psql)
        assert "sslmode=verify-full" in argv[1]
        done = subprocess.run(
            [*argv, "-w", "-Atc", "select 42"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=STOP_TIMEOUT,
            env={**env, "HOME": str(demo_dir), "PGCONNECT_TIMEOUT": "10"},
        )
        assert (done.returncode, done.stdout) == (0, "42\n"), done
        postmaster = int((demo_dir / "postgres" / "postmaster.pid").read_text().split()[0])

        demo.send_signal(signum)
        demo.wait(STOP_TIMEOUT)
        wait_until(
            lambda: not (demo_dir / "postgres" / "postmaster.pid").exists(),
            STOP_TIMEOUT,
            "the demo's PostgreSQL did not stop",
        )
        # Its parent is init once pg_ctl has exited: a container's init
        # may leave it a zombie.
        wait_until(lambda: not running(postmaster), STOP_TIMEOUT, "the postmaster did not exit")
        wait_until(
            lambda: processes_naming(str(demo_dir)) == [],
            STOP_TIMEOUT,
            "processes of the demo were left",
        )
        mode = "fast" if signum == signal.SIGINT else "smart"
        assert f"received {mode} shutdown request" in output.read_text()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(STOP_TIMEOUT)
