"""
postgresql.conf for pgtls: PostgreSQL's syntax, pgtls's settings.

The file is read as PostgreSQL reads it (src/backend/utils/misc/guc-file.l,
guc.c): the same tokens, quoting, comments, units, include directives and
messages, so a file PostgreSQL accepts means the same thing here, and one it
refuses is refused with the words PostgreSQL would use.  Loading is
all-or-nothing: any bad line is a :class:`ConfigError` and no setting is applied.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Any

from pgtls.core.conninfo import Upstream, format_conninfo, parse_conninfo, resolve_files
from pgtls.core.pgfiles import (
    MAX_DEPTH,
    ConfigFileError,
    IncludeProblem,
    absolute,
    ascii_lower,
    include_dir_files,
    is_blank,
    parse_bool,
    read_bytes,
    strerror,
)

__all__ = [
    "RESTART_ONLY",
    "ConfigError",
    "Settings",
    "changed_settings",
    "describe",
    "load_settings",
    "reloaded",
    "restart_only_changes",
]


class ConfigError(ConfigFileError):
    """A configuration file is wrong; ``str()`` is ``FILE:LINE: reason``."""

    def shown(self, text: str) -> str:
        """The text with unprintable characters escaped."""
        return _shown(text)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Settings:
    """
    Every setting pgtls understands, typed.  File names are absolute
    (relative ones are resolved against the data directory at load).
    ``explicit`` holds the names set by a file or an override, so callers
    can tell a default from a choice (root.crt absent is fine by default,
    an error when named explicitly).  ``notices`` are log lines the load
    produced without failing (``skipping missing configuration file``);
    ``raw_values`` pairs each explicit name with the text it was given,
    which is what PostgreSQL quotes in ``parameter "%s" changed to "%s"``;
    ``sources`` says where each explicit name was set (file and line, or
    ``command line`` and None), for errors found after the load.
    """

    data_directory: str
    listen_addresses: str = "localhost"
    port: int = 5432
    ssl: bool = False
    ssl_cert_file: str = "server.crt"
    ssl_key_file: str = "server.key"
    ssl_ca_file: str = "root.crt"
    ssl_crl_file: str = "root.crl"
    ssl_ciphers: str = "HIGH:MEDIUM:+3DES:!aNULL"
    ssl_prefer_server_ciphers: bool = True
    ssl_min_protocol_version: str = "TLSv1.2"
    ssl_max_protocol_version: str = ""
    ssl_ecdh_curve: str = "prime256v1"
    ssl_passphrase_command: str = ""
    max_connections: int = 100
    authentication_timeout: float = 60.0
    log_connections: bool = False
    log_disconnections: bool = False
    upstream: Upstream = field(default_factory=lambda: Upstream("/var/run/postgresql", 5432))
    clientcert: str = "required"
    smart_shutdown_timeout: float = 30.0
    metrics_listen: str = ""
    proxy_protocol_networks: tuple[IPNetwork, ...] = ()
    so_reuseport: bool = False
    fast_path: bool = True
    explicit: frozenset[str] = frozenset()
    notices: tuple[str, ...] = field(default=(), compare=False)
    raw_values: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    sources: tuple[tuple[str, str, int | None], ...] = field(default=(), compare=False)


# ---------------------------------------------------------------------------
# Messages


def _shown(text: str) -> str:
    """
    Make text safe to print: bytes that were not UTF-8 (kept as surrogate
    escapes when the file was read) become backslash escapes.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _invalid(name: str, text: str, hint: str | None = None) -> str:
    """PostgreSQL's ``invalid value for parameter`` message, with its HINT in parentheses."""
    message = f'invalid value for parameter "{name}": "{text}"'
    return f"{message} ({hint})" if hint else message


class _InvalidValue(Exception):
    """A value a parameter cannot take; the argument is PostgreSQL's message."""


# ---------------------------------------------------------------------------
# Lexer: the token rules of guc-file.l


