"""
The benchmark's servers: one PostgreSQL cluster and the TLS front ends.

Everything listens on 127.0.0.1 or on Unix sockets in temporary directories.
The PostgreSQL cluster is tests/integration/pgserver.py's
:class:`PostgresServer` with TCP and ``ssl = on`` (the "native" target) and a
pgbench database; PgBouncer, pgtls and stunnel relay to it over its Unix
socket.  All present the same ECDSA P-256 server certificate.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO / "tests" / "integration"))

from pgserver import PostgresServer  # noqa: E402
from pgtlsproc import TWISTD, PgtlsServer, Pki, free_port, make_datadir  # noqa: E402

from pgtls.tls import certs  # noqa: E402

__all__ = [
    "BENCH_DB",
    "BENCH_USER",
    "BenchError",
    "PgBouncer",
    "PgtlsPair",
    "Pki",
    "Stunnel",
    "Target",
    "client_env",
    "find_program",
    "make_certificate",
    "pgtls_pid",
    "postmaster_pid",
    "restart_pgtls",
    "start_pgtls",
    "start_postgres",
]

BENCH_DB = "bench"
BENCH_USER = "postgres"

# Room for W4's idle sessions (up to 1000 through one front end at a time,
# each holding one backend) plus PgBouncer's pooled server connections.
PG_MAX_CONNECTIONS = 1200
FRONTEND_MAX_CONNECTIONS = 1100

# Big enough for a scale-10 pgbench database (about 160 MB), so that W1 reads
# from shared buffers for every target alike.
PG_SHARED_BUFFERS = "256MB"

_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0
_PGBENCH_INIT_TIMEOUT = 600.0


class BenchError(RuntimeError):
    """A server or client of the benchmark failed; the message says how."""


def client_env() -> dict[str, str]:
    """
    The environment for every client (pgbench, psql): no PG* variable from
    the caller's shell, TLS required, no GSSAPI probe (PgBouncer and pgtls
    would answer it with one more round trip than PostgreSQL's SSL path).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", PGSSLMODE="require", PGGSSENCMODE="disable")
    return env


@dataclass
class Target:
    """
    One front end under test, as the workloads see it.

    :param name: ``native``, ``pgbouncer``, ``pgtls`` or ``stunnel``.
    :param port: its TCP port on 127.0.0.1.
    :param root_pid: the process whose tree holds the front end's memory
        (the postmaster for native PostgreSQL, whose backends do the TLS).
    :param fresh: makes the front end a fresh process before W4, so that
        every round measures a process with the same history; None when each
        session gets a new process anyway (native PostgreSQL).
    :param release: frees what the front end keeps after W4's sessions
        close (PgBouncer's pooled server connections); None if nothing.
    """

    name: str
    port: int
    root_pid: Callable[[], int]
    fresh: Callable[[], None] | None = None
    release: Callable[[], None] | None = None

    @property
    def host(self) -> str:
        """Every target listens on loopback only."""
        return "127.0.0.1"

    def conninfo(self) -> str:
        """libpq conninfo for a TLS session to the bench database."""
        return (
            f"host={self.host} port={self.port} dbname={BENCH_DB} user={BENCH_USER} "
            "sslmode=require gssencmode=disable connect_timeout=10"
        )


# -- certificates ---------------------------------------------------------


def make_certificate(root: Path) -> tuple[Pki, Path, Path]:
    """
    Make a CA and an ECDSA P-256 server certificate for localhost/127.0.0.1.

    :param root: a directory to write ``ca.crt``, ``server.crt`` and
        ``server.key`` into.
    :returns: the Pki (pgtls's data directory takes its certificate from it)
        and the paths of the certificate and key, for PostgreSQL and PgBouncer.
    """
    pki = Pki(root)
    cert, key = root / "server.crt", root / "server.key"
    certs.write_pem(str(cert), pki.server.cert)
    certs.write_key(str(key), pki.server.key)
    return pki, cert, key


# -- PostgreSQL -----------------------------------------------------------


