"""
libpq-style connection strings for ``pgtls.upstream``.

Both of libpq's forms are read: keyword/value (``host=/var/run/postgresql
port=5432``) and the URI (``postgresql://db.example:5433``,
``postgres://%2Fvar%2Frun%2Fpostgresql:5432``).  The keywords that say
*where* the upstream listens and *how* its TLS is negotiated and verified
(``sslmode``, ``sslrootcert`` ...) are accepted, with libpq's meaning and
defaults; the session's own (``dbname``, ``user`` ...) are refused, because
pgtls relays each client's own startup packet and never opens a session of
its own.  Error messages are libpq's where libpq has one.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "SSLMODES",
    "TLS_VERSIONS",
    "Upstream",
    "format_conninfo",
    "parse_conninfo",
    "resolve_files",
]

#: Where Debian's PostgreSQL puts its socket; the default upstream.
DEFAULT_HOST = "/var/run/postgresql"
#: PostgreSQL's port.
DEFAULT_PORT = 5432
#: libpq's sslmode values, weakest first.
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: libpq's ssl_min/max_protocol_version values ("" = no bound).
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
#: The keywords that name files: relative names are relative to the data directory.
_FILE_KEYWORDS = ("sslrootcert", "sslcert", "sslkey", "sslcrl")


@dataclass(frozen=True, slots=True)
class Upstream:
    """
    Where the upstream PostgreSQL listens (a Unix socket directory or a TCP
    host) and how its TLS is negotiated, with libpq's keywords and defaults.

    ``host`` is the address connected to (``hostaddr`` when given);
    ``server_name`` is the ``host`` keyword, the name that goes in SNI and
    that verify-full checks (libpq's ``connhost[].host``), "" when only
    ``hostaddr`` was given.  The TLS fields keep libpq's spelling; empty
    file names mean none, and ``sslrootcert`` may be ``system``.
    """

    host: str
    port: int = 5432
    connect_timeout: float | None = None
    sslmode: str = "prefer"
    sslrootcert: str = ""
    sslcert: str = ""
    sslkey: str = ""
    sslpassword: str = field(default="", repr=False)
    sslcrl: str = ""
    sslsni: bool = True
    sslnegotiation: str = "postgres"
    ssl_min_protocol_version: str = "TLSv1.2"
    ssl_max_protocol_version: str = ""
    server_name: str | None = None

    @property
    def tls_name(self) -> str:
        """The host name for SNI and verify-full: the ``host`` keyword (libpq's rule)."""
        return self.host if self.server_name is None else self.server_name

    @property
    def uses_tls(self) -> bool:
        """Whether TLS may be tried at all: never on a Unix socket or with sslmode=disable."""
        return not self.is_unix and self.sslmode != "disable"

    @property
    def requires_tls(self) -> bool:
        """Whether the connection fails without TLS (require, verify-ca, verify-full)."""
        return self.uses_tls and SSLMODES.index(self.sslmode) >= SSLMODES.index("require")

    @property
    def address(self) -> str:
        """The upstream's address for logs: the socket file, or ``host:port``."""
        if self.is_unix:
            return self.unix_socket_path
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_unix(self) -> bool:
        """A host starting with ``/`` is a Unix socket directory, as in libpq."""
        return self.host.startswith("/")

    @property
    def unix_socket_path(self) -> str:
        """The socket file libpq would use: ``DIR/.s.PGSQL.PORT``."""
        return f"{self.host.rstrip('/')}/.s.PGSQL.{self.port}"


_ACCEPTED = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "connect_timeout",
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcrl",
        "sslsni",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
    }
)

# libpq's other connection options (PostgreSQL 17).  They are known, so they
# get an explanation rather than libpq's bare "invalid connection option".
_RELAYED = frozenset(
    {
        "application_name",
        "channel_binding",
        "client_encoding",
        "dbname",
        "fallback_application_name",
        "gssdelegation",
        "gssencmode",
        "gsslib",
        "keepalives",
        "keepalives_count",
        "keepalives_idle",
        "keepalives_interval",
        "krbsrvname",
        "load_balance_hosts",
        "max_protocol_version",
        "min_protocol_version",
        "options",
        "passfile",
        "password",
        "replication",
        "require_auth",
        "requirepeer",
        "requiressl",
        "service",
        "ssl",
        "sslcertmode",
        "sslcompression",
        "sslcrldir",
        "target_session_attrs",
        "tcp_user_timeout",
        "user",
    }
)