class _Tok(Enum):
    """The token kinds of guc-file.l."""

    ID = "identifier"
    QUALIFIED_ID = "qualified identifier"
    STRING = "quoted string"
    UNQUOTED = "unquoted string"
    INTEGER = "integer"
    REAL = "real"
    EQUALS = "="
    ERROR = "character"


@dataclass(frozen=True, slots=True)
class _Token:
    """A token and its text as written."""

    kind: _Tok
    text: str


# Every byte from 0x80 up counts as a letter in guc-file.l; a decoded file
# has only code points from 0x80 up where it had such bytes, so the class
# below classifies the same characters (surrogate escapes included).
_LETTER = "A-Za-z_\x80-\U0010ffff"
_ID = f"[{_LETTER}][{_LETTER}0-9]*"

# In guc-file.l's order: flex takes the longest match and, on a tie, the
# rule listed first (so "a.b" is a qualified name, not an unquoted string).
_RULES: tuple[tuple[_Tok, re.Pattern[str]], ...] = (
    (_Tok.ID, re.compile(_ID)),
    (_Tok.QUALIFIED_ID, re.compile(rf"{_ID}\.{_ID}")),
    (_Tok.STRING, re.compile(r"'(?:[^'\\\n]|\\[^\n]|'')*'")),
    (_Tok.UNQUOTED, re.compile(f"[{_LETTER}][{_LETTER}0-9._:/-]*")),
    # Hex first: Python's alternation is ordered where flex's is longest.
    (_Tok.INTEGER, re.compile(r"[+-]?(?:0x[0-9a-fA-F]+|[0-9]+)[a-zA-Z]*")),
    (_Tok.REAL, re.compile(r"[+-]?[0-9]*\.[0-9]*(?:[Ee][+-]?[0-9]+)?")),
    (_Tok.EQUALS, re.compile("=")),
)
_BLANKS = re.compile(r"[ \t\r]+")
_VALUE_KINDS = frozenset({_Tok.ID, _Tok.STRING, _Tok.INTEGER, _Tok.REAL, _Tok.UNQUOTED})
_NAME_KINDS = frozenset({_Tok.ID, _Tok.QUALIFIED_ID})


def _lex(line: str) -> list[_Token]:
    """
    Split one line (without its newline) into tokens, dropping blanks and
    the comment.  A character no rule matches is an ERROR token, which the
    parser reports as a syntax error, as guc-file.l does.
    """
    tokens: list[_Token] = []
    pos = 0
    while pos < len(line):
        blanks = _BLANKS.match(line, pos)
        if blanks is not None:
            pos = blanks.end()
            continue
        if line[pos] == "#":
            break
        best: _Token | None = None
        for kind, pattern in _RULES:
            match = pattern.match(line, pos)
            if match is not None and (best is None or match.end() - pos > len(best.text)):
                best = _Token(kind, match.group())
        if best is None:
            best = _Token(_Tok.ERROR, line[pos])
        tokens.append(best)
        pos += len(best.text)
    return tokens


def _unquote(token: str) -> str:
    """
    Strip the quotes of a string token and undo its escapes: ``''`` and
    ``\\'`` are a quote, ``\\b \\f \\n \\r \\t``, ``\\ooo`` octal (a byte),
    any other backslash pair is the second character.
    """
    raw = token[1:-1].encode("utf-8", "surrogateescape")
    out = bytearray()
    pos = 0
    while pos < len(raw):
        byte = raw[pos]
        pos += 1
        if byte == ord("'"):
            # The lexer only lets a quote through doubled.
            pos += 1
        elif byte == ord("\\"):
            escaped = raw[pos]
            pos += 1
            if escaped in b"01234567":
                digits = re.match(rb"[0-7]{1,2}", raw[pos:])
                more = digits.group() if digits else b""
                pos += len(more)
                escaped = int(bytes([escaped]) + more, 8) & 0xFF
            else:
                escaped = _ESCAPES.get(escaped, escaped)
            out.append(escaped)
            continue
        out.append(byte)
    return out.decode("utf-8", "surrogateescape")


