"""
Keys and certificates end to end (issue 3): a real ``twistd pgtls`` process,
real libpq clients (psql 15, psycopg's libpq 18) and real ``openssl``.

- The passphrase of an encrypted server.key: asked on the controlling
  terminal (a pseudo-terminal here) before twistd daemonizes, or obtained
  from ssl_passphrase_command; never logged.
- Start-up refusals: one line on stderr, exit status 1 (twistd prints the
  SystemExit that makeService raises), in PostgreSQL's words (its
  src/backend/libpq/be-secure-openssl.c, be_tls_init).
- root.crt / root.crl and ``pgtls.clientcert``, with pg_hba.conf's ``cert``
  and ``clientcert=verify-ca`` (PostgreSQL's src/backend/libpq/hba.c and
  auth.c).
- The key and certificate made by PostgreSQL 8.2's manual recipe.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from OpenSSL import crypto
from pgserver import PostgresServer
from pgtlsproc import REPO, PgtlsServer, Pki, free_port, make_datadir

from pgtls.tls import certs

# Bounds every wait: a server that hangs fails the test instead.
TIMEOUT = 20.0
ROOT = os.geteuid() == 0

#: What OpenSSL asks, and PostgreSQL substitutes for %p (be-secure-openssl.c's
#: ssl_external_passwd_cb, be-secure-common.c's run_ssl_passphrase_command).
PROMPT = "Enter PEM pass phrase:"
SECRET = "s3cret pass phrase"

KEY_MODE_DETAIL = (
    "File must have permissions u=rw (0600) or less if owned by the database user, "
    "or permissions u=rw,g=r (0640) or less if owned by root."
)

CERT_HBA = (
    # cert implies clientcert=verify-full: the CN must be the user.
    "hostssl pgtls_test all 127.0.0.1/32 cert",
    "hostssl template1 all 127.0.0.1/32 trust clientcert=verify-ca",
    "hostssl postgres all 127.0.0.1/32 trust",
    "hostnossl postgres all 127.0.0.1/32 trust",
)


# --- clients -----------------------------------------------------------------


def conninfo(**params: str | int) -> str:
    """A libpq connection string, every value quoted."""

    def quote(value: str | int) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{name}={quote(value)}" for name, value in params.items())


def client_env(home: Path) -> dict[str, str]:
    """The environment minus PG* variables, with a HOME without ~/.postgresql."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(HOME=str(home), LC_ALL="C")
    return env