def start_postgres(cert: Path, key: Path, scale: int) -> PostgresServer:
    """
    Start the cluster (TLS on 127.0.0.1, Unix socket) and create the pgbench
    database at ``scale``.

    The caller must :meth:`PostgresServer.close` it, also when this raises.

    :raises BenchError: when pgbench -i fails.
    """
    server = PostgresServer(
        tcp=True,
        ssl_cert_file=cert,
        ssl_key_file=key,
        # TCP sessions must use TLS, as with the other two front ends.
        hba=("local all all trust", "hostssl all all 127.0.0.1/32 trust"),
        settings={
            "max_connections": str(PG_MAX_CONNECTIONS),
            "shared_buffers": PG_SHARED_BUFFERS,
        },
    )
    try:
        server.start()
        server.psql(f"CREATE DATABASE {BENCH_DB}")
        run_checked(
            [
                str(server.bindir / "pgbench"),
                "--initialize",
                "--quiet",
                f"--scale={scale}",
                f"--host={server.socket_dir}",
                f"--port={server.port}",
                f"--username={BENCH_USER}",
                BENCH_DB,
            ],
            timeout=_PGBENCH_INIT_TIMEOUT,
        )
    except BaseException:
        server.close()
        raise
    return server


def postmaster_pid(server: PostgresServer) -> int:
    """The postmaster's process id, from ``postmaster.pid``."""
    first_line = (server.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
    return int(first_line)


def run_checked(argv: list[str], *, timeout: float) -> str:
    """Run a client program; its stdout, or BenchError with what it said."""
    try:
        result = subprocess.run(
            argv,
            env=client_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{Path(argv[0]).name}: timed out after {timeout:.0f} s") from e
    if result.returncode != 0:
        raise BenchError(
            f"{Path(argv[0]).name} failed ({result.returncode}): "
            f"{(result.stdout + result.stderr).strip()}"
        )
    return result.stdout


# -- PgBouncer ------------------------------------------------------------


def _apt_install(package: str) -> None:
    # Stale package lists make the install fail: update once and try again.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", package]
    if subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=False).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdin=subprocess.DEVNULL, check=False)
        subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=False)


def find_program(package: str, *, install: bool = True) -> str:
    """
    The executable of Debian's ``package``, named as the package is (on PATH
    or in /usr/sbin); the package is installed with apt-get when it is
    missing, if allowed and running as root.

    :raises BenchError: when it is missing and cannot be installed; the
        message says what to install.
    """
    found = shutil.which(package) or shutil.which(package, path="/usr/sbin")
    if found:
        return found
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"bench: installing Debian's {package} package", file=sys.stderr)
        _apt_install(package)
        found = shutil.which(package, path="/usr/sbin:/usr/bin")
        if found:
            return found
    raise BenchError(
        f"{package} not found: install Debian's {package} package "
        f"(apt-get install {package}), run this as root (it installs it), "
        "or leave it out with --targets"
    )