_ESCAPES = {ord("b"): 0x08, ord("f"): 0x0C, ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09}


def _syntax_error(path: str, line: int, token: _Token | None) -> ConfigError:
    """guc-file.l's syntax error, near a token or (token None) near end of line."""
    near = f'near token "{token.text}"' if token is not None else "near end of line"
    return ConfigError(path, line, f'syntax error in file "{path}" line {line}, {near}')


def _parse_line(tokens: list[_Token], path: str, line: int) -> tuple[str, str]:
    """
    Read ``name [=] value`` from a non-empty line's tokens.

    :return: the name as written and the value, quotes and escapes undone.
    :raises ConfigError: PostgreSQL's syntax error for anything else.
    """
    if tokens[0].kind not in _NAME_KINDS:
        raise _syntax_error(path, line, tokens[0])
    index = 1
    if index < len(tokens) and tokens[index].kind is _Tok.EQUALS:
        index += 1
    if index >= len(tokens):
        raise _syntax_error(path, line, None)
    value = tokens[index]
    if value.kind not in _VALUE_KINDS:
        raise _syntax_error(path, line, value)
    if index + 1 < len(tokens):
        raise _syntax_error(path, line, tokens[index + 1])
    text = _unquote(value.text) if value.kind is _Tok.STRING else value.text
    # PostgreSQL keeps values as C strings: an escaped NUL ends the value.
    return tokens[0].text, text.split("\0", 1)[0]


# ---------------------------------------------------------------------------
# Files and include directives


@dataclass(frozen=True, slots=True)
class _Item:
    """One ``name = value`` line, where it was read."""

    name: str
    value: str
    path: str
    line: int


class _Reader:
    """Collects the ``name = value`` lines of a file and of what it includes."""

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.notices: list[str] = []

    def read_file(
        self, location: str, strict: bool, calling: tuple[str, int | None], depth: int
    ) -> None:
        """
        Read one file, following its include directives.

        :param location: the file name as written; relative names are
            relative to the directory of the calling file.
        :param strict: False for include_if_exists, which skips a file it
            cannot open and records a notice.
        :param calling: the file and line an error is charged to: the
            include directive, or (file, None) for the main file.
        :param depth: include nesting depth.
        :raises ConfigError: unreadable file, syntax error, nesting too deep.
        """
        if depth > MAX_DEPTH:
            raise ConfigError(
                *calling,
                f'could not open configuration file "{location}": maximum nesting depth exceeded',
            )
        if is_blank(location):
            raise ConfigError(*calling, f'empty configuration file name: "{location}"')
        path = absolute(location, calling[0])
        try:
            data = read_bytes(path)
        except OSError as error:
            if not strict:
                self.notices.append(f'skipping missing configuration file "{path}"')
                return
            raise ConfigError(
                *calling, f'could not open configuration file "{path}": {strerror(error)}'
            ) from None
        # Non-UTF-8 bytes survive as surrogate escapes: PostgreSQL takes any
        # byte in comments and values, and so do we.
        self._parse(data.decode("utf-8", "surrogateescape"), path, depth)

    def read_directory(self, location: str, calling: tuple[str, int], depth: int) -> None:
        """
        Read the ``*.conf`` files of a directory in name order, skipping
        names that start with a dot and subdirectories.

        :raises ConfigError: blank name, unreadable directory or file entry,
            and any error of the files read.
        """
        try:
            files = include_dir_files(location, calling[0])
        except IncludeProblem as problem:
            raise ConfigError(*calling, problem.reason) from None
        for path in files:
            self.read_file(path, True, calling, depth)

    def _parse(self, text: str, path: str, depth: int) -> None:
        """Parse a file's text line by line, running include directives in place."""
        for number, line in enumerate(text.split("\n"), start=1):
            tokens = _lex(line)
            if not tokens:
                continue
            name, value = _parse_line(tokens, path, number)
            directive = ascii_lower(name)
            if directive == "include":
                self.read_file(value, True, (path, number), depth + 1)
            elif directive == "include_if_exists":
                self.read_file(value, False, (path, number), depth + 1)
            elif directive == "include_dir":
                self.read_directory(value, (path, number), depth + 1)
            else:
                self.items.append(_Item(name, value, path, number))