_URI_PREFIXES = ("postgresql://", "postgres://")
# C isspace() in the "C" locale, which libpq's parser uses.
_C_SPACE = " \t\n\v\f\r"
_C_INT = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+[ \t\n\v\f\r]*")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def parse_conninfo(text: str) -> Upstream:
    """
    Parse a libpq connection string naming the upstream server.

    :param text: keyword/value pairs or a ``postgresql://`` /
        ``postgres://`` URI.  An empty string means all defaults.
    :return: the upstream; host defaults to :data:`DEFAULT_HOST`, port to
        :data:`DEFAULT_PORT`, no connect timeout.  With ``hostaddr`` the host is
        that numeric address, which is what libpq connects to.
    :raises ValueError: with a one-line message for a syntax error, an
        unknown or inapplicable keyword, several hosts, a bad port,
        timeout or address.
    """
    values = _parse_uri(text) if text.startswith(_URI_PREFIXES) else _parse_keywords(text)
    return _build(values)


def format_conninfo(upstream: Upstream) -> str:
    """
    Write an upstream back as a keyword/value connection string.

    :param upstream: the upstream to describe.
    :return: e.g. ``host=/var/run/postgresql port=5432``; values are quoted
        as libpq requires when they are empty or hold spaces, quotes or
        backslashes.
    """
    parts = [f"host={_quote(upstream.host)}", f"port={upstream.port}"]
    if upstream.connect_timeout is not None:
        timeout = upstream.connect_timeout
        shown = str(int(timeout)) if timeout == int(timeout) else repr(timeout)
        parts.append(f"connect_timeout={shown}")
    if upstream.server_name is not None:
        parts[0] = f"host={_quote(upstream.server_name)} hostaddr={_quote(upstream.host)}"
        if not upstream.server_name:
            parts[0] = f"hostaddr={_quote(upstream.host)}"
    defaults = Upstream(upstream.host)
    for keyword in (
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslcrl",
        "sslnegotiation",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
    ):
        value = getattr(upstream, keyword)
        if value != getattr(defaults, keyword):
            parts.append(f"{keyword}={_quote(value)}")
    if not upstream.sslsni:
        parts.append("sslsni=0")
    if upstream.sslpassword:
        # Never shown: check's report and the logs print this string.
        parts.append("sslpassword=********")
    return " ".join(parts)


