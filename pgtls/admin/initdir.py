"""
Write a new pgtls data directory (``pgtls init``) and client certificates
(``pgtls client-cert``).

The file texts are built by pure functions (:func:`postgresql_conf_text`,
:func:`pg_hba_conf_text`, :func:`pg_ident_conf_text`); :func:`init_data_directory`
and :func:`issue_client` make the keys and certificates with :mod:`pgtls.tls.certs`
and write everything with exclusive creation, all or nothing.  Every expected
failure is an :class:`InitError` whose text is one line for the user.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pgtls.core.conninfo import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Upstream,
    format_conninfo,
    parse_conninfo,
)
from pgtls.tls import certs

__all__ = [
    "DEFAULT_UPSTREAM",
    "SETTING_NAMES",
    "ClientCertResult",
    "InitError",
    "InitOptions",
    "InitResult",
    "NewFile",
    "client_cert_summary",
    "conf_quote",
    "default_hostnames",
    "init_data_directory",
    "init_summary",
    "issue_client",
    "pg_hba_conf_text",
    "pg_ident_conf_text",
    "postgresql_conf_text",
    "psql_command",
    "write_new_files",
]

DEFAULT_UPSTREAM = format_conninfo(Upstream(DEFAULT_HOST, DEFAULT_PORT))
"""Where pgtls relays when ``pgtls.upstream`` is not set (design.md)."""

_DEFAULT_PORT = 5432
_DEFAULT_LISTEN = "localhost"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")

# Data files are private, as initdb makes them; certificates are public.
_PRIVATE = 0o600
_PUBLIC = 0o644

# A DNS name as certificates carry it: ASCII labels, an optional leading
# wildcard label.  Underscores are allowed because container and VM host
# names carry them, and libpq compares names as strings.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}")
_MAX_DNS_NAME = 253

# X.509 caps a Common Name at 64 characters (RFC 5280 ub-common-name).
_MAX_COMMON_NAME = 64


class InitError(Exception):
    """``pgtls init`` or ``pgtls client-cert`` cannot go on; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class InitOptions:
    """
    What ``pgtls init`` was asked for.

    :param hostnames: names and addresses the server certificate covers;
        empty means :func:`default_hostnames`.
    :param upstream: ``pgtls.upstream`` conninfo, or None to leave the default.
    :param client_ca: also write root.crt (a copy of ca.crt), so that pgtls
        asks every SSL client for a certificate.
    :param port: TCP port pgtls listens on.
    :param listen_addresses: ``listen_addresses`` value.
    """

    hostnames: tuple[str, ...] = ()
    upstream: str | None = None
    client_ca: bool = False
    port: int = _DEFAULT_PORT
    listen_addresses: str = _DEFAULT_LISTEN


@dataclass(frozen=True, slots=True)
class NewFile:
    """A file to create: its path, bytes and permission bits."""

    path: str
    content: bytes
    mode: int


@dataclass(frozen=True, slots=True)
class InitResult:
    """What :func:`init_data_directory` did, for :func:`init_summary`."""

    directory: str
    options: InitOptions
    hostnames: tuple[str, ...]
    written: tuple[str, ...]
    psql: str


@dataclass(frozen=True, slots=True)
class ClientCertResult:
    """What :func:`issue_client` did, for :func:`client_cert_summary`."""

    user: str
    cert_path: str
    key_path: str
    ca_path: str
    root_crt_present: bool
    port: int | None = None


# --------------------------------------------------------------------------
# Names


def _check_name(name: str) -> str:
    """Return ``name`` if a certificate can carry it, else raise InitError."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        if "%" in name:
            raise InitError(f"host name {name!r}: an IPv6 zone cannot go in a certificate")
        return name
    if len(name) <= _MAX_DNS_NAME and _DNS_NAME.fullmatch(name):
        return name
    raise InitError(
        f"host name {name!r} is neither an IP address nor a DNS name "
        "(ASCII letters, digits, '-' and '.')"
    )


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` without repeats (case-insensitive, as DNS), first spelling kept."""
    seen: set[str] = set()
    kept = []
    for name in names:
        if name.lower() not in seen:
            seen.add(name.lower())
            kept.append(name)
    return tuple(kept)