# ---------------------------------------------------------------------------
# Values: PostgreSQL's parse_bool, parse_int and enum lookup


_C_SPACE = " \t\n\v\f\r"
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|[1-9][0-9]*|0[0-7]*)")
_STRTOD = re.compile(
    r"[ \t\n\v\f\r]*([+-]?)(?:"
    r"0[xX](?P<hex>[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)(?:[pP](?P<exp>[+-]?[0-9]+))?"
    r"|(?P<dec>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?))"
)


def _strtol(text: str) -> tuple[float, int, bool]:
    """
    C's strtol(text, &end, 0): decimal, 0x hex or 0 octal after blanks.

    :return: the value, the length read (0 when nothing was), and whether
        it overflowed a 64-bit long.
    """
    match = _STRTOL.match(text)
    if match is None:
        return 0.0, 0, False
    sign, digits = match.groups()
    if digits[:2] in ("0x", "0X"):
        number = int(digits[2:], 16)
    elif digits.startswith("0"):
        number = int(digits, 8)
    elif len(digits) > 19:
        # Longer than any long; skips Python's limit on huge decimal strings.
        number = _LONG_MAX + 1
    else:
        number = int(digits)
    if sign == "-":
        number = -number
    if not _LONG_MIN <= number <= _LONG_MAX:
        return 0.0, match.end(), True
    return float(number), match.end(), False


def _strtod(text: str) -> tuple[float, int, bool]:
    """
    C's strtod for the decimal and hex forms parse_int can reach.

    :return: the value, the length read, and whether it was out of range.
    """
    match = _STRTOD.match(text)
    if match is None:
        return 0.0, 0, False
    sign = match.group(1)
    try:
        if match.group("hex") is not None:
            exponent = match.group("exp")
            value = float.fromhex(f"{sign}0x{match.group('hex')}p{exponent or '0'}")
        else:
            value = float(sign + match.group("dec"))
    except OverflowError:
        return 0.0, match.end(), True
    mantissa = match.group("hex") or match.group("dec").partition("e")[0].partition("E")[0]
    underflow = (value == 0.0 and mantissa.strip("0.") != "") or 0 < abs(value) < sys.float_info.min
    return value, match.end(), math.isinf(value) or underflow


@dataclass(frozen=True, slots=True)
class _Units:
    """A unit table of guc.c for one base unit, greatest unit first."""

    base: str
    table: tuple[tuple[str, float], ...]
    hint: str


_SECONDS = _Units(
    "s",
    (
        ("d", 60 * 60 * 24),
        ("h", 60 * 60),
        ("min", 60),
        ("s", 1),
        ("ms", 1.0 / 1000),
        ("us", 1.0 / (1000 * 1000)),
    ),
    'Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".',
)


def _to_base_unit(value: float, unit: str, units: _Units) -> float | None:
    """
    guc.c's convert_to_base_unit: scale value given in unit (at most three
    characters, blanks after it allowed) to the base unit, rounding a
    fraction to a whole number of the next smaller unit.

    :return: the scaled value, or None for an unknown unit or trailing garbage.
    """
    name = unit.rstrip(_C_SPACE)
    if len(name) > 3 or any(c in _C_SPACE for c in name):
        return None
    for index, (candidate, multiplier) in enumerate(units.table):
        if candidate == name:
            scaled = value * multiplier
            if index + 1 < len(units.table):
                smaller = units.table[index + 1][1]
                scaled = round(scaled / smaller) * smaller
            return scaled
    return None


class _NotAnInteger(Exception):
    """parse_int failed; the argument is the HINT, or None."""