def _quote(value: str) -> str:
    """Quote a conninfo value when libpq would otherwise split or unescape it."""
    if value and not any(c in _C_SPACE or c in "'\\" for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _store(values: dict[str, str], key: str, value: str) -> None:
    """
    Record one keyword, refusing those pgtls cannot honour.

    :raises ValueError: for a libpq keyword that does not apply, or an
        unknown one (libpq's message).
    """
    if key in _ACCEPTED:
        values[key] = value
    elif key in _RELAYED:
        raise ValueError(
            f'connection option "{key}" does not apply to pgtls.upstream: pgtls relays '
            "each client's own startup packet (user, database, options) unchanged; only "
            "the keywords naming the server (host, hostaddr, port, connect_timeout) and its "
            "SSL (sslmode, sslrootcert, sslcert, sslkey, sslpassword, sslcrl, sslsni, "
            "sslnegotiation, ssl_min_protocol_version, ssl_max_protocol_version) are used"
        )
    else:
        raise ValueError(f'invalid connection option "{key}"')


def _skip_space(text: str, pos: int) -> int:
    """Return the index of the first non-space character at or after pos."""
    while pos < len(text) and text[pos] in _C_SPACE:
        pos += 1
    return pos


def _parse_keywords(text: str) -> dict[str, str]:
    """
    Split ``key = value`` pairs the way libpq's conninfo_parse does.

    :raises ValueError: missing ``=``, unterminated quote, bad keyword.
    """
    values: dict[str, str] = {}
    pos = _skip_space(text, 0)
    while pos < len(text):
        start = pos
        while pos < len(text) and text[pos] != "=" and text[pos] not in _C_SPACE:
            pos += 1
        key = text[start:pos]
        pos = _skip_space(text, pos)
        if pos >= len(text) or text[pos] != "=":
            raise ValueError(f'missing "=" after "{key}" in connection info string')
        pos = _skip_space(text, pos + 1)
        if pos < len(text) and text[pos] == "'":
            value, pos = _quoted_value(text, pos + 1)
        else:
            value, pos = _bare_value(text, pos)
        _store(values, key, value)
        pos = _skip_space(text, pos)
    return values


def _bare_value(text: str, pos: int) -> tuple[str, int]:
    """Read an unquoted value: up to whitespace, a backslash escapes the next character."""
    out: list[str] = []
    while pos < len(text) and text[pos] not in _C_SPACE:
        if text[pos] == "\\":
            pos += 1
            if pos < len(text):
                out.append(text[pos])
                pos += 1
        else:
            out.append(text[pos])
            pos += 1
    return "".join(out), pos


def _quoted_value(text: str, pos: int) -> tuple[str, int]:
    """
    Read a single-quoted value whose opening quote is just before pos.

    :raises ValueError: when the closing quote is missing.
    """
    out: list[str] = []
    while True:
        if pos >= len(text):
            raise ValueError("unterminated quoted string in connection info string")
        char = text[pos]
        if char == "\\":
            pos += 1
            if pos < len(text):
                out.append(text[pos])
                pos += 1
        elif char == "'":
            return "".join(out), pos + 1
        else:
            out.append(char)
            pos += 1


def _parse_uri(uri: str) -> dict[str, str]:
    """
    Read a ``postgresql://`` URI the way libpq's conninfo_uri_parse_options does.

    :raises ValueError: user info or a database name (they do not apply),
        bad IPv6 brackets, bad percent-encoding, bad query parameters.
    """
    prefix = next(p for p in _URI_PREFIXES if uri.startswith(p))
    rest = uri[len(prefix) :]
    values: dict[str, str] = {}
    # libpq looks for user info before the first "/" only.
    at = re.match(r"[^@/]*@", rest)
    if at is not None:
        if len(at.group()) > 1:
            _store(values, "user", "")
        rest = rest[at.end() :]
    hosts, ports, rest = _uri_hosts(uri, rest)
    if any(hosts):
        _store(values, "host", _uri_decode(",".join(hosts)))
    if any(ports):
        _store(values, "port", _uri_decode(",".join(ports)))
    if rest.startswith("/"):
        dbname, question, query = rest[1:].partition("?")
        if _uri_decode(dbname):
            _store(values, "dbname", "")
        rest = question + query
    if rest.startswith("?"):
        _uri_query(rest[1:], values)
    return values


def _uri_hosts(uri: str, rest: str) -> tuple[list[str], list[str], str]:
    """
    Split the comma-separated ``host[:port]`` list at the start of rest.

    :return: raw (still percent-encoded) hosts, ports, and what follows.
    :raises ValueError: for a malformed bracketed IPv6 address.
    """
    hosts: list[str] = []
    ports: list[str] = []
    while True:
        if rest.startswith("["):
            close = rest.find("]")
            if close < 0:
                raise ValueError(
                    'end of string reached when looking for matching "]" in IPv6 host '
                    f'address in URI: "{uri}"'
                )
            if close == 1:
                raise ValueError(f'IPv6 host address may not be empty in URI: "{uri}"')
            host, rest = rest[1:close], rest[close + 1 :]
            if rest and rest[0] not in ":/?,":
                position = len(uri) - len(rest) + 1
                raise ValueError(
                    f'unexpected character "{rest[0]}" at position {position} in URI '
                    f'(expected ":" or "/"): "{uri}"'
                )
        else:
            end = _span_until(rest, ":/?,")
            host, rest = rest[:end], rest[end:]
        port = ""
        if rest.startswith(":"):
            end = _span_until(rest, "/?,", 1)
            port, rest = rest[1:end], rest[end:]
        hosts.append(host)
        ports.append(port)
        if not rest.startswith(","):
            return hosts, ports, rest
        rest = rest[1:]


def _span_until(text: str, stops: str, start: int = 0) -> int:
    """Return the index of the first character of text in stops at or after start, else len."""
    pos = start
    while pos < len(text) and text[pos] not in stops:
        pos += 1
    return pos


def _uri_query(query: str, values: dict[str, str]) -> None:
    """
    Store ``key=value&...`` URI parameters.

    :raises ValueError: libpq's messages for a missing or extra ``=``, and
        the keyword errors of :func:`_store`.
    """
    params = query.split("&")
    if params[-1] == "":
        # libpq stops at the end of the string: "?" alone or a trailing "&" is fine.
        params.pop()
    for param in params:
        key, sep, value = param.partition("=")
        if not sep:
            raise ValueError(f'missing key/value separator "=" in URI query parameter: "{param}"')
        if "=" in value:
            raise ValueError(f'extra key/value separator "=" in URI query parameter: "{param}"')
        key = _uri_decode(key)
        if key not in _ACCEPTED and key not in _RELAYED:
            raise ValueError(f'invalid URI query parameter: "{key}"')
        _store(values, key, _uri_decode(value))


def _uri_decode(text: str) -> str:
    """
    Undo percent-encoding.

    :raises ValueError: for ``%`` not followed by two hex digits, ``%00``, or
        bytes that are not UTF-8.
    """
    raw = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    pos = 0
    while pos < len(raw):
        if raw[pos] != ord("%"):
            out.append(raw[pos])
            pos += 1
            continue
        digits = raw[pos + 1 : pos + 3]
        if len(digits) != 2 or not all(chr(d) in "0123456789abcdefABCDEF" for d in digits):
            raise ValueError(f'invalid percent-encoded token: "{text}"')
        byte = int(digits, 16)
        if byte == 0:
            raise ValueError(f'forbidden value %00 in percent-encoded value: "{text}"')
        out.append(byte)
        pos += 3
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f'percent-encoded value is not valid UTF-8: "{text}"') from None