def psql(home: Path, **params: str | int) -> subprocess.CompletedProcess[str]:
    """``psql -w -Atc 'select current_user'`` with these connection parameters."""
    params = {"host": "localhost", "user": "postgres", "dbname": "postgres", **params}
    params.setdefault("connect_timeout", 10)
    return subprocess.run(
        ["psql", "-w", conninfo(**params), "-Atc", "select current_user"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=client_env(home),
    )


def assert_psql_connects(home: Path, **params: str | int) -> None:
    done = psql(home, **params)
    assert (done.returncode, done.stdout, done.stderr) == (0, "postgres\n", ""), done


def psycopg_error(**params: str | int) -> str | None:
    """Connect with psycopg's libpq; None if ``select current_user`` works, else the error."""
    params = {"host": "localhost", "user": "postgres", "dbname": "postgres", **params}
    try:
        with psycopg.connect(conninfo(**params), connect_timeout=10) as conn:
            row = conn.execute("select current_user").fetchone()
    except psycopg.OperationalError as error:
        return str(error)
    assert row == ("postgres",)
    return None


# --- twistd runs -----------------------------------------------------------------


def twistd_argv(datadir: Path, *, daemon: bool = False) -> list[str]:
    """``twistd [-n] pgtls -D DIR`` logging to DIR/pgtls.log."""
    argv = PgtlsServer(datadir, 0).command()
    if daemon:
        argv.remove("--nodaemon")
        argv[argv.index("--pidfile=")] = f"--pidfile={datadir / 'twistd.pid'}"
    return argv


def start_without_terminal(datadir: Path) -> subprocess.CompletedProcess[str]:
    """Run twistd pgtls with no controlling terminal and stdin /dev/null; it must exit."""
    return subprocess.run(
        twistd_argv(datadir),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=TIMEOUT,
    )


def assert_refused(datadir: Path, message: str) -> None:
    """twistd pgtls exits with status 1 and ``pgtls: message`` as its only output."""
    done = start_without_terminal(datadir)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"pgtls: {message}\n")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_listening(port: int, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not listening(port):
        assert alive(), "pgtls exited instead of listening"
        assert time.monotonic() < deadline, f"pgtls did not listen on {port}"
        time.sleep(0.05)


def stop_and_output(server: PgtlsServer) -> str:
    """Stop a PgtlsServer and return what it printed (stdout and stderr)."""
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    out, _ = server.process.communicate(timeout=TIMEOUT)
    server.stop()
    return out.decode()


class Terminal:
    """A command whose controlling terminal is a new pseudo-terminal we type on."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec at once, never return into pytest
            try:
                os.chdir(REPO)
                os.execv(argv[0], list(argv))
            finally:
                os._exit(127)
        self.output = b""
        self.status: int | None = None
        self._eof = False

    def _poll_exit(self) -> None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)

    def _read(self, timeout: float) -> bool:
        """Read what the terminal shows within ``timeout``; whether anything came."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: every process has closed the terminal
            chunk = b""
        self.output += chunk
        self._eof = not chunk
        return bool(chunk)

    def _pump(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            self._poll_exit()
            if self._eof and self.status is not None:
                return
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"terminal timed out; output so far: {self.output!r}"
            if self._eof:
                time.sleep(0.05)
            else:
                self._read(min(remaining, 0.1))

    def drain(self) -> None:
        """Read whatever the terminal has shown so far."""
        while not self._eof and self._read(0):
            pass
        self._poll_exit()

    @property
    def text(self) -> str:
        """Everything the terminal has shown so far."""
        self.drain()
        return self.output.decode()

    def expect_prompts(self, count: int) -> None:
        """Wait until the prompt has been shown ``count`` times in all."""
        self._pump(lambda: self.output.count(PROMPT.encode()) >= count, TIMEOUT)
        assert self.output.count(PROMPT.encode()) == count, self.output

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def running(self) -> bool:
        self.drain()
        return self.status is None

    def wait(self) -> int:
        """Wait for the command to exit and its output to end; its exit status."""
        self._pump(lambda: self._eof and self.status is not None, TIMEOUT)
        assert self.status is not None
        return self.status

    def close(self) -> None:
        if self.running():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.wait()
            except AssertionError:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    """Terminals opened by the test; their commands are stopped after it."""
    opened: list[Terminal] = []
    try:
        yield opened
    finally:
        for terminal in opened:
            terminal.close()


def on_terminal(terminals: list[Terminal], argv: Sequence[str]) -> Terminal:
    terminal = Terminal(argv)
    terminals.append(terminal)
    return terminal


# --- data directories -------------------------------------------------------------


def replace_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def encrypt_server_key(
    datadir: Path, pki: Pki, passphrase: str = SECRET, *, wrong: Sequence[str] = ()
) -> Path:
    """
    Replace DIR/server.key with the same key, encrypted (PKCS#8), such that
    each passphrase in ``wrong`` fails OpenSSL's padding check ("bad decrypt").

    A wrong passphrase decrypts to garbage that passes that check about once
    in 256 salts; OpenSSL then names an ASN.1 error instead (pgtls reports
    either, as PostgreSQL does), so such a salt is drawn again.
    """
    path = datadir / "server.key"
    for _ in range(20):
        pem = certs.key_pem(pki.server.key, passphrase.encode())
        if all(_fails_padding(pem, guess) for guess in wrong):
            break
    replace_file(path, pem)
    return path


def _fails_padding(pem: bytes, guess: str) -> bool:
    try:
        crypto.load_privatekey(crypto.FILETYPE_PEM, pem, guess.encode())
    except crypto.Error as error:
        return "bad decrypt" in str(error)
    return False


def passphrase_command(datadir: Path, passphrase: str = SECRET) -> str:
    """
    An ssl_passphrase_command setting: writes its %p and %% expansions to
    DIR/argument and prints a file whose first line is the passphrase.
    """
    (datadir / "passphrase").write_text(f"{passphrase}\nnot the passphrase\n")
    return (
        f"ssl_passphrase_command = "
        f'\'echo "%p" "100%%" > {datadir}/argument; cat {datadir}/passphrase\''
    )


@pytest.fixture
def datadir(pgtls) -> Callable[..., Path]:
    """Makes a data directory (see PgtlsLauncher.datadir); returns its path."""
    return pgtls.datadir


# --- the passphrase on the terminal -------------------------------------------------


def test_terminal_asks_again_after_a_wrong_passphrase(
    pgtls, pki: Pki, terminals: list[Terminal], tmp_path: Path
) -> None:
    """
    An encrypted key: twistd asks on the terminal with echo off, asks again
    after a wrong passphrase, and serves once the right one is typed.  The
    passphrase appears neither on the terminal nor in the log.  SIGHUP does
    not ask again: the key is read at start only.
    """
    port = free_port()
    datadir = pgtls.datadir(port=port)
    encrypt_server_key(datadir, pki)
    terminal = on_terminal(terminals, twistd_argv(datadir))
    terminal.expect_prompts(1)
    assert not listening(port)
    terminal.type("wrong guess")
    terminal.expect_prompts(2)
    terminal.type(SECRET)
    wait_listening(port, terminal.running)
    assert_psql_connects(tmp_path, port=port, sslmode="verify-full", sslrootcert=pki.ca_file)
    assert terminal.text.split("\r\n") == [PROMPT, PROMPT, ""]

    os.kill(terminal.pid, signal.SIGHUP)
    server = PgtlsServer(datadir, port)
    log = server.wait_for_log("received SIGHUP, reloading configuration files")
    assert_psql_connects(tmp_path, port=port, sslmode="verify-full", sslrootcert=pki.ca_file)
    assert terminal.text.split("\r\n") == [PROMPT, PROMPT, ""]
    assert "listening on IPv4" in log
    assert "wrong guess" not in log
    assert SECRET not in log


def test_three_wrong_passphrases_refuse_to_start(pgtls, pki: Pki, terminals) -> None:
    """After three wrong passphrases twistd exits 1 with one line naming the key."""
    datadir = pgtls.datadir()
    encrypt_server_key(datadir, pki, wrong=[f"wrong {attempt}" for attempt in range(1, 4)])
    terminal = on_terminal(terminals, twistd_argv(datadir))
    for attempt in range(1, 4):
        terminal.expect_prompts(attempt)
        terminal.type(f"wrong {attempt}")
    assert terminal.wait() == 1
    assert terminal.text.split("\r\n") == [
        PROMPT,
        PROMPT,
        PROMPT,
        'pgtls: could not load private key file "server.key": bad decrypt',
        "",
    ]


def test_passphrase_is_asked_before_daemonizing(pgtls, pki: Pki, terminals, tmp_path) -> None:
    """
    Without --nodaemon the passphrase is asked in the foreground; the
    foreground process exits 0 once the daemon runs, and the daemon serves.
    """
    port = free_port()
    datadir = pgtls.datadir(port=port)
    encrypt_server_key(datadir, pki)
    pidfile = datadir / "twistd.pid"
    terminal = on_terminal(terminals, twistd_argv(datadir, daemon=True))
    try:
        terminal.expect_prompts(1)
        assert not pidfile.exists()
        terminal.type(SECRET)
        assert terminal.wait() == 0
        assert terminal.text.split("\r\n") == [PROMPT, ""]
        wait_listening(port, lambda: True)
        daemon = int(pidfile.read_text())
        assert daemon != terminal.pid
        assert_psql_connects(tmp_path, port=port, sslmode="verify-full", sslrootcert=pki.ca_file)
    finally:
        stop_daemon(pidfile)
    assert SECRET not in (datadir / "pgtls.log").read_text()


def stop_daemon(pidfile: Path) -> None:
    """SIGTERM the daemon named in pidfile (if any) and wait until it is gone."""
    deadline = time.monotonic() + TIMEOUT
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_no_terminal_and_no_command_refuses_to_start(pgtls, pki: Pki) -> None:
    """
    An encrypted key, no controlling terminal and no ssl_passphrase_command:
    twistd exits 1 at once, saying how to give the passphrase.
    """
    datadir = pgtls.datadir()
    encrypt_server_key(datadir, pki)
    assert_refused(
        datadir,
        'could not load private key file "server.key": no terminal to ask for its pass phrase '
        "(No such device or address): run pgtls in the foreground on a terminal, or set "
        "ssl_passphrase_command",
    )


def test_no_terminal_names_the_key_as_postgresql_15_does(pgtls, pki: Pki, tmp_path: Path) -> None:
    """
    PostgreSQL 15 with the same encrypted server.key, no terminal and no
    ssl_passphrase_command stops with ``could not load private key file
    "server.key": …``, the name as ssl_key_file gives it; pgtls's line begins
    with the same words (its reason says why, where OpenSSL's says
    "processing error").
    """
    crt, plain = tmp_path / "server.crt", tmp_path / "plain.key"
    certs.write_pem(str(crt), pki.server.cert)
    certs.write_key(str(plain), pki.server.key)
    with PostgresServer(tcp=True, ssl_cert_file=crt, ssl_key_file=plain) as postgres:
        postgres.stop()
        key = postgres.data_dir / "server.key"
        certs.write_key(str(key), pki.server.key, passphrase=SECRET.encode())
        with (postgres.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("ssl_key_file = 'server.key'\n")
        if ROOT:
            owner = postgres.data_dir.stat()
            os.chown(key, owner.st_uid, owner.st_gid)
        done = postgres.run_until_exit(timeout=TIMEOUT * 3)
    assert done.returncode != 0
    (fatal,) = re.findall(r"FATAL:  (could not load private key file .*)", done.stderr)
    prefix = 'could not load private key file "server.key": '
    assert fatal.startswith(prefix), done.stderr

    datadir = pgtls.datadir()
    encrypt_server_key(datadir, pki)
    refused = start_without_terminal(datadir)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"pgtls: {prefix}"), refused.stderr


# --- ssl_passphrase_command -------------------------------------------------------------


def test_passphrase_command_decrypts_the_key(pgtls, pki: Pki, tmp_path: Path) -> None:
    """
    ssl_passphrase_command runs with %p as the prompt and %% as %, without a
    terminal; the first line of its output is the passphrase.  Neither the
    passphrase nor the rest of the output is logged or printed.
    """
    port = free_port()
    datadir = pgtls.datadir(port=port)
    encrypt_server_key(datadir, pki)
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write(passphrase_command(datadir) + "\n")
    server = PgtlsServer(datadir, port)
    pgtls.servers.append(server)
    server.start()
    assert (datadir / "argument").read_text() == f"{PROMPT} 100%\n"
    assert_psql_connects(tmp_path, port=port, sslmode="verify-full", sslrootcert=pki.ca_file)
    output = stop_and_output(server)
    for text in (output, server.log_text()):
        assert SECRET not in text
        assert "not the passphrase" not in text


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            "exit 3",
            'could not load private key file "server.key": '
            'command "exit 3" failed: child process exited with exit code 3',
        ),
        (
            "kill -9 $$",
            'could not load private key file "server.key": '
            'command "kill -9 $$" failed: child process was terminated by signal 9: Killed',
        ),
        ("echo wrong", 'could not load private key file "server.key": bad decrypt'),
    ],
    ids=["exit-3", "killed", "wrong-passphrase"],
)
def test_failing_passphrase_command_refuses_to_start(
    pgtls, pki: Pki, command: str, message: str
) -> None:
    """A passphrase command that fails or prints a wrong passphrase stops the start."""
    datadir = pgtls.datadir(settings=[f"ssl_passphrase_command = '{command}'"])
    encrypt_server_key(datadir, pki, wrong=["wrong"])
    assert_refused(datadir, message)