def default_hostnames() -> tuple[str, ...]:
    """
    The names a server certificate covers when none are given: this
    machine's name, its fully qualified name when different, ``localhost``,
    ``127.0.0.1`` and ``::1``.  A machine name no certificate can carry is
    left out rather than failing.
    """
    candidates = [socket.gethostname(), socket.getfqdn()]
    machine = []
    for name in candidates:
        try:
            machine.append(_check_name(name))
        except InitError:
            continue
    return _unique([*machine, *_LOOPBACK])


def _check_listen_addresses(value: str) -> str:
    """Return ``value`` if it is a listen_addresses list, else raise InitError."""
    items = [item.strip() for item in value.split(",")]
    for item in items:
        if item == "*":
            continue
        try:
            _check_name(item)
        except InitError:
            raise InitError(
                f"listen address {item!r} is not '*', a host name or an IP address"
            ) from None
    return ",".join(items)


def _check_one_line(what: str, value: str) -> str:
    """Refuse control characters, which no postgresql.conf line can hold plainly."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InitError(f"{what} must not contain control characters")
    if not value.strip():
        raise InitError(f"{what} must not be empty")
    return value


# --------------------------------------------------------------------------
# File texts


def conf_quote(value: str) -> str:
    """``value`` as a postgresql.conf single-quoted string (``''`` and ``\\\\`` escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _template(name: str) -> str:
    """A sample file shipped as package data in pgtls/admin/templates."""
    return (resources.files("pgtls.admin") / "templates" / name).read_text(encoding="utf-8")


# A setting line of postgresql.conf.sample: commented, "#name = default".
_SETTING_LINE = re.compile(r"#([a-z][a-z0-9_.]*) = ")

SETTING_NAMES: tuple[str, ...] = tuple(
    found.group(1)
    for line in _template("postgresql.conf.sample").splitlines()
    if (found := _SETTING_LINE.match(line))
)
"""Every setting postgresql.conf shows, in file order."""


def _chosen_settings(options: InitOptions) -> dict[str, str]:
    """The settings ``options`` give a non-default value, as written in the file."""
    chosen = {"ssl": "on"}
    if options.listen_addresses != _DEFAULT_LISTEN:
        chosen["listen_addresses"] = conf_quote(options.listen_addresses)
    if options.port != _DEFAULT_PORT:
        chosen["port"] = str(options.port)
    if options.upstream is not None:
        chosen["pgtls.upstream"] = conf_quote(options.upstream)
    return chosen


def postgresql_conf_text(options: InitOptions) -> str:
    """
    postgresql.conf for ``options``: the non-default settings active, every
    other setting pgtls reads as a commented example with its default, each
    with a comment saying what it does (templates/postgresql.conf.sample,
    where every setting is commented).
    """
    chosen = _chosen_settings(options)
    lines = []
    for line in _template("postgresql.conf.sample").splitlines(keepends=True):
        found = _SETTING_LINE.match(line)
        if found is not None and found.group(1) in chosen:
            line = f"{found.group(1)} = {chosen[found.group(1)]}\n"
        lines.append(line)
    return "".join(lines)


def pg_hba_conf_text() -> str:
    """
    pg_hba.conf for a new data directory: SSL connections from any address
    are admitted with ``scram-sha-256`` (pgtls admits, the upstream checks the
    password); plaintext ones match nothing.  Commented examples show
    ``cert``, ``clientcert``, ``map`` and ``reject``.
    """
    return _template("pg_hba.conf.sample")


def pg_ident_conf_text() -> str:
    """pg_ident.conf for a new data directory: explanations and commented examples."""
    return _template("pg_ident.conf.sample")


# --------------------------------------------------------------------------
# Command lines


def _conninfo_value(value: str) -> str:
    """``value`` quoted for a libpq connection string when it needs it."""
    if value and not any(ch.isspace() or ch in "'\\" for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def psql_command(params: Sequence[tuple[str, str]]) -> str:
    """
    A shell command line running psql with the connection string made of
    ``params``: in double quotes, as people write it, unless the string
    holds a character the shell would expand there.
    """
    conninfo = " ".join(f"{key}={_conninfo_value(value)}" for key, value in params)
    if any(ch in '"$`\\!' for ch in conninfo):
        return f"psql {shlex.quote(conninfo)}"
    return f'psql "{conninfo}"'


def _psql_host(options: InitOptions) -> str:
    """The host a client names: the first hostname given that is no wildcard."""
    for name in options.hostnames:
        if not name.startswith("*"):
            return name
    return "localhost"


# --------------------------------------------------------------------------
# Writing


def _remove_quietly(paths: Iterable[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            continue


def _create(new: NewFile) -> None:
    """Create ``new.path`` exclusively; a failed write leaves no file behind."""
    fd = os.open(new.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, new.mode)
    try:
        with os.fdopen(fd, "wb") as f:
            # The umask may have cleared bits of a public file; a private
            # one must have exactly its mode whatever the umask.
            os.fchmod(f.fileno(), new.mode)
            f.write(new.content)
    except BaseException:
        _remove_quietly([new.path])
        raise


def write_new_files(files: Sequence[NewFile]) -> tuple[str, ...]:
    """
    Create every file in ``files``, all or nothing: none may exist before.

    :returns: the paths written.
    :raises InitError: a file exists already (naming it) or cannot be
        written; the files this call created are removed again.
    """
    written: list[str] = []
    for new in files:
        try:
            _create(new)
        except FileExistsError:
            _remove_quietly(written)
            raise InitError(f"{new.path} already exists; nothing was written") from None
        except OSError as e:
            _remove_quietly(written)
            raise InitError(f"{new.path}: {e.strerror}") from None
        written.append(new.path)
    return tuple(written)


def _make_directory(directory: str) -> bool:
    """
    Create ``directory`` (mode 0700) and its parents if missing.

    :returns: whether it was created.
    :raises InitError: it is not a directory, or cannot be created.
    """
    if os.path.isdir(directory):
        return False
    if os.path.lexists(directory):
        raise InitError(f"{directory} exists and is not a directory")
    try:
        os.makedirs(directory, mode=0o700)
        # makedirs honours the umask; a data directory is private outright.
        os.chmod(directory, 0o700)
    except OSError as e:
        raise InitError(f"{directory}: cannot create directory: {e.strerror}") from None
    return True


def _pem(*items: x509.Certificate) -> bytes:
    return b"".join(item.public_bytes(serialization.Encoding.PEM) for item in items)


def _ca_name(hostnames: Sequence[str]) -> str:
    """A CA name that tells this directory's CA from another machine's."""
    return f"pgtls local CA for {hostnames[0]}"[:_MAX_COMMON_NAME]


def _data_files(directory: str, options: InitOptions, hostnames: Sequence[str]) -> list[NewFile]:
    ca = certs.make_ca(_ca_name(hostnames))
    server = certs.issue_server_cert(ca, hostnames)
    ca_pem = _pem(ca.cert)

    def new(name: str, content: bytes | str, mode: int) -> NewFile:
        data = content.encode() if isinstance(content, str) else content
        return NewFile(os.path.join(directory, name), data, mode)

    files = [
        new("postgresql.conf", postgresql_conf_text(options), _PRIVATE),
        new("pg_hba.conf", pg_hba_conf_text(), _PRIVATE),
        new("pg_ident.conf", pg_ident_conf_text(), _PRIVATE),
        new("ca.crt", ca_pem, _PUBLIC),
        new("ca.key", certs.key_pem(ca.key), _PRIVATE),
        # The leaf alone: ca.crt is the root every client holds, not a link
        # of the chain to send.
        new("server.crt", _pem(server.cert), _PUBLIC),
        new("server.key", certs.key_pem(server.key), _PRIVATE),
    ]
    if options.client_ca:
        files.append(new("root.crt", ca_pem, _PUBLIC))
    return files


def _checked_options(options: InitOptions) -> InitOptions:
    if not 1 <= options.port <= 65535:
        raise InitError(f"port {options.port} is not between 1 and 65535")
    listen = _check_listen_addresses(_check_one_line("listen addresses", options.listen_addresses))
    upstream = options.upstream
    if upstream is not None:
        _check_one_line("upstream connection string", upstream)
        try:
            parse_conninfo(upstream)
        except ValueError as e:
            raise InitError(f"upstream connection string: {e}") from None
    hostnames = tuple(_check_name(name) for name in options.hostnames)
    return InitOptions(_unique(hostnames), upstream, options.client_ca, options.port, listen)


def init_data_directory(directory: str, options: InitOptions) -> InitResult:
    """
    Write a new pgtls data directory: postgresql.conf, pg_hba.conf,
    pg_ident.conf, a local CA (ca.crt, ca.key), a server certificate for the
    host names signed by it (server.crt, server.key) and, with
    ``options.client_ca``, root.crt.  Keys and configuration files are mode
    0600; ``directory`` is created with mode 0700 if missing.

    :raises InitError: a bad option, a file that exists already (nothing is
        written then), or a file system error.
    """
    options = _checked_options(options)
    hostnames = options.hostnames or default_hostnames()
    directory = os.path.abspath(directory)
    created = _make_directory(directory)
    try:
        written = write_new_files(_data_files(directory, options, hostnames))
    except InitError:
        if created:
            os.rmdir(directory)
        raise
    psql = psql_command(
        [
            ("host", _psql_host(options)),
            ("port", str(options.port)),
            ("user", "postgres"),
            ("dbname", "postgres"),
            ("sslmode", "verify-full"),
            ("sslrootcert", os.path.join(directory, "ca.crt")),
        ]
    )
    return InitResult(directory, options, tuple(hostnames), written, psql)


def init_summary(result: InitResult) -> str:
    """What ``pgtls init`` tells the user it did and how to go on."""
    d = result.directory
    upstream = result.options.upstream
    lines = [
        f"Wrote a pgtls data directory in {d}:",
        "  postgresql.conf         ssl = on; every setting explained",
        "  pg_hba.conf             admits SSL connections from any address,"
        " the upstream checks passwords",
        "  pg_ident.conf           user-name maps for client certificates (examples)",
        "  ca.crt, ca.key          a new local CA: give clients ca.crt, keep ca.key private",
        "  server.crt, server.key  the server certificate for " + ", ".join(result.hostnames),
    ]
    if result.options.client_ca:
        lines.append(
            "  root.crt                ca.crt again: pgtls asks SSL clients for certificates"
        )
    lines += [
        "",
        "pgtls relays to "
        + (upstream if upstream is not None else f"{DEFAULT_UPSTREAM} (the default)")
        + "; pgtls.upstream in postgresql.conf says where.",
        "",
        "Start pgtls:",
        f"  twistd --nodaemon --pidfile= pgtls -D {shlex.quote(d)}",
        "Connect, checking the server's certificate:",
        f"  {result.psql}",
    ]
    host = _psql_host(result.options)
    if result.options.listen_addresses == _DEFAULT_LISTEN and host not in _LOOPBACK:
        lines.append(
            f"(pgtls listens on localhost only: to reach it as {host}, set"
            " listen_addresses in postgresql.conf.)"
        )
    if result.options.client_ca:
        lines += [
            "",
            "root.crt makes pgtls refuse an SSL client without a certificate signed by",
            "ca.crt.  Issue one per user, then add its sslcert=... sslkey=... to the line above:",
            f"  pgtls client-cert {shlex.quote(d)} USER",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Client certificates


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InitError(f"{path}: {e.strerror}") from None


def _load_ca(directory: str) -> tuple[certs.Issued, str]:
    """The CA of data directory ``directory`` and the path of its certificate."""
    cert_path = os.path.join(directory, "ca.crt")
    key_path = os.path.join(directory, "ca.key")
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path))
    except ValueError:
        raise InitError(f"{cert_path}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(_read(key_path), password=None)
    except TypeError:
        raise InitError(f"{key_path}: the key is encrypted; give an unencrypted CA key") from None
    except ValueError:
        raise InitError(f"{key_path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InitError(f"{key_path}: not an EC or RSA key")
    if key.public_key() != cert.public_key():
        raise InitError(f"{key_path} is not the key of {cert_path}")
    return certs.Issued(key, cert), cert_path


def _check_user(user: str) -> str:
    if not 1 <= len(user) <= _MAX_COMMON_NAME:
        raise InitError(f"user name must be 1 to {_MAX_COMMON_NAME} characters long")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in user):
        raise InitError("user name must not contain control characters")
    return user


def _client_prefix(user: str, out: str | None) -> str:
    """Path before ``.crt``/``.key``: ``out``, ``out/USER`` for a directory, or ``USER``."""
    if out is None or out.endswith(os.sep) or os.path.isdir(out):
        if "/" in user or user in (".", ".."):
            raise InitError(f"user name {user!r} is no file name: give --out PREFIX")
        return os.path.abspath(os.path.join(out or os.curdir, user))
    return os.path.abspath(out)


def issue_client(directory: str, user: str, out: str | None = None) -> ClientCertResult:
    """
    Issue a client certificate with Common Name ``user``, signed by the CA of
    data directory ``directory`` (its ca.crt and ca.key), and write it as
    PREFIX.crt and its key as PREFIX.key (mode 0600).  PREFIX is ``out``
    (``out/USER`` when ``out`` is a directory or ends with a slash), else
    USER in the current directory; a missing parent directory is created
    with mode 0700.

    :raises InitError: no usable CA in ``directory``, a bad user name, a
        file that exists already (nothing is written then), or a file
        system error.
    """
    _check_user(user)
    ca, ca_path = _load_ca(os.path.abspath(directory))
    prefix = _client_prefix(user, out)
    _make_directory(os.path.dirname(prefix))
    issued = certs.issue_client_cert(ca, user)
    cert_path, key_path = prefix + ".crt", prefix + ".key"
    write_new_files(
        [
            NewFile(cert_path, _pem(issued.cert), _PUBLIC),
            NewFile(key_path, certs.key_pem(issued.key), _PRIVATE),
        ]
    )
    root_crt = os.path.exists(os.path.join(os.path.dirname(ca_path), "root.crt"))
    return ClientCertResult(user, cert_path, key_path, ca_path, root_crt, _port_of(directory))


def _port_of(directory: str) -> int | None:
    """The data directory's port, for the example; None when it does not load."""
    from pgtls.core.conf import ConfigError, load_settings

    try:
        return load_settings(directory).port
    except ConfigError:
        return None


def client_cert_summary(result: ClientCertResult) -> str:
    """What ``pgtls client-cert`` tells the user it did and how to connect."""
    params = [("sslcert", result.cert_path), ("sslkey", result.key_path)]
    example = psql_command(
        [
            ("host", "localhost"),
            *([("port", str(result.port))] if result.port is not None else []),
            ("user", result.user),
            ("dbname", "postgres"),
            ("sslmode", "verify-full"),
            ("sslrootcert", result.ca_path),
            *params,
        ]
    )
    lines = [
        f"Wrote {result.cert_path} and {result.key_path} (key mode 0600):"
        f" a client certificate for user {result.user!r}, signed by {result.ca_path}.",
        "Add to the connection string:",
        "  " + " ".join(f"{k}={_conninfo_value(v)}" for k, v in params),
        "for example:",
        f"  {example}",
    ]
    if not result.root_crt_present:
        ca_dir = os.path.dirname(result.ca_path)
        lines += [
            f"Note: {ca_dir} has no root.crt, so pgtls asks clients for no certificate",
            "unless ssl_ca_file names ca.crt: copy ca.crt to root.crt and restart pgtls.",
        ]
    return "\n".join(lines) + "\n"