def _parse_int_param(value: str, keyword: str) -> int:
    """
    Read an integer option as libpq's parse_int_param does (base 10, spaces around).

    :raises ValueError: libpq's ``invalid integer value`` message.
    """
    digits = value.strip(_C_SPACE).lstrip("+-").lstrip("0")
    # The length test keeps int() off Python's limit for huge digit strings.
    if (
        _C_INT.fullmatch(value) is None
        or len(digits) > 10
        or not _INT32_MIN <= int(value) <= _INT32_MAX
    ):
        raise ValueError(f'invalid integer value "{value}" for connection option "{keyword}"')
    return int(value)


def _build(values: dict[str, str]) -> Upstream:
    """
    Turn the accepted keywords into an :class:`Upstream`.

    :raises ValueError: several hosts, a bad address, port or timeout.
    """
    for key in ("host", "hostaddr", "port"):
        if "," in values.get(key, ""):
            raise ValueError(
                f'multiple hosts are not supported by pgtls.upstream: {key}="{values[key]}"; '
                "name one upstream server"
            )
    host = values.get("host", "") or DEFAULT_HOST
    hostaddr = values.get("hostaddr", "")
    server_name: str | None = None
    if hostaddr:
        try:
            ipaddress.ip_address(hostaddr)
        except ValueError:
            raise ValueError(f'could not parse network address "{hostaddr}"') from None
        # libpq connects to hostaddr and keeps host only as a name: the
        # one that goes in SNI and that verify-full checks.
        server_name = values.get("host", "")
        host = hostaddr
    port = DEFAULT_PORT
    if values.get("port", ""):
        port = _parse_int_param(values["port"], "port")
        if not 1 <= port <= 65535:
            raise ValueError(f'invalid port number: "{values["port"]}"')
    timeout: float | None = None
    if values.get("connect_timeout", ""):
        seconds = _parse_int_param(values["connect_timeout"], "connect_timeout")
        # As in libpq, zero or a negative number means wait indefinitely.
        timeout = float(seconds) if seconds > 0 else None
    upstream = Upstream(host, port, timeout, server_name=server_name)
    return _with_tls(upstream, values)