# --- start-up refusals --------------------------------------------------------------------

GROUP_OR_WORLD = [0o644, 0o604, 0o660, 0o606] + ([] if ROOT else [0o640])


@pytest.mark.parametrize("mode", GROUP_OR_WORLD, ids=oct)
def test_group_or_world_accessible_key_refuses_to_start(datadir, mode: int) -> None:
    """A key others may access stops the start with PostgreSQL's message and DETAIL."""
    path = datadir()
    key = path / "server.key"
    key.chmod(mode)
    assert_refused(
        path, f'private key file "server.key" has group or world access: {KEY_MODE_DETAIL}'
    )


@pytest.mark.skipif(not ROOT, reason="needs root to own the key and run pgtls")
def test_root_owned_key_may_be_group_readable(pgtls) -> None:
    """As in PostgreSQL, a key owned by root may be 0640: pgtls starts."""
    port = free_port()
    datadir = pgtls.datadir(port=port)
    (datadir / "server.key").chmod(0o640)
    server = PgtlsServer(datadir, port)
    pgtls.servers.append(server)
    server.start()


@pytest.mark.skipif(not ROOT, reason="needs root to give the key to another user")
def test_key_owned_by_another_user_refuses_to_start(datadir) -> None:
    """A key owned by neither pgtls's user nor root stops the start."""
    path = datadir()
    key = path / "server.key"
    os.chown(key, 4242, 4242)
    assert_refused(path, 'private key file "server.key" must be owned by the database user or root')