def _parse_int(text: str, units: _Units | None) -> int:
    """
    guc.c's parse_int: an integer in C syntax, or a real that is rounded
    (half to even, as rint), optionally followed by a unit.

    :raises _NotAnInteger: with PostgreSQL's hint when it gives one.
    """
    value, end, overflow = _strtol(text)
    if overflow or text[end : end + 1] in (".", "e", "E"):
        value, end, overflow = _strtod(text)
    if end == 0 or overflow:
        raise _NotAnInteger(None)
    rest = text[end:].lstrip(_C_SPACE)
    if rest:
        if units is None:
            raise _NotAnInteger(None)
        scaled = _to_base_unit(value, rest, units)
        if scaled is None:
            raise _NotAnInteger(units.hint)
        value = scaled
    if not math.isfinite(value) or not _INT_MIN <= round(value) <= _INT_MAX:
        raise _NotAnInteger("Value exceeds integer range.")
    return round(value)


# ---------------------------------------------------------------------------
# Parameters

_Parser = Callable[[str, str], Any]


def _string(name: str, text: str) -> str:
    """A string setting takes any text."""
    return text


def _boolean(name: str, text: str) -> bool:
    """
    A Boolean setting.

    :raises _InvalidValue: PostgreSQL's ``requires a Boolean value``.
    """
    value = parse_bool(text)
    if value is None:
        raise _InvalidValue(f'parameter "{name}" requires a Boolean value')
    return value


def _integer(low: int, high: int, units: _Units | None = None) -> _Parser:
    """
    An integer setting with a range, and a unit when units is given.

    :return: a parser raising _InvalidValue with PostgreSQL's messages.
    """

    def parse(name: str, text: str) -> int:
        try:
            value = _parse_int(text, units)
        except _NotAnInteger as error:
            raise _InvalidValue(_invalid(name, text, error.args[0])) from None
        if not low <= value <= high:
            unit = f" {units.base}" if units else ""
            raise _InvalidValue(
                f'{value}{unit} is outside the valid range for parameter "{name}" ({low} .. {high})'
            )
        return value

    return parse


def _seconds(low: int, high: int) -> _Parser:
    """A time setting in whole seconds, typed as a float of seconds."""
    parse_int = _integer(low, high, _SECONDS)

    def parse(name: str, text: str) -> float:
        return float(parse_int(name, text))

    return parse


def _enum(*options: str) -> _Parser:
    """
    An enum setting: one of options, compared case-insensitively.

    :return: a parser giving the option as spelt in options.
    """

    def parse(name: str, text: str) -> str:
        for option in options:
            if ascii_lower(option) == ascii_lower(text):
                return option
        listed = ", ".join(option or '""' for option in options)
        raise _InvalidValue(_invalid(name, text, f"Available values: {listed}."))

    return parse


def _upstream(name: str, text: str) -> Upstream:
    """
    ``pgtls.upstream``: a libpq connection string.

    :raises _InvalidValue: naming what parse_conninfo objected to.
    """
    try:
        return parse_conninfo(text)
    except ValueError as error:
        # The message shows the value: never its sslpassword.
        shown = _SSLPASSWORD.sub(r"\1********", text)
        raise _InvalidValue(_invalid(name, shown, str(error))) from None


_SSLPASSWORD = re.compile(r"(sslpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]*)")


def _networks(name: str, text: str) -> tuple[IPNetwork, ...]:
    """
    ``pgtls.proxy_protocol_networks``: a comma-separated list of addresses
    and CIDR networks, IPv4 or IPv6; empty for none.

    :raises _InvalidValue: an item is not an address or network, or has bits
        set past its mask (``10.0.0.5/8``: a typo that would trust more than
        one host).
    """
    if not text.strip():
        return ()
    networks = []
    for item in text.split(","):
        item = item.strip()
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as error:
            raise _InvalidValue(_invalid(name, text, str(error))) from None
    return tuple(networks)


def _show_networks(value: tuple[IPNetwork, ...]) -> str:
    """Show a network list as it would be written."""
    return ",".join(str(network) for network in value)