def _with_tls(upstream: Upstream, values: dict[str, str]) -> Upstream:
    """
    Add the TLS keywords to ``upstream``, checked as libpq's
    pqConnectOptions2 checks them (its messages).

    :raises ValueError: a value libpq would refuse, or a combination it refuses.
    """
    sslmode = values.get("sslmode", "")
    if sslmode and sslmode not in SSLMODES:
        raise ValueError(f'invalid sslmode value: "{sslmode}"')
    rootcert = values.get("sslrootcert", "")
    if rootcert == "system":
        # libpq 16+: the system store implies verify-full, and refuses less.
        if not sslmode:
            sslmode = "verify-full"
        elif sslmode != "verify-full":
            raise ValueError(
                f'weak sslmode "{sslmode}" may not be used with sslrootcert=system '
                '(use "verify-full")'
            )
    sslmode = sslmode or "prefer"
    negotiation = values.get("sslnegotiation", "") or "postgres"
    if negotiation not in ("postgres", "direct"):
        raise ValueError(f'invalid sslnegotiation value: "{negotiation}"')
    if negotiation == "direct" and SSLMODES.index(sslmode) < SSLMODES.index("require"):
        raise ValueError(
            f'weak sslmode "{sslmode}" may not be used with sslnegotiation=direct '
            '(use "require", "verify-ca", or "verify-full")'
        )
    sni = values.get("sslsni", "1") or "1"
    if sni not in ("0", "1"):
        # libpq reads only the first character; a typo here would silently
        # turn SNI off, so pgtls refuses anything but 0 and 1.
        raise ValueError(f'invalid sslsni value: "{sni}" (use 0 or 1)')
    low = _tls_version(values, "ssl_min_protocol_version", "TLSv1.2")
    high = _tls_version(values, "ssl_max_protocol_version", "")
    if low and high and TLS_VERSIONS.index(low) > TLS_VERSIONS.index(high):
        raise ValueError("invalid SSL protocol version range")
    if sslmode == "verify-full" and not upstream.is_unix and not upstream.tls_name:
        raise ValueError("host name must be specified for a verified SSL connection")
    return replace(
        upstream,
        sslmode=sslmode,
        sslrootcert=rootcert,
        sslcert=values.get("sslcert", ""),
        sslkey=values.get("sslkey", ""),
        sslpassword=values.get("sslpassword", ""),
        sslcrl=values.get("sslcrl", ""),
        sslsni=sni == "1",
        sslnegotiation=negotiation,
        ssl_min_protocol_version=low,
        ssl_max_protocol_version=high,
    )


def _tls_version(values: dict[str, str], keyword: str, default: str) -> str:
    """
    A protocol version keyword, compared case-insensitively as libpq does.

    :raises ValueError: libpq's ``invalid ... value`` message.
    """
    text = values.get(keyword, "")
    if not text:
        return default
    for version in TLS_VERSIONS:
        if version.lower() == text.lower():
            return version
    raise ValueError(f'invalid {keyword} value: "{text}"')


def resolve_files(upstream: Upstream, directory: str) -> Upstream:
    """
    Make the TLS file names absolute, relative to the data directory
    (``sslrootcert=system`` is not a file).
    """
    changes: dict[str, Any] = {}
    for keyword in _FILE_KEYWORDS:
        name = getattr(upstream, keyword)
        if name and not (keyword == "sslrootcert" and name == "system"):
            changes[keyword] = os.path.normpath(os.path.join(directory, name))
    return replace(upstream, **changes) if changes else upstream