class _Daemon:
    """
    A front end run in the foreground from its own directory, in a session
    of its own (as a service manager would run it), its output in a log.

    As root it runs as the ``postgres`` system user (the cluster's owner),
    with its files in a directory of its own: PgBouncer refuses root.
    """

    name: ClassVar[str]
    #: Debian's package, which installs a program of its name.
    package: ClassVar[str]
    #: Its configuration file, the one argument it runs with.
    config_file: ClassVar[str]
    version_flag: ClassVar[str] = "--version"

    def __init__(self, executable: str, root: Path, cert: Path, key: Path) -> None:
        """
        :param executable: its binary.
        :param root: an empty directory for its files (created here).
        :param cert: the server certificate; copied in as ``server.crt``.
        :param key: its private key; copied in as ``server.key``, owned by
            the front end's user.
        """
        self.executable = executable
        self.dir = root
        self.port = free_port()
        self.log_path = root / f"{self.name}.log"
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        root.mkdir(mode=0o700)
        self._chown(root)
        self._install(cert, root / "server.crt")
        self._install(key, root / "server.key")

    def argv(self) -> list[str]:
        """The command that runs it in the foreground."""
        return [self.executable, str(self.dir / self.config_file)]

    @property
    def pid(self) -> int:
        """The running front end's process id."""
        if self._process is None:
            raise BenchError(f"{self.name} is not running")
        return self._process.pid

    def _write(self, name: str, lines: list[str]) -> None:
        path = self.dir / name
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        self._chown(path)

    def _install(self, source: Path, target: Path) -> None:
        shutil.copyfile(source, target)
        target.chmod(0o600)
        self._chown(target)

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def start(self) -> None:
        """
        Start it and wait until its port accepts connections.

        :raises BenchError: when it exits or does not listen within 20 s;
            the message carries its log.
        """
        if self._process is not None:
            return
        self._log = self.log_path.open("ab")
        owner = self._owner
        self._process = subprocess.Popen(
            self.argv(),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=None if owner is None else owner.pw_uid,
            group=None if owner is None else owner.pw_gid,
            extra_groups=None if owner is None else [],
        )
        try:
            _wait_listening(self.port, lambda: self._process is None or self._exited())
        except BenchError as e:
            self.stop()
            raise BenchError(f"{self.name}: {e}\n{self.log_text()}") from None

    def _exited(self) -> bool:
        return self._process is not None and self._process.poll() is not None

    def stop(self) -> None:
        """Stop it at once (SIGTERM); a no-op if stopped."""
        if self._process is not None:
            _terminate(self._process)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop and start again on the same port: a fresh process."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        """Everything it logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class PgBouncer(_Daemon):
    """
    PgBouncer in session mode, TLS required from clients, relaying to the
    cluster over its Unix socket.
    """

    name = "pgbouncer"
    package = "pgbouncer"
    config_file = "pgbouncer.ini"

    def __init__(self, executable: str, root: Path, server: PostgresServer, cert: Path, key: Path):
        """Write the configuration (see :class:`_Daemon`); start nothing yet."""
        super().__init__(executable, root, cert, key)
        self._write("userlist.txt", [f'"{BENCH_USER}" ""'])
        self._write(self.config_file, self._ini(server))

    def _ini(self, server: PostgresServer) -> list[str]:
        return [
            "[databases]",
            f"{BENCH_DB} = host={server.socket_dir} port={server.port} "
            f"dbname={BENCH_DB} user={BENCH_USER}",
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            # No Unix socket of its own: clients come over TLS only.
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.dir / 'userlist.txt'}",
            f"admin_users = {BENCH_USER}",
            "pool_mode = session",
            f"max_client_conn = {FRONTEND_MAX_CONNECTIONS + 100}",
            f"default_pool_size = {FRONTEND_MAX_CONNECTIONS}",
            "client_tls_sslmode = require",
            f"client_tls_cert_file = {self.dir / 'server.crt'}",
            f"client_tls_key_file = {self.dir / 'server.key'}",
            # PostgreSQL's and pgtls's ssl_ecdh_curve default: the same key
            # exchange for all three (PgBouncer's "auto" would pick X25519).
            "client_tls_ecdhcurve = prime256v1",
            "ignore_startup_parameters = extra_float_digits",
            # PostgreSQL and pgtls log no connections by default either.
            "log_connections = 0",
            "log_disconnections = 0",
            "logfile =",
        ]


class Stunnel(_Daemon):
    """
    stunnel, a TLS relay written in C, as a reference for what a relay costs:
    it answers the SSLRequest itself (``protocol = pgsql``) and relays to the
    cluster over its Unix socket, one thread per connection.
    """

    name = "stunnel"
    package = "stunnel4"
    config_file = "stunnel.conf"
    version_flag = "-version"

    def __init__(self, executable: str, root: Path, server: PostgresServer, cert: Path, key: Path):
        """Write the configuration (see :class:`_Daemon`); start nothing yet."""
        super().__init__(executable, root, cert, key)
        lines = [
            "foreground = yes",
            "pid =",
            # Warnings only: no line per connection, as for the others.
            "debug = 4",
            "[postgresql]",
            f"accept = 127.0.0.1:{self.port}",
            f"connect = {server.socket_dir}/.s.PGSQL.{server.port}",
            "protocol = pgsql",
            f"cert = {root / 'server.crt'}",
            f"key = {root / 'server.key'}",
            # The others' key exchange (PostgreSQL's ssl_ecdh_curve default).
            "curves = prime256v1",
            "socket = l:TCP_NODELAY=1",
        ]
        self._write(self.config_file, lines)


# -- pgtls ----------------------------------------------------------------


def start_pgtls(
    root: Path, pki: Pki, server: PostgresServer, *, upstream: str | None = None
) -> PgtlsServer:
    """
    Start ``twistd pgtls`` on 127.0.0.1 in front of the cluster's Unix socket.

    :param root: its data directory (created here).
    :param upstream: its pgtls.upstream instead of the cluster's Unix socket
        (the TLS upstream leg's target).
    :raises BenchError: when it does not start.
    """
    port = free_port()
    datadir = make_datadir(
        root,
        pki,
        upstream or server.conninfo(),
        port=port,
        settings=[f"max_connections = {FRONTEND_MAX_CONNECTIONS}"],
    )
    pgtls = PgtlsServer(datadir, port, new_session=True)
    try:
        pgtls.start(timeout=_START_TIMEOUT)
    except RuntimeError as e:
        raise BenchError(f"pgtls: {e}") from None
    return pgtls