def _show_bool(value: bool) -> str:
    """Show a Boolean as SHOW does."""
    return "on" if value else "off"


def _show_seconds(value: float) -> str:
    """Show seconds in the greatest unit that divides them, as SHOW does (``1min``, ``0``)."""
    if value == 0:
        return "0"
    if value != int(value):
        return f"{value:g}s"
    seconds = int(value)
    for unit, multiplier in _SECONDS.table[:3]:
        if seconds % int(multiplier) == 0:
            return f"{seconds // int(multiplier)}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class _Param:
    """One setting: its PostgreSQL name, Settings attribute, parser and display."""

    name: str
    attribute: str
    parse: _Parser
    show: Callable[[Any], str] = str
    restart_only: bool = True


_TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")

_PARAMS: tuple[_Param, ...] = (
    _Param("listen_addresses", "listen_addresses", _string),
    _Param("port", "port", _integer(1, 65535)),
    _Param("max_connections", "max_connections", _integer(1, 262143)),
    _Param(
        "authentication_timeout",
        "authentication_timeout",
        _seconds(1, 600),
        _show_seconds,
        restart_only=False,
    ),
    _Param("ssl", "ssl", _boolean, _show_bool),
    _Param("ssl_cert_file", "ssl_cert_file", _string),
    _Param("ssl_key_file", "ssl_key_file", _string),
    _Param("ssl_ca_file", "ssl_ca_file", _string),
    _Param("ssl_crl_file", "ssl_crl_file", _string),
    _Param("ssl_ciphers", "ssl_ciphers", _string),
    _Param("ssl_prefer_server_ciphers", "ssl_prefer_server_ciphers", _boolean, _show_bool),
    _Param("ssl_min_protocol_version", "ssl_min_protocol_version", _enum(*_TLS_VERSIONS)),
    _Param("ssl_max_protocol_version", "ssl_max_protocol_version", _enum("", *_TLS_VERSIONS)),
    _Param("ssl_ecdh_curve", "ssl_ecdh_curve", _string),
    _Param("ssl_passphrase_command", "ssl_passphrase_command", _string),
    _Param("log_connections", "log_connections", _boolean, _show_bool, restart_only=False),
    _Param("log_disconnections", "log_disconnections", _boolean, _show_bool, restart_only=False),
    _Param("pgtls.upstream", "upstream", _upstream, format_conninfo),
    _Param("pgtls.clientcert", "clientcert", _enum("required", "optional")),
    # How long SIGTERM waits for sessions to end (0 = no limit); read when
    # the shutdown starts, so a reload applies.
    _Param(
        "pgtls.smart_shutdown_timeout",
        "smart_shutdown_timeout",
        _seconds(0, 2147483),
        _show_seconds,
        restart_only=False,
    ),
    # A Twisted server endpoint string; checked when the service is built.
    _Param("pgtls.metrics_listen", "metrics_listen", _string),
    # Balancers whose connections start with a PROXY protocol header; read
    # when a connection is accepted, so a reload applies to new connections.
    _Param(
        "pgtls.proxy_protocol_networks",
        "proxy_protocol_networks",
        _networks,
        _show_networks,
        restart_only=False,
    ),
    # PgBouncer's so_reuseport: several processes share the port.
    _Param("pgtls.so_reuseport", "so_reuseport", _boolean, _show_bool),
    # The relay's fast path (pgtls.relay.fastpath), decided once at start.
    _Param("pgtls.fast_path", "fast_path", _boolean, _show_bool),
)
_BY_NAME = {param.name: param for param in _PARAMS}
_FILE_PARAMS = ("ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_file")
_OWN_PREFIX = "pgtls"

#: Settings read only at start: a reload that changes them is logged and ignored.
RESTART_ONLY = frozenset(param.name for param in _PARAMS if param.restart_only)