def _missing_cert(path: Path) -> str:
    (path / "server.crt").unlink()
    return 'could not load server certificate file "server.crt": No such file or directory'


def _missing_key(path: Path) -> str:
    (path / "server.key").unlink()
    return 'could not access private key file "server.key": No such file or directory'


def _mismatched_key(path: Path) -> str:
    replace_file(path / "server.key", certs.key_pem(certs.make_ca("stranger").key))
    return (
        "check of private key failed: key values mismatch: "
        'private key file "server.key" is not the key of the server certificate'
    )


def _bad_root_crt(path: Path) -> str:
    (path / "root.crt").write_text("this is not a certificate\n")
    return 'could not load root certificate file "root.crt": no certificate or crl found'


def _bad_root_crl(path: Path) -> str:
    (path / "root.crl").write_text("this is not a CRL\n")
    return (
        'could not load SSL certificate revocation list file "root.crl": '
        "no certificate or crl found"
    )


def _explicit_missing_ca_file(path: Path) -> str:
    with (path / "postgresql.conf").open("a") as conf:
        conf.write("ssl_ca_file = 'clients.crt'\n")
    return 'could not load root certificate file "clients.crt": No such file or directory'


@pytest.mark.parametrize(
    "spoil",
    [
        _missing_cert,
        _missing_key,
        _mismatched_key,
        _bad_root_crt,
        _bad_root_crl,
        _explicit_missing_ca_file,
    ],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_bad_ssl_files_refuse_to_start(datadir, spoil: Callable[[Path], str]) -> None:
    """A missing, mismatched or malformed SSL file: exit 1 with PostgreSQL's one line."""
    path = datadir(client_ca=True)
    message = spoil(path)
    assert_refused(path, message)


# --- PostgreSQL 8.2's recipe ------------------------------------------------------------

RECIPE_PASSPHRASE = "recipe pass phrase"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    The PostgreSQL 8.2 manual's commands (runtime.sgml, "Creating a
    Self-Signed Certificate"), made non-interactive: a directory with
    privkey.pem (encrypted), server.key (decrypted, og-rwx), server.req and
    server.crt (self-signed, CN = localhost, with -text output before the PEM);
    and both keys again in the traditional format OpenSSL wrote then
    (server-traditional.key, privkey-traditional.pem).
    """
    directory = tmp_path_factory.mktemp("recipe")
    commands = [
        [
            "openssl", "req", "-new", "-text", "-out", "server.req",
            "-subj", "/CN=localhost", "-passout", f"pass:{RECIPE_PASSPHRASE}",
        ],
        [
            "openssl", "rsa", "-in", "privkey.pem", "-out", "server.key",
            "-passin", f"pass:{RECIPE_PASSPHRASE}",
        ],
        ["openssl", "req", "-x509", "-in", "server.req", "-text", "-key", "server.key",
         "-out", "server.crt"],
        ["chmod", "og-rwx", "server.key"],
        # OpenSSL of 8.2's time wrote keys in the traditional format.
        [
            "openssl", "rsa", "-in", "privkey.pem", "-passin", f"pass:{RECIPE_PASSPHRASE}",
            "-traditional", "-out", "server-traditional.key",
        ],
        [
            "openssl", "rsa", "-in", "privkey.pem", "-passin", f"pass:{RECIPE_PASSPHRASE}",
            "-traditional", "-des3", "-passout", f"pass:{RECIPE_PASSPHRASE}",
            "-out", "privkey-traditional.pem",
        ],
    ]  # fmt: skip
    for argv in commands:
        subprocess.run(argv, cwd=directory, capture_output=True, check=True, timeout=TIMEOUT)
    assert "BEGIN RSA PRIVATE KEY" in (directory / "server-traditional.key").read_text()
    assert "Proc-Type: 4,ENCRYPTED" in (directory / "privkey-traditional.pem").read_text()
    assert (directory / "server.crt").read_text().startswith("Certificate:\n")
    assert "ENCRYPTED" in (directory / "privkey.pem").read_text()
    return directory


def recipe_datadir(pgtls, recipe: Path, key: str, *settings: str) -> tuple[Path, int]:
    """A data directory with the recipe's server.crt and ``key`` as server.key."""
    port = free_port()
    path = pgtls.datadir(port=port, settings=list(settings))
    replace_file(path / "server.crt", (recipe / "server.crt").read_bytes(), 0o644)
    replace_file(path / "server.key", (recipe / key).read_bytes())
    return path, port


@pytest.mark.parametrize("key", ["server.key", "server-traditional.key"])
def test_postgresql_82_recipe_is_accepted(pgtls, recipe: Path, key: str, tmp_path: Path) -> None:
    """
    The 8.2 recipe's server.key and server.crt serve psql: sslmode=require,
    and verify-full against server.crt itself (its CN is the host name).
    """
    path, port = recipe_datadir(pgtls, recipe, key)
    server = PgtlsServer(path, port)
    pgtls.servers.append(server)
    server.start()
    assert_psql_connects(tmp_path, port=port, sslmode="require")
    assert_psql_connects(
        tmp_path, port=port, sslmode="verify-full", sslrootcert=recipe / "server.crt"
    )


@pytest.mark.parametrize("key", ["privkey.pem", "privkey-traditional.pem"])
def test_recipe_encrypted_key_with_passphrase_command(
    pgtls, recipe: Path, key: str, tmp_path: Path
) -> None:
    """The recipe's privkey.pem, kept encrypted as server.key, opens with ssl_passphrase_command."""
    path, port = recipe_datadir(pgtls, recipe, key)
    with (path / "postgresql.conf").open("a") as conf:
        conf.write(passphrase_command(path, RECIPE_PASSPHRASE) + "\n")
    server = PgtlsServer(path, port)
    pgtls.servers.append(server)
    server.start()
    assert_psql_connects(tmp_path, port=port, sslmode="require")
    assert RECIPE_PASSPHRASE not in stop_and_output(server) + server.log_text()


def test_recipe_encrypted_key_on_the_terminal(pgtls, recipe: Path, terminals, tmp_path) -> None:
    """The recipe's privkey.pem, kept encrypted as server.key, opens with the terminal prompt."""
    path, port = recipe_datadir(pgtls, recipe, "privkey.pem")
    terminal = on_terminal(terminals, twistd_argv(path))
    terminal.expect_prompts(1)
    terminal.type(RECIPE_PASSPHRASE)
    wait_listening(port, terminal.running)
    assert_psql_connects(tmp_path, port=port, sslmode="require")


# --- client certificates --------------------------------------------------------------------


@dataclass(frozen=True)
class ClientFiles:
    """(certificate, key) paths per kind of client certificate."""

    good: tuple[str, str]
    alice: tuple[str, str]
    other_ca: tuple[str, str]
    revoked: tuple[str, str]
    crl: x509.CertificateRevocationList


@pytest.fixture(scope="module")
def clients(pki: Pki) -> ClientFiles:
    """Certificates for user postgres (one good, one revoked, one from another CA) and alice."""
    revoked = pki.client("postgres")
    with open(revoked[0], "rb") as f:
        revoked_cert = x509.load_pem_x509_certificate(f.read())
    return ClientFiles(
        good=pki.client("postgres"),
        alice=pki.client("alice"),
        other_ca=pki.client("postgres", ca=pki.other_ca),
        revoked=revoked,
        crl=certs.make_crl(pki.ca, [revoked_cert]),
    )


def _client_ca_server(
    path: Path, pki: Pki, postgres: PostgresServer, clients: ClientFiles, settings: list[str]
) -> Iterator[PgtlsServer]:
    port = free_port()
    datadir = make_datadir(
        path,
        pki,
        postgres.conninfo(),
        port=port,
        client_ca=True,
        hba_lines=CERT_HBA,
        settings=["log_connections = on", *settings],
    )
    certs.write_pem(str(datadir / "root.crl"), clients.crl)
    with PgtlsServer(datadir, port) as server:
        yield server


@pytest.fixture(scope="module")
def required(tmp_path_factory, pki, postgres, clients) -> Iterator[PgtlsServer]:
    """root.crt and root.crl, pgtls.clientcert left at its default (required)."""
    path = tmp_path_factory.mktemp("required")
    yield from _client_ca_server(path, pki, postgres, clients, [])


@pytest.fixture(scope="module")
def optional(tmp_path_factory, pki, postgres, clients) -> Iterator[PgtlsServer]:
    """root.crt and root.crl, pgtls.clientcert = optional."""
    path = tmp_path_factory.mktemp("optional")
    yield from _client_ca_server(path, pki, postgres, clients, ["pgtls.clientcert = optional"])


@pytest.fixture(scope="module")
def no_ca(tmp_path_factory, pki, postgres) -> Iterator[PgtlsServer]:
    """No root.crt: no client certificate is requested."""
    port = free_port()
    path = tmp_path_factory.mktemp("no_ca")
    datadir = make_datadir(path, pki, postgres.conninfo(), port=port, hba_lines=CERT_HBA)
    with PgtlsServer(datadir, port) as server:
        yield server


# What a client is told: OK, or a regular expression its error must match.
OK = "ok"
NO_CLIENT_CERT = re.escape("FATAL:  connection requires a valid client certificate")
CERT_AUTH_FAILED = re.escape('FATAL:  certificate authentication failed for user "postgres"')
UNKNOWN_CA = re.escape("SSL error: tlsv1 alert unknown ca")
# OpenSSL 3.2 renamed the alert's prefix: psycopg bundles a newer OpenSSL than psql.
REVOKED = "SSL error: (sslv3|ssl/tls) alert certificate revoked"


@dataclass(frozen=True)
class Case:
    """A client (``clients`` attribute, or None) connecting to a server fixture."""

    server: str
    client: str | None
    dbname: str
    expected: str
    sslmode: str = "verify-full"


CASES = [
    # The default (PostgreSQL 8.2's rule): every SSL client needs a certificate.
    Case("required", "good", "postgres", OK),
    Case("required", None, "postgres", NO_CLIENT_CERT),
    Case("required", "other_ca", "postgres", UNKNOWN_CA),
    Case("required", "revoked", "postgres", REVOKED),
    Case("required", "good", "pgtls_test", OK),
    Case("required", "alice", "pgtls_test", CERT_AUTH_FAILED),
    Case("required", None, "postgres", OK, sslmode="disable"),
    # optional (PostgreSQL 8.4+): pg_hba.conf decides.
    Case("optional", None, "postgres", OK),
    Case("optional", "good", "postgres", OK),
    Case("optional", None, "template1", NO_CLIENT_CERT),
    Case("optional", "good", "template1", OK),
    Case("optional", None, "pgtls_test", NO_CLIENT_CERT),
    Case("optional", "good", "pgtls_test", OK),
    Case("optional", "alice", "pgtls_test", CERT_AUTH_FAILED),
    Case("optional", "other_ca", "postgres", UNKNOWN_CA),
    Case("optional", "revoked", "postgres", REVOKED),
    # No root.crt: nothing is asked, so nothing is checked.
    Case("no_ca", "other_ca", "postgres", OK),
    Case("no_ca", None, "postgres", OK),
]


def _case_id(case: Case) -> str:
    return f"{case.server}-{case.client or 'no_cert'}-{case.dbname}-{case.sslmode}"


def _params(case: Case, server: PgtlsServer, pki: Pki, clients: ClientFiles) -> dict[str, str]:
    params = {"port": str(server.port), "dbname": case.dbname, "sslmode": case.sslmode}
    if case.sslmode != "disable":
        params["sslrootcert"] = str(pki.ca_file)
    if case.client is not None:
        params["sslcert"], params["sslkey"] = getattr(clients, case.client)
    return params


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_client_certificates_with_psql(
    request: pytest.FixtureRequest, case: Case, pki: Pki, clients: ClientFiles, tmp_path: Path
) -> None:
    """psql 15 (libpq 15) is admitted or refused as PostgreSQL would (hba.c, auth.c)."""
    server = request.getfixturevalue(case.server)
    done = psql(tmp_path, **_params(case, server, pki, clients))
    if case.expected == OK:
        assert (done.returncode, done.stdout, done.stderr) == (0, "postgres\n", ""), done
    else:
        assert done.returncode == 2, done
        assert re.search(case.expected, done.stderr), done.stderr


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_client_certificates_with_psycopg(
    request: pytest.FixtureRequest, case: Case, pki: Pki, clients: ClientFiles
) -> None:
    """psycopg (libpq 18) is admitted or refused as PostgreSQL would (hba.c, auth.c)."""
    server = request.getfixturevalue(case.server)
    params = _params(case, server, pki, clients)
    if case.client is None and case.sslmode != "disable":
        params["sslcertmode"] = "disable"
    error = psycopg_error(**params)
    if case.expected == OK:
        assert error is None
    else:
        assert error is not None
        assert re.search(case.expected, error), error


def test_handshake_failure_is_logged(required: PgtlsServer, pki: Pki, clients, tmp_path) -> None:
    """A certificate from another CA fails the handshake; pgtls logs why, as PostgreSQL."""
    cert, key = clients.other_ca
    done = psql(tmp_path, port=required.port, sslmode="require", sslcert=cert, sslkey=key)
    assert done.returncode == 2
    required.wait_for_log("could not accept SSL connection: certificate verify failed")


@pytest.mark.parametrize(
    ("server", "requested"), [("required", True), ("optional", True), ("no_ca", False)]
)
def test_certificate_is_requested_only_with_root_crt(
    request: pytest.FixtureRequest, server: str, requested: bool, pki: Pki, clients
) -> None:
    """
    root.crt makes pgtls request a certificate from every SSL client, in
    both modes; without it none is requested (libpq's sslcertmode=require
    then refuses the server).
    """
    door = request.getfixturevalue(server)
    error = psycopg_error(
        port=door.port,
        sslmode="verify-full",
        sslrootcert=pki.ca_file,
        sslcert=clients.good[0],
        sslkey=clients.good[1],
        sslcertmode="require",
    )
    if requested:
        assert error is None
    else:
        assert error is not None
        assert "server did not request an SSL certificate" in error
