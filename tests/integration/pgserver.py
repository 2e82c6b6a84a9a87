"""
A throwaway PostgreSQL cluster for the integration tests: the real upstream.

:class:`PostgresServer` runs Debian's server binaries
(``/usr/lib/postgresql/<newest major>/bin``) on a cluster of its own under a
temporary directory, so a system PostgreSQL service is never touched.  By
default it listens on a Unix socket only; with ``tcp=True`` (and optionally
certificate files) it also listens on 127.0.0.1, with ``ssl = on`` when a
certificate is given, for tests that compare pgtls with PostgreSQL's own SSL.

The cluster has a superuser ``postgres`` (trust over the socket and from
127.0.0.1), a role ``alice`` that must log in with a SCRAM password, and a
database ``pgtls_test`` owned by ``alice``.

initdb refuses to run as root, so when the tests run as root the server
binaries run as the ``postgres`` system user (``runuser``) and the temporary
directory belongs to that user; clients (psql, psycopg, pgtls) keep running
as root and reach the socket directory, which is world-searchable.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from ports import free_port

__all__ = [
    "ALICE",
    "ALICE_PASSWORD",
    "DEFAULT_HBA",
    "TEST_DB",
    "PostgresError",
    "PostgresNotInstalled",
    "PostgresServer",
    "find_bindir",
]

ALICE = "alice"
ALICE_PASSWORD = "alice-secret"
TEST_DB = "pgtls_test"

DEBIAN_ROOT = Path("/usr/lib/postgresql")
BINDIR_ENV = "PGTLS_PG_BINDIR"
_TOOLS = ("initdb", "pg_ctl", "pg_isready", "psql")

#: alice's rules come first: first match wins, and she must give her password.
DEFAULT_HBA = (
    f"local all {ALICE} scram-sha-256",
    "local all all trust",
    f"host all {ALICE} 127.0.0.1/32 scram-sha-256",
    "host all all 127.0.0.1/32 trust",
)

# Small and fast: the machine has two cores and the data is thrown away.
# max_connections is high because tests open 200 concurrent sessions.
_BASE_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "autovacuum": "off",
    "shared_buffers": "16MB",
    "max_connections": "300",
    "password_encryption": "scram-sha-256",
    "logging_collector": "off",
}

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 30.0
_LOG_TAIL_LINES = 40


class PostgresNotInstalled(RuntimeError):
    """The PostgreSQL server binaries (initdb, pg_ctl, ...) cannot be found."""


class PostgresError(RuntimeError):
    """initdb, pg_ctl or psql failed; the message carries their output."""


def _version_key(name: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return None


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in _TOOLS)


def find_bindir(*, root: Path = DEBIAN_ROOT, environ: Mapping[str, str] | None = None) -> Path:
    """
    Find the directory holding initdb, pg_ctl, pg_isready and psql.

    Order: ``$PGTLS_PG_BINDIR``; the newest major version under ``root``
    (Debian's ``/usr/lib/postgresql/<major>/bin``); the directory of
    ``pg_ctl`` on ``$PATH`` (other distributions).

    :param root: where Debian installs one directory per major version.
    :param environ: the environment to read; ``os.environ`` when None.
    :raises PostgresNotInstalled: when no such directory exists; the
        message says which package to install.
    """
    env = os.environ if environ is None else environ
    override = env.get(BINDIR_ENV)
    if override:
        if _has_tools(Path(override)):
            return Path(override)
        raise PostgresNotInstalled(
            f"${BINDIR_ENV}={override} does not hold all of {', '.join(_TOOLS)}"
        )
    versions = []
    if root.is_dir():
        for child in root.iterdir():
            key = _version_key(child.name)
            if key is not None and _has_tools(child / "bin"):
                versions.append((key, child / "bin"))
    if versions:
        return max(versions)[1]
    search_path = env.get("PATH")
    pg_ctl = shutil.which("pg_ctl", path=search_path) if search_path else None
    if pg_ctl is not None and _has_tools(Path(pg_ctl).parent):
        return Path(pg_ctl).parent
    raise PostgresNotInstalled(
        f"PostgreSQL server binaries ({', '.join(_TOOLS)}) not found in "
        f"{root}/<version>/bin, ${BINDIR_ENV} or $PATH: the integration tests "
        "need them; install Debian's postgresql package "
        "(apt-get install postgresql), or run scripts/test as root, which does"
    )


def _conf_value(value: str) -> str:
    # Every setting type accepts a quoted string in postgresql.conf.
    return "'" + value.replace("'", "''") + "'"


def _conninfo_value(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _client_env() -> dict[str, str]:
    # PG* variables from the caller's shell (PGHOST, PGSSLMODE, ...) would
    # redirect or change the test clients; drop them all.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


class PostgresServer:
    """
    A PostgreSQL cluster in a temporary directory, for one test session.

    ``start()`` runs initdb the first time, then starts the server and waits
    until it accepts connections; ``stop()`` stops it and keeps the data, so
    ``start()`` can bring it back; ``close()`` stops it and deletes the
    directory.  As a context manager it starts on entry and closes on exit.
    """

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        tcp: bool = False,
        ssl_cert_file: str | os.PathLike[str] | None = None,
        ssl_key_file: str | os.PathLike[str] | None = None,
        ssl_ca_file: str | os.PathLike[str] | None = None,
        hba: Sequence[str] = DEFAULT_HBA,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """
        Create the temporary directory and choose a port; start nothing yet.

        :param bindir: PostgreSQL's bin directory; :func:`find_bindir` if None.
        :param tcp: also listen on 127.0.0.1 at :attr:`port`.
        :param ssl_cert_file: server certificate (chain); turns ``ssl`` on,
            and needs ``tcp`` (PostgreSQL does no SSL on Unix sockets).
        :param ssl_key_file: the certificate's private key (unencrypted).
        :param ssl_ca_file: CA certificates for client certificates; when
            given the server asks every SSL client for a certificate.
        :param hba: pg_hba.conf lines, first match wins.
        :param settings: extra postgresql.conf settings, applied last.
        :raises PostgresNotInstalled: when ``bindir`` is None and no binaries
            are found.
        :raises ValueError: for inconsistent SSL arguments.
        """
        if (ssl_cert_file is None) != (ssl_key_file is None):
            raise ValueError("ssl_cert_file and ssl_key_file go together")
        if ssl_cert_file is None and ssl_ca_file is not None:
            raise ValueError("ssl_ca_file needs ssl_cert_file and ssl_key_file")
        if ssl_cert_file is not None and not tcp:
            raise ValueError("SSL needs tcp=True: PostgreSQL does no SSL on Unix sockets")
        self._bindir = find_bindir() if bindir is None else bindir
        self._tcp = tcp
        self._ssl_files = {
            "ssl_cert_file": ssl_cert_file,
            "ssl_key_file": ssl_key_file,
            "ssl_ca_file": ssl_ca_file,
        }
        self._hba = tuple(hba)
        self._extra_settings = dict(settings or {})
        self._owner = self._server_user()
        # One port number for the Unix socket and the TCP listener: free on
        # loopback even when TCP is off.
        self._port = free_port()
        self._base = Path(tempfile.mkdtemp(prefix="pgtls-pg-"))
        self._initialized = False
        self._running = False
        self._closed = False
        try:
            # 0755: any client user may reach the socket; the data directory
            # itself is 0700 (initdb insists).
            self._base.chmod(0o755)
            self._make_owned_dir(self.socket_dir, 0o755)
            self._chown(self._base)
        except BaseException:
            shutil.rmtree(self._base, ignore_errors=True)
            raise

    # -- properties -------------------------------------------------------

    @property
    def bindir(self) -> Path:
        """PostgreSQL's bin directory in use."""
        return self._bindir

    @property
    def base_dir(self) -> Path:
        """The temporary directory holding everything below."""
        return self._base

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (PGDATA)."""
        return self._base / "data"

    @property
    def socket_dir(self) -> str:
        """The Unix socket directory: libpq's ``host``."""
        return str(self._base / "sock")

    @property
    def port(self) -> int:
        """The port number: names the Unix socket, and the TCP port if any."""
        return self._port

    @property
    def socket_path(self) -> str:
        """The socket file itself, ``DIR/.s.PGSQL.PORT``."""
        return f"{self.socket_dir}/.s.PGSQL.{self._port}"

    @property
    def tcp_host(self) -> str | None:
        """``127.0.0.1`` when listening on TCP, else None."""
        return "127.0.0.1" if self._tcp else None

    @property
    def log_path(self) -> Path:
        """The server log file."""
        return self._base / "postgresql.log"

    @property
    def running(self) -> bool:
        """Whether :meth:`start` succeeded and no :meth:`stop` followed."""
        return self._running

    def conninfo(self) -> str:
        """``host=SOCKETDIR port=PORT``, the value for ``pgtls.upstream``."""
        return f"host={_conninfo_value(self.socket_dir)} port={self._port}"

    def log_text(self) -> str:
        """The whole server log so far ('' before the first start)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def settled_log(self, timeout: float = 10.0) -> str:
        """
        The server log once every earlier connection is in it: open and close
        one marked session over the socket and wait for its line.  Needs
        log_connections on.
        """
        import psycopg

        marker = f"control-{uuid.uuid4().hex}"
        psycopg.connect(
            host=self.socket_dir,
            port=self.port,
            user="postgres",
            dbname="postgres",
            application_name=marker,
            connect_timeout=max(1, int(timeout)),
        ).close()
        deadline = time.monotonic() + timeout
        while f"application_name={marker}" not in (log := self.log_text()):
            if time.monotonic() > deadline:
                raise PostgresError("log_connections is not in effect upstream")
            time.sleep(0.05)
        return log

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """
        Start the server (initdb first, the first time) and wait until it
        accepts connections.  A no-op when already running.

        :raises PostgresError: when initdb or pg_ctl fails or the server does
            not accept connections within about 30 s; the message ends with
            the tail of the server log.
        """
        if self._closed:
            raise PostgresError("this PostgresServer is closed")
        if self._running:
            return
        first = not self._initialized
        if first:
            self._initdb()
        deadline = time.monotonic() + _START_TIMEOUT
        try:
            self._pg_ctl("start", "-w", "-t", str(int(_START_TIMEOUT)), "-l", str(self.log_path))
        except PostgresError:
            self._kill_quietly()
            raise
        self._running = True
        self._wait_ready(deadline)
        if first:
            self._create_test_objects()

    def stop(self, *, mode: str = "fast") -> None:
        """
        Stop the server and keep its data; :meth:`start` brings it back.

        :param mode: pg_ctl's shutdown mode: ``fast`` (ends sessions, clean
            shutdown), ``immediate`` (like a crash) or ``smart``.
        :raises PostgresError: when pg_ctl fails.
        """
        if not self._running:
            return
        self._pg_ctl("stop", "-w", "-t", str(int(_STOP_TIMEOUT)), "-m", mode)
        self._running = False

    def restart(self, *, mode: str = "fast") -> None:
        """:meth:`stop` then :meth:`start`, keeping the data and the port."""
        self.stop(mode=mode)
        self.start()

    def close(self) -> None:
        """Stop the server at once and delete the temporary directory."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop(mode="immediate")
        finally:
            shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- clients ----------------------------------------------------------

    def psql(
        self,
        sql: str,
        *,
        db: str = "postgres",
        user: str = "postgres",
        password: str | None = None,
    ) -> str:
        """
        Run ``sql`` through psql over the Unix socket, as the current OS user.

        Statements run one by one (each in its own transaction, so CREATE
        DATABASE works); output is unaligned, tuples only, ``|`` between
        columns, one row per line, without the final newline.

        :param sql: one or more SQL statements.
        :param db: database name.
        :param user: PostgreSQL role.
        :param password: sent when the server asks (alice's SCRAM rule).
        :raises PostgresError: when psql fails (connection or SQL error),
            with psql's stderr.
        """
        env = _client_env()
        if password is not None:
            env["PGPASSWORD"] = password
        argv = [
            str(self._bindir / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--no-align",
            "--tuples-only",
            "--no-password",
            "--set=ON_ERROR_STOP=1",
            f"--host={self.socket_dir}",
            f"--port={self._port}",
            f"--username={user}",
            f"--dbname={db}",
            "--file=-",
        ]
        result = subprocess.run(
            argv, input=sql, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise PostgresError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.removesuffix("\n")

    def run_until_exit(self, timeout: float) -> subprocess.CompletedProcess[str]:
        """
        Run ``postgres -D`` on the stopped cluster in the foreground, as the
        server's user, until it exits: for a start that must fail.  Its
        output (stderr: the log, as no log file is set on the command line)
        is in the result.
        """
        argv = [str(self._bindir / "postgres"), "-D", str(self.data_dir)]
        if self._owner is not None:
            argv = ["runuser", "-u", self._owner.pw_name, "--", *argv]
        return subprocess.run(
            argv,
            cwd=self._base,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            timeout=timeout,
            check=False,
        )

    # -- internals --------------------------------------------------------

    @staticmethod
    def _server_user() -> pwd.struct_passwd | None:
        """The system user to run the server as, or None for ourselves."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresNotInstalled(
                "running as root, but there is no 'postgres' system user to run "
                "initdb as; install Debian's postgresql package, which creates it"
            ) from None

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def _make_owned_dir(self, path: str | Path, mode: int) -> None:
        os.mkdir(path, mode)
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask
        self._chown(Path(path))

    def _run_server_tool(self, tool: str, *args: str, timeout: float) -> str:
        """Run a server binary as the server's user; return its output."""
        argv = [str(self._bindir / tool), *args]
        if self._owner is not None:
            argv = ["runuser", "-u", self._owner.pw_name, "--", *argv]
        try:
            result = subprocess.run(
                argv,
                cwd=self._base,  # the server user may not be able to enter ours
                env=_client_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise PostgresError(f"{tool} {' '.join(args)}: timed out{self._log_tail()}") from e
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise PostgresError(
                f"{tool} {' '.join(args)} failed ({result.returncode}): {output}{self._log_tail()}"
            )
        return result.stdout

    def _pg_ctl(self, *args: str) -> None:
        self._run_server_tool(
            "pg_ctl", "-D", str(self.data_dir), *args, timeout=_START_TIMEOUT + 15
        )

    def _kill_quietly(self) -> None:
        # A start that timed out may have left a postmaster behind.
        with contextlib.suppress(PostgresError):
            self._pg_ctl("stop", "-w", "-m", "immediate")

    def _log_tail(self) -> str:
        lines = self.log_text().splitlines()[-_LOG_TAIL_LINES:]
        if not lines:
            return ""
        return f"\n--- tail of {self.log_path} ---\n" + "\n".join(lines)

    def _initdb(self) -> None:
        self._run_server_tool(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            timeout=120,
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# pgtls integration tests\n")
            for name, value in self._settings().items():
                conf.write(f"{name} = {_conf_value(value)}\n")
        (self.data_dir / "pg_hba.conf").write_text("\n".join(self._hba) + "\n")
        self._initialized = True

    def _settings(self) -> dict[str, str]:
        settings = {
            "listen_addresses": "127.0.0.1" if self._tcp else "",
            "port": str(self._port),
            "unix_socket_directories": self.socket_dir,
            **_BASE_SETTINGS,
        }
        if self._ssl_files["ssl_cert_file"] is not None:
            settings["ssl"] = "on"
            settings.update(self._install_ssl_files())
        settings.update(self._extra_settings)
        return settings

    def _install_ssl_files(self) -> dict[str, str]:
        # PostgreSQL refuses a key that its own user does not own (or that is
        # group/world readable): copy the files in, owned by the server user.
        ssl_dir = self._base / "ssl"
        self._make_owned_dir(ssl_dir, 0o700)
        paths = {}
        for setting, source in self._ssl_files.items():
            if source is None:
                continue
            target = ssl_dir / setting.removeprefix("ssl_").removesuffix("_file")
            shutil.copyfile(source, target)
            target.chmod(0o600)
            self._chown(target)
            paths[setting] = str(target)
        return paths

    def _wait_ready(self, deadline: float) -> None:
        # pg_ctl -w already waited; this also proves the socket answers us.
        argv = [
            str(self._bindir / "pg_isready"),
            f"--host={self.socket_dir}",
            f"--port={self._port}",
            "--dbname=postgres",
            "--username=postgres",
            "--timeout=2",
            "--quiet",
        ]
        while True:
            result = subprocess.run(argv, env=_client_env(), capture_output=True, check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"PostgreSQL at {self.socket_path} not accepting connections "
                    f"after {_START_TIMEOUT:.0f} s{self._log_tail()}"
                )
            time.sleep(0.1)

    def _create_test_objects(self) -> None:
        self.psql(f"CREATE ROLE {ALICE} LOGIN PASSWORD '{ALICE_PASSWORD}'")
        self.psql(f"CREATE DATABASE {TEST_DB} OWNER {ALICE}")