def _check_encoding(text: str) -> None:
    """
    Refuse values holding bytes that were not UTF-8: every setting ends up
    in a log line, a file name or OpenSSL, none of which wants them.

    :raises _InvalidValue: PostgreSQL's encoding message.
    """
    for char in text:
        if "\udc80" <= char <= "\udcff":
            raise _InvalidValue(
                f'invalid byte sequence for encoding "UTF8": 0x{ord(char) - 0xDC00:02x}'
            )
        if "\ud800" <= char <= "\udfff":
            raise _InvalidValue('invalid byte sequence for encoding "UTF8"')


def _convert(param: _Param, text: str) -> Any:
    """
    Type a value for param.

    :raises _InvalidValue: PostgreSQL's message for the value.
    """
    _check_encoding(text)
    return param.parse(param.name, text)


def _valid_custom_name(name: str) -> bool:
    """guc.c's valid_custom_variable_name: two or more identifiers joined by dots."""
    parts = name.split(".")
    return len(parts) >= 2 and all(_CUSTOM_PART.fullmatch(part) for part in parts)


_CUSTOM_PART = re.compile(f"[{_LETTER}][{_LETTER}0-9$]*")


class _Unrecognized(Exception):
    """A name that is neither pgtls's nor another extension's."""


def _lookup(name: str) -> _Param | None:
    """
    Find the parameter a name (any case) refers to.

    :return: the parameter, or None for another extension's dotted name,
        which is ignored as PostgreSQL ignores placeholders.
    :raises _Unrecognized: for an unknown plain name or unknown ``pgtls.*``.
    """
    key = ascii_lower(name)
    param = _BY_NAME.get(key)
    if param is not None:
        return param
    if "." in key and key.split(".", 1)[0] != _OWN_PREFIX:
        return None
    raise _Unrecognized(f'unrecognized configuration parameter "{name}"')


def _overrides(overrides: Mapping[str, str]) -> list[tuple[_Param, str, Any]]:
    """
    Check command-line settings (``-c name=value``), which PostgreSQL does
    before it reads any file.

    :return: (parameter, text, typed value) for each override of ours.
    :raises ConfigError: at ``command line`` without a line.
    """
    checked = []
    for written, text in overrides.items():
        # Like postgres's ParseLongOption: --ssl-ca-file means ssl_ca_file.
        name = written.replace("-", "_")
        text = text.split("\0", 1)[0]
        if "." in name and not _valid_custom_name(name):
            raise ConfigError(
                "command line",
                None,
                f'invalid configuration parameter name "{name}" (Custom parameter names '
                "must be two or more simple identifiers separated by dots.)",
            )
        try:
            param = _lookup(name)
            if param is not None:
                checked.append((param, text, _convert(param, text)))
        except (_Unrecognized, _InvalidValue) as error:
            raise ConfigError("command line", None, error.args[0]) from None
    return checked


def _last_occurrences(items: list[_Item]) -> list[tuple[_Param, _Item]]:
    """
    Check every name, then keep the last line for each parameter, in file
    order: an earlier duplicate is not even validated, as in PostgreSQL.

    :raises ConfigError: the first unrecognized name, at its file and line.
    """
    known: list[tuple[int, _Param, _Item]] = []
    last: dict[str, int] = {}
    for index, item in enumerate(items):
        try:
            param = _lookup(item.name)
        except _Unrecognized as error:
            raise ConfigError(item.path, item.line, error.args[0]) from None
        if param is not None:
            known.append((index, param, item))
            last[param.name] = index
    return [(param, item) for index, param, item in known if last[param.name] == index]


_NO_OVERRIDES: Mapping[str, str] = MappingProxyType({})