def restart_pgtls(pgtls: PgtlsServer) -> None:
    """Stop and start again on the same port: a fresh process."""
    pgtls.stop()
    try:
        pgtls.start(timeout=_START_TIMEOUT)
    except RuntimeError as e:
        raise BenchError(f"pgtls: {e}") from None


def pgtls_pid(pgtls: PgtlsServer) -> int:
    """The running twistd process's id."""
    if pgtls.process is None:
        raise BenchError("pgtls is not running")
    return pgtls.process.pid


class PgtlsPair:
    """
    Two ``twistd pgtls`` processes on one data directory and one port
    (``pgtls.so_reuseport = on``), as ``etc/pgtls@.service`` runs them: the
    kernel spreads the connections over them.  A ``/bin/sh`` starts both and
    is the root of their process tree, so that the workloads count the CPU
    and memory of both; each runs in a session of its own (``setsid``), as
    each instance of the unit has its own, so that the scheduler weighs them
    apart rather than as one.
    """

    # setsid(1) execs in place (a background job of a plain sh leads no
    # process group), so both stay the shell's children.  The shell waits
    # until both have exited, whatever signal interrupts a wait.
    _SCRIPT = (
        'setsid "$TWISTD" --nodaemon --pidfile= --logfile="$LOG0" pgtls -D "$PGTLS_DIR" & a=$!; '
        'setsid "$TWISTD" --nodaemon --pidfile= --logfile="$LOG1" pgtls -D "$PGTLS_DIR" & b=$!; '
        "trap 'kill -TERM $a $b 2>/dev/null' INT TERM; "
        "while kill -0 $a 2>/dev/null || kill -0 $b 2>/dev/null; do wait; done"
    )

    def __init__(self, root: Path, pki: Pki, server: PostgresServer) -> None:
        """
        :param root: their data directory (created here).
        """
        self.port = free_port()
        self.datadir = make_datadir(
            root,
            pki,
            server.conninfo(),
            port=self.port,
            settings=[f"max_connections = {FRONTEND_MAX_CONNECTIONS}", "pgtls.so_reuseport = on"],
        )
        self.logs = [root / "pgtls-0.log", root / "pgtls-1.log"]
        self._seen = [0, 0]  # what the logs held before the last start
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """
        Start both; wait until both have bound the port.

        :raises BenchError: when one exits or does not listen within 20 s.
        """
        if self._process is not None:
            return
        self._seen = [len(self._log(0)), len(self._log(1))]
        env = dict(
            os.environ,
            TWISTD=TWISTD,
            PGTLS_DIR=str(self.datadir),
            LOG0=str(self.logs[0]),
            LOG1=str(self.logs[1]),
        )
        self._process = subprocess.Popen(
            ["/bin/sh", "-c", self._SCRIPT],
            cwd=_REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not all(f"port {self.port}" in self._log(i, True) for i in (0, 1)):
            if self._process.poll() is not None or time.monotonic() > deadline:
                logs = "\n".join(self._log(i) for i in (0, 1))
                self.stop()
                raise BenchError(f"pgtls2: did not start\n{logs}")
            time.sleep(0.05)

    def _log(self, index: int, since_start: bool = False) -> str:
        try:
            text = self.logs[index].read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text[self._seen[index] :] if since_start else text

    @property
    def pid(self) -> int:
        """The shell's process id: the root of both pgtls processes' tree."""
        if self._process is None:
            raise BenchError("pgtls2 is not running")
        return self._process.pid

    def stop(self) -> None:
        """
        Stop both (SIGTERM, through the shell): a smart shutdown, quick with
        no session open, and the end of a process still starting (whose
        SIGINT a background job of ``sh`` ignores).
        """
        if self._process is not None:
            _terminate(self._process)
            self._process = None

    def restart(self) -> None:
        """Stop and start again on the same port: fresh processes."""
        self.stop()
        self.start()


# -- processes ------------------------------------------------------------


def _wait_listening(port: int, exited: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if exited():
            raise BenchError("exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"not listening on 127.0.0.1:{port} after {_START_TIMEOUT:.0f} s")


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(_STOP_TIMEOUT)