def load_settings(data_directory: str, overrides: Mapping[str, str] = _NO_OVERRIDES) -> Settings:
    """
    Read DATA/postgresql.conf (and what it includes), apply command-line
    overrides, and type every setting.

    :param data_directory: the data directory; it is made absolute, and
        relative file settings are resolved against it.
    :param overrides: ``name -> value`` as given to ``-c name=value``; they
        win over the file.  Values are taken as they are (no quotes).
    :return: the settings, with ``explicit`` naming what the file or an
        override set and ``notices`` the log lines for skipped
        include_if_exists files.
    :raises ConfigError: a missing or unreadable postgresql.conf, a syntax
        error, an include error, an unrecognized name, or a bad value; the
        first one found, at its file and line (``command line`` for an
        override).  Nothing is applied then.
    """
    directory = os.path.abspath(data_directory)
    from_argv = _overrides(overrides)
    reader = _Reader()
    main = os.path.join(directory, "postgresql.conf")
    reader.read_file(main, True, (main, None), 0)
    values: dict[str, Any] = {}
    raw: dict[str, str] = {}
    sources: dict[str, tuple[str, int | None]] = {}
    for param, item in _last_occurrences(reader.items):
        try:
            values[param.name] = _convert(param, item.value)
        except _InvalidValue as error:
            raise ConfigError(item.path, item.line, error.args[0]) from None
        raw[param.name] = item.value
        sources[param.name] = (item.path, item.line)
    for param, text, value in from_argv:
        values[param.name] = value
        raw[param.name] = text
        sources[param.name] = ("command line", None)
    settings = _settings(directory, values, raw, reader.notices)
    return replace(settings, sources=tuple((name, *where) for name, where in sources.items()))


def _settings(
    directory: str, values: dict[str, Any], raw: dict[str, str], notices: list[str]
) -> Settings:
    """Build Settings from typed values keyed by PostgreSQL name, resolving file names."""
    settings = Settings(
        data_directory=directory,
        explicit=frozenset(values),
        notices=tuple(notices),
        raw_values=tuple((param.name, raw[param.name]) for param in _PARAMS if param.name in raw),
    )
    changes = {_BY_NAME[name].attribute: value for name, value in values.items()}
    for name in _FILE_PARAMS:
        attribute = _BY_NAME[name].attribute
        file_name = changes.get(attribute, getattr(settings, attribute))
        # An empty file setting means "none", as in PostgreSQL.
        if file_name:
            changes[attribute] = os.path.normpath(os.path.join(directory, file_name))
    if "upstream" in changes:
        changes["upstream"] = resolve_files(changes["upstream"], directory)
    return replace(settings, **changes)


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """
    Name the restart-only settings a reload would change.

    :return: PostgreSQL names (``ssl``, ``pgtls.upstream``) whose values
        differ, for ``parameter "%s" cannot be changed without restarting
        the server``; in a fixed order.
    """
    return [
        param.name
        for param in _PARAMS
        if param.restart_only and getattr(old, param.attribute) != getattr(new, param.attribute)
    ]


def reloaded(old: Settings, new: Settings) -> Settings:
    """
    The settings in force after a reload: ``new``'s reloadable values,
    ``old``'s restart-only ones (with ``old``'s bookkeeping of what was set).
    """
    return replace(
        old,
        **{
            param.attribute: getattr(new, param.attribute)
            for param in _PARAMS
            if not param.restart_only
        },
    )


def changed_settings(old: Settings, new: Settings) -> list[tuple[str, str]]:
    """
    List the reloadable settings a reload changes.

    :return: (name, new value as text) for ``parameter "%s" changed to
        "%s"``: the text as written when the setting is explicit, else its
        default shown as SHOW would.
    """
    written = dict(new.raw_values)
    changed = []
    for param in _PARAMS:
        value = getattr(new, param.attribute)
        if not param.restart_only and getattr(old, param.attribute) != value:
            changed.append((param.name, written.get(param.name, param.show(value))))
    return changed


def describe(settings: Settings) -> list[tuple[str, str]]:
    """
    Every setting with its effective value as text, for ``pgtls check``.

    :return: (name, value) pairs, ``data_directory`` first, then each
        setting in a fixed order; booleans as on/off, the timeout as SHOW
        shows it (``1min``), the upstream as a connection string.
    """
    shown = [("data_directory", settings.data_directory)]
    shown.extend((param.name, param.show(getattr(settings, param.attribute))) for param in _PARAMS)
    return shown
