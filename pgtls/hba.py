"""
pg_hba.conf and pg_ident.conf: parse and match, as PostgreSQL 16 does.

load_rules() reads both files (and everything they include) once, and
either returns Rules or raises HbaErrors naming every bad line, as
PostgreSQL logs each one.
Rules.match() then decides each connection without any I/O: the Twisted
shell fills in the facts that need I/O (the verified client host name, from
resolve_client_hostname, and this machine's interfaces, from
pgtls._ifaddrs) and encodes a Refusal with wire.error_response().

pgtls only admits or refuses: trust and the password methods admit and
leave any password exchange to the upstream server, cert checks the client
certificate here, and the methods that need something pgtls does not have
(a role catalogue, an ident or LDAP server, a Unix socket, ...) are a load
error on any line that could match, never silently allowed.

Deliberate differences from PostgreSQL, each on the safe side:

- An IPv4 rule also matches an IPv4-mapped IPv6 client (``::ffff:a.b.c.d``),
  which is how a dual-stack listener sees IPv4 clients.
- pg_ident.conf errors are load errors (PostgreSQL logs them and starts
  without user maps).
- Regular expressions are PostgreSQL's advanced regular expressions
  translated to Python's ``re`` (ASCII classes, POSIX bracket classes,
  ``\\m \\M \\y \\Y``); a pattern that cannot be translated is a load error.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import stat
import string
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pgtls._hostname import resolve_client_hostname

__all__ = [
    "Admission",
    "Authenticated",
    "Client",
    "ClientCert",
    "HbaError",
    "HbaErrors",
    "Refusal",
    "Rules",
    "load_rules",
    "resolve_client_hostname",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class ClientCert:
    """
    A client certificate that passed TLS verification: its subject's Common
    Name (None when it has none) and its whole subject DN in RFC 2253 form
    (``CN=alice,O=Test``), as PostgreSQL's ``clientname=DN`` sees it.
    """

    cn: str | None
    dn: str


class HbaError(Exception):
    """pg_hba.conf or pg_ident.conf is wrong; ``str()`` is ``FILE:LINE: reason``."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


class HbaErrors(HbaError):
    """
    Every bad line of a load, in PostgreSQL's order (lines that do not
    tokenize, then lines that do not parse, pg_hba.conf before
    pg_ident.conf).  ``path``, ``line`` and ``reason`` are the first
    error's; ``str()`` is one ``FILE:LINE: reason`` line per error.

    :ivar hba_errors: the errors in pg_hba.conf and what it includes.
    :ivar ident_errors: the errors in pg_ident.conf and what it includes.
    :ivar errors: both, in that order.
    """

    def __init__(self, hba_errors: Sequence[HbaError], ident_errors: Sequence[HbaError]) -> None:
        self.hba_errors: tuple[HbaError, ...] = tuple(hba_errors)
        self.ident_errors: tuple[HbaError, ...] = tuple(ident_errors)
        self.errors: tuple[HbaError, ...] = self.hba_errors + self.ident_errors
        first = self.errors[0]
        super().__init__(first.path, first.line, first.reason)

    def __str__(self) -> str:
        return "\n".join(HbaError.__str__(error) for error in self.errors)


@dataclass(frozen=True, slots=True)
class Client:
    """
    What pg_hba.conf decides on.

    :ivar address: the client's IP address as accepted.
    :ivar ssl: whether the connection is TLS.
    :ivar database: the requested database.
    :ivar user: the requested user.
    :ivar replication: a physical replication connection (``replication``
        true), which only the ``replication`` database keyword matches.
    :ivar cert: the client certificate, present only if it passed TLS
        verification.
    :ivar hostname: the client's verified host name (resolve_client_hostname),
        filled only when Rules.needs_hostname.
    """

    address: IPAddress
    ssl: bool
    database: str
    user: str
    replication: bool = False
    cert: ClientCert | None = None
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class Authenticated:
    """
    An identity a pg_hba.conf line authenticated, which PostgreSQL 14 and
    later log with log_connections (auth.c set_authn_id): only the ``cert``
    method does so here (the certificate's subject DN, even when its CN is
    what maps to the user); trust authenticates no one, and the password
    methods are the upstream's to log.

    :ivar identity: the authenticated identity.
    :ivar method: the line's method.
    :ivar file: the file holding the line.
    :ivar line_number: its line number.
    """

    identity: str
    method: str
    file: str
    line_number: int


@dataclass(frozen=True, slots=True)
class Admission:
    """
    The connection may pass.

    :ivar method: the matched line's method (``trust``, ``md5``, ``cert``, ...).
    :ivar file: the file holding the matched line.
    :ivar line_number: its line number.
    :ivar line_text: the line as written (continuations joined).
    :ivar identity: the authenticated identity (the certificate's DN for
        ``cert``), for logging; None otherwise.
    """

    method: str
    file: str
    line_number: int
    line_text: str
    identity: str | None

    @property
    def authenticated(self) -> Authenticated | None:
        """The identity to log, with the line that authenticated it."""
        if self.identity is None:
            return None
        return Authenticated(self.identity, self.method, self.file, self.line_number)


@dataclass(frozen=True, slots=True)
class Refusal:
    """
    The connection is refused with a FATAL ErrorResponse.

    :ivar sqlstate: PostgreSQL's SQLSTATE for this refusal.
    :ivar message: PostgreSQL's message, sent to the client.
    :ivar log_detail: why, for the server log only (never sent).
    :ivar authenticated: the identity the line authenticated before the
        refusal (``cert`` whose name does not map to the user), which
        PostgreSQL logs before it refuses.
    """

    sqlstate: str
    message: str
    log_detail: str | None
    authenticated: Authenticated | None = None


# ---------------------------------------------------------------------------
# Tokenizing (hba.c next_token, next_field_expand, tokenize_auth_file)

_BLANKS = " \t\r"
_MAX_DEPTH = 10  # CONF_FILE_MAX_DEPTH


@dataclass(frozen=True, slots=True)
class _Token:
    """
    One token.  ``quoted`` means a double quote came before its first
    character: such a token is never a keyword, a ``+role`` or an ``@file``.
    """

    text: str
    quoted: bool

    def is_keyword(self, word: str) -> bool:
        """Whether this is the unquoted keyword ``word``."""
        return not self.quoted and self.text == word


Field = tuple[_Token, ...]


@dataclass(frozen=True, slots=True)
class _TokenizedLine:
    """A non-empty logical line of an authentication file, split into fields."""

    fields: tuple[Field, ...]
    path: str
    number: int
    raw: str


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """
    ``(line number, line)`` for each logical line: trailing CR/LF removed,
    a final backslash joining the next physical line (which then counts
    towards the numbering), cut at a NUL as PostgreSQL's C strings are.
    """
    physical = text.split("\n")
    index = 0
    number = 1
    while index < len(physical):
        buffer = ""
        after_last_backslash = 0
        continuations = 0
        while index < len(physical):
            buffer = (buffer + physical[index]).rstrip("\r\n")
            index += 1
            # The backslash must come after the previous continuation point,
            # or a line "\" after "x\" would chain on forever.
            if len(buffer) > after_last_backslash and buffer.endswith("\\"):
                buffer = buffer[:-1]
                after_last_backslash = len(buffer)
                continuations += 1
                continue
            break
        yield number, buffer.split("\0", 1)[0]
        number += continuations + 1


def _next_token(line: str, position: int) -> tuple[_Token | None, bool, int]:
    """
    The next token of ``line`` from ``position``.

    Tokens are separated by blanks and commas; double quotes make blanks,
    commas and ``#`` literal (``""`` inside quotes is one ``"``); an unquoted
    ``#`` ends the line.

    :return: ``(token or None at end of line, ended by a comma, position
        after the token)``.
    """
    length = len(line)
    while position < length and (line[position] in _BLANKS or line[position] == ","):
        position += 1
    chars: list[str] = []
    in_quote = was_quote = saw_quote = initial_quote = comma = False
    while position < length and (line[position] not in _BLANKS or in_quote):
        char = line[position]
        if char == "#" and not in_quote:
            position = length
            break
        if char == "," and not in_quote:
            comma = True
            break
        if char != '"' or was_quote:
            chars.append(char)
        was_quote = (not was_quote) if (in_quote and char == '"') else False
        if char == '"':
            in_quote = not in_quote
            saw_quote = True
            if not chars:
                initial_quote = True
        position += 1
    if not saw_quote and not chars:
        return None, False, position
    return _Token("".join(chars), initial_quote), comma, position


def _absolute(location: str, calling_file: str) -> str:
    """A file named in ``calling_file``: relative names are relative to its directory."""
    if os.path.isabs(location):
        return location
    return os.path.normpath(os.path.join(os.path.dirname(calling_file), location))


def _strerror(error: OSError) -> str:
    """The C library's text for an OSError, as PostgreSQL's ``%m``."""
    if error.errno is not None:
        return os.strerror(error.errno)
    return str(error)


class _MissingFile(HbaError):
    """A file to read does not exist (include_if_exists and pg_ident.conf allow that)."""

    def __init__(self, path: str, line: int | None, reason: str, missing: str) -> None:
        super().__init__(path, line, reason)
        self.missing = missing


class _Tokenizer:
    """Reads authentication files with their includes and ``@file`` lists."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        # Lines that could not be tokenized (a bad include or @file); the
        # rest of the file is read, as PostgreSQL 16's tokenize_auth_file does.
        self.errors: list[HbaError] = []

    def read(self, path: str, depth: int, where: tuple[str, int | None]) -> list[_TokenizedLine]:
        """
        Tokenize one file.

        :param path: the file.
        :param depth: its include depth (0 for the top file).
        :param where: ``(file, line)`` that names it, for errors.
        :raises _MissingFile: the file does not exist.
        :raises HbaError: the file or something it includes cannot be read.
        """
        if depth > _MAX_DEPTH:
            raise HbaError(*where, f'could not open file "{path}": maximum nesting depth exceeded')
        try:
            with open(path, encoding="utf-8", errors="surrogateescape", newline="") as file:
                text = file.read()
        except OSError as error:
            reason = f'could not open file "{path}": {_strerror(error)}'
            if error.errno == errno.ENOENT:
                raise _MissingFile(*where, reason, path) from None
            raise HbaError(*where, reason) from None
        lines: list[_TokenizedLine] = []
        for number, raw in _logical_lines(text):
            try:
                fields = self._fields(raw, path, number, depth)
                if fields:
                    lines.extend(self._include_or_line(fields, path, number, raw, depth))
            except HbaError as error:
                self.errors.append(error)
        return lines

    def read_if_exists(
        self, path: str, depth: int, where: tuple[str, int | None]
    ) -> list[_TokenizedLine] | None:
        """read(), but None when ``path`` itself (not something it includes) is missing."""
        try:
            return self.read(path, depth, where)
        except _MissingFile as error:
            if error.missing == path and (error.path, error.line) == where:
                return None
            raise

    def _fields(self, line: str, path: str, number: int, depth: int) -> tuple[Field, ...]:
        """The fields of one logical line; a field that expands to nothing is dropped."""
        fields: list[Field] = []
        position = 0
        while position < len(line):
            tokens, position = self._field(line, position, path, number, depth)
            if tokens:
                fields.append(tokens)
        return tuple(fields)

    def _field(
        self, line: str, position: int, path: str, number: int, depth: int
    ) -> tuple[Field, int]:
        """One field: a comma list, each ``@file`` replaced by the file's tokens."""
        tokens: list[_Token] = []
        while True:
            token, comma, position = _next_token(line, position)
            if token is None:
                break
            if not token.quoted and len(token.text) > 1 and token.text.startswith("@"):
                tokens.extend(self._expand(token.text[1:], path, number, depth + 1))
            else:
                tokens.append(token)
            if not comma:
                break
        return tuple(tokens), position

    def _expand(self, name: str, path: str, number: int, depth: int) -> list[_Token]:
        """Every token of every line of an ``@file``, in order."""
        lines = self.read(_absolute(name, path), depth, (path, number))
        return [token for line in lines for field in line.fields for token in field]

    def _include_or_line(
        self, fields: tuple[Field, ...], path: str, number: int, raw: str, depth: int
    ) -> list[_TokenizedLine]:
        """An include record's lines, or the line itself."""
        if len(fields) == 2:
            keyword, target = fields[0][0].text, fields[1][0].text
            where = (path, number)
            if keyword == "include":
                return self.read(_absolute(target, path), depth + 1, where)
            if keyword == "include_if_exists":
                full = _absolute(target, path)
                maybe = self.read_if_exists(full, depth + 1, where)
                if maybe is None:
                    self.warnings.append(
                        f'{path}:{number}: skipping missing authentication file "{full}"'
                    )
                    return []
                return maybe
            if keyword == "include_dir":
                return [
                    line
                    for name in _conf_files(target, path, number)
                    for line in self.read(name, depth + 1, where)
                ]
        return [_TokenizedLine(fields, path, number, raw)]


def _conf_files(directory: str, calling_file: str, number: int) -> list[str]:
    """
    The files that ``include_dir directory`` reads: names ending in
    ``.conf``, not starting with ``.``, not directories, sorted by name.

    :raises HbaError: the name is blank or the directory cannot be read.
    """
    if not directory.strip(" \t\r\n"):
        raise HbaError(calling_file, number, f'empty configuration directory name: "{directory}"')
    full = _absolute(directory, calling_file)
    try:
        names = os.listdir(full)
    except OSError as error:
        raise HbaError(
            calling_file,
            number,
            f'could not open configuration directory "{full}": {_strerror(error)}',
        ) from None
    files = []
    for name in names:
        if len(name) < 6 or name.startswith(".") or not name.endswith(".conf"):
            continue
        path = os.path.join(full, name)
        try:
            is_directory = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError as error:
            raise HbaError(
                calling_file, number, f'could not stat file "{path}": {_strerror(error)}'
            ) from None
        if not is_directory:
            files.append(path)
    return sorted(files)


# ---------------------------------------------------------------------------
# Regular expressions: PostgreSQL's ARE syntax on Python's re

_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "0-9a-zA-Z",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\n\r\f\v",
    "blank": r" \t",
    "punct": re.escape(string.punctuation),
    "xdigit": "0-9A-Fa-f",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
    "word": "0-9a-zA-Z_",
}
# ARE escapes whose meaning differs in Python (\b is a backspace, \B a
# backslash, \m \M \y \Y are word-boundary constraints).
_ESCAPES = {
    "b": r"\x08",
    "B": r"\\",
    "e": r"\x1b",
    "m": r"\b(?=\w)",
    "M": r"\b(?<=\w)",
    "y": r"\b",
    "Y": r"\B",
}
_BRACKET_ESCAPES = {"B": r"\\", "e": r"\x1b"}
_DIGITS = frozenset(string.digits)
_BOUND = re.compile(r"\{([0-9]+)(?:,([0-9]*))?\}")
_DUPMAX = 255  # ARE's largest repetition count


def _translate_regex(pattern: str) -> str:
    """
    An ARE pattern as a Python pattern.

    :raises ValueError: a bracket expression is malformed.
    """
    if pattern.startswith("***="):
        return re.escape(pattern[4:])
    if pattern.startswith("***:"):
        pattern = pattern[4:]
    out: list[str] = []
    position = 0
    while position < len(pattern):
        char = pattern[position]
        if char == "\\" and position + 1 < len(pattern):
            follower = pattern[position + 1]
            out.append(_ESCAPES.get(follower, char + follower))
            position += 2
        elif char == "[":
            text, position = _translate_bracket(pattern, position)
            out.append(text)
        elif char == "{" and pattern[position + 1 : position + 2] in _DIGITS:
            text, position = _translate_bound(pattern, position)
            out.append(text)
        elif char == "$":
            out.append(r"\Z")  # ARE's $ never matches before a final newline
            position += 1
        else:
            out.append(char)
            position += 1
    return "".join(out)


def _translate_bound(pattern: str, start: int) -> tuple[str, int]:
    """
    The ``{m}``, ``{m,}`` or ``{m,n}`` bound at ``start`` (Python would read
    a malformed one as literal text, ARE rejects it).

    :raises ValueError: unbalanced braces or counts out of order or over 255.
    """
    bound = _BOUND.match(pattern, start)
    if bound is None:
        raise ValueError("braces {} not balanced")
    low = _c_number(bound.group(1))
    high = _c_number(bound.group(2)) if bound.group(2) else None
    if low > _DUPMAX or (high is not None and not low <= high <= _DUPMAX):
        raise ValueError("invalid repetition count(s)")
    return bound.group(), bound.end()


def _translate_bracket(pattern: str, start: int) -> tuple[str, int]:
    """
    The bracket expression at ``start`` as a Python set.

    :return: the set and the position after it.
    :raises ValueError: unbalanced brackets, unknown class or collating element.
    """
    out = ["["]
    position = start + 1
    if pattern.startswith("^", position):
        out.append("^")
        position += 1
    if pattern.startswith("]", position):
        out.append(r"\]")
        position += 1
    while position < len(pattern) and pattern[position] != "]":
        char = pattern[position]
        if char == "[" and pattern[position + 1 : position + 2] in (":", ".", "="):
            text, position = _bracket_element(pattern, position)
            out.append(text)
        elif char == "\\" and position + 1 < len(pattern):
            follower = pattern[position + 1]
            out.append(_BRACKET_ESCAPES.get(follower, char + follower))
            position += 2
        else:
            # Python reads [, &&, ~~ and || inside a set as future syntax.
            out.append("\\" + char if char in "[&~|" else char)
            position += 1
    if position >= len(pattern):
        raise ValueError("brackets [] not balanced")
    out.append("]")
    return "".join(out), position + 1


def _bracket_element(pattern: str, start: int) -> tuple[str, int]:
    """``[:class:]``, ``[.c.]`` or ``[=c=]`` inside a bracket expression."""
    kind = pattern[start + 1]
    end = pattern.find(kind + "]", start + 2)
    if end < 0:
        raise ValueError("brackets [] not balanced")
    name = pattern[start + 2 : end]
    if kind == ":":
        if name not in _POSIX_CLASSES:
            raise ValueError("invalid character class")
        return _POSIX_CLASSES[name], end + 2
    if len(name) != 1:
        raise ValueError("invalid collating element")
    return re.escape(name), end + 2


def _compile_regex(pattern: str, path: str, number: int) -> re.Pattern[str]:
    """
    Compile the ARE ``pattern`` (the token without its leading ``/``).

    :raises HbaError: PostgreSQL's ``invalid regular expression`` error.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return re.compile(_translate_regex(pattern), re.ASCII)
    except (re.error, ValueError, OverflowError, RecursionError) as error:
        reason = error.msg if isinstance(error, re.error) else str(error)
        raise HbaError(path, number, f'invalid regular expression "{pattern}": {reason}') from None


@dataclass(frozen=True, slots=True)
class _Name:
    """A database or role token, with its compiled pattern when it is a ``/regex``."""

    token: _Token
    regex: re.Pattern[str] | None

    @classmethod
    def compile(cls, token: _Token, path: str, number: int) -> _Name:
        """A name from a token: any token starting with ``/`` is a regex, quoted or not."""
        if token.text.startswith("/"):
            return cls(token, _compile_regex(token.text[1:], path, number))
        return cls(token, None)

    @property
    def is_member_check(self) -> bool:
        """An unquoted ``+role``: membership, which only the database knows."""
        return not self.token.quoted and self.token.text.startswith("+")


def _role_matches(user: str, names: Sequence[_Name]) -> bool:
    """hba.c check_role: ``all``, a ``/regex`` or the exact name."""
    for name in names:
        if name.token.is_keyword("all"):
            return True
        if name.regex is not None:
            if name.regex.search(user):
                return True
        elif name.token.text == user and not name.is_member_check:
            return True
    return False


def _database_matches(client: Client, names: Sequence[_Name]) -> bool:
    """hba.c check_db; a physical replication connection matches only ``replication``."""
    for name in names:
        token = name.token
        if client.replication:
            if token.is_keyword("replication"):
                return True
        elif token.is_keyword("all"):
            return True
        elif token.is_keyword("sameuser"):
            if client.database == client.user:
                return True
        elif token.is_keyword("replication"):
            continue
        elif name.regex is not None:
            if name.regex.search(client.database):
                return True
        elif token.text == client.database:
            return True
    return False


# ---------------------------------------------------------------------------
# Addresses


def _candidates(address: IPAddress) -> tuple[IPAddress, ...]:
    """The client address, plus its IPv4 form when it is IPv4-mapped IPv6."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return (address, address.ipv4_mapped)
    return (address,)


@dataclass(frozen=True, slots=True)
class _NoAddress:
    """A ``local`` line: pgtls has no Unix socket, so no TCP client matches."""

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """Never."""
        return False


@dataclass(frozen=True, slots=True)
class _AnyAddress:
    """``all``."""

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """Every address."""
        return True


@dataclass(frozen=True, slots=True)
class _Network:
    """An address with a mask (CIDR or a separate, possibly non-contiguous, mask)."""

    version: int
    address: int
    mask: int

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """Same family and equal under the mask."""
        return any(
            c.version == self.version and (int(c) ^ self.address) & self.mask == 0
            for c in candidates
        )


@dataclass(frozen=True, slots=True)
class _SameHost:
    """``samehost``: any address of this machine."""

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """The client address is one of the interface addresses."""
        return any(
            c.version == i.version and int(c) == int(i.ip) for c in candidates for i in local
        )


@dataclass(frozen=True, slots=True)
class _SameNet:
    """``samenet``: any address in a subnet this machine is directly on."""

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """The client address is in one of the interfaces' networks."""
        return any(
            c.version == i.version and (int(c) ^ int(i.ip)) & int(i.netmask) == 0
            for c in candidates
            for i in local
        )


@dataclass(frozen=True, slots=True)
class _HostName:
    """A host name, or a ``.suffix`` of one, matched against the verified name."""

    pattern: str

    def matches(
        self, client: Client, candidates: Sequence[IPAddress], local: Sequence[Interface]
    ) -> bool:
        """hba.c hostname_match: ASCII case-insensitive, whole name or suffix."""
        if client.hostname is None:
            return False
        actual = _ascii_lower(client.hostname)
        pattern = _ascii_lower(self.pattern)
        if pattern.startswith("."):
            return actual.endswith(pattern)
        return actual == pattern


AddressRule = _NoAddress | _AnyAddress | _Network | _SameHost | _SameNet | _HostName


def _ascii_lower(text: str) -> str:
    """pg_strcasecmp folds ASCII letters only."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_INET_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """
    An IPv4 address in any form inet_aton accepts (what getaddrinfo with
    AI_NUMERICHOST accepts): 1 to 4 parts, each decimal, 0-octal or 0x-hex,
    the last one filling the remaining bytes (``127.1``, ``0x7f.0.0.1``).
    """
    parts = text.split(".")
    if len(parts) > 4 or not all(_INET_PART.fullmatch(part) for part in parts):
        return None
    values = [_c_int(part) for part in parts]
    *leading, last = values
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = 0
    for value in leading:
        number = (number << 8) | value
    return ipaddress.IPv4Address((number << (8 * (4 - len(leading)))) | last)


def _c_int(part: str) -> int:
    """A C integer literal (strtoul base 0): 0x hex, 0 octal, else decimal."""
    if part[:2] in ("0x", "0X"):
        return _c_number(part[2:], 16)
    if part.startswith("0"):
        return _c_number(part, 8)
    return _c_number(part, 10)


def _c_number(digits: str, base: int = 10) -> int:
    """
    ``int(digits, base)`` for an unsigned digit string of any length: past
    what C's 64-bit strtoul holds it saturates (Python would refuse to read
    thousands of digits).
    """
    significant = digits.lstrip("0") or "0"
    if len(significant) > 24:
        return 1 << 80
    return int(significant, base)


def _c_signed(text: str) -> int | None:
    """strtol of a whole string (leading blanks, a sign, digits), or None if it is not one."""
    found = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)", text)
    if found is None:
        return None
    value = _c_number(found.group(2))
    return -value if found.group(1) == "-" else value


def _numeric_address(text: str) -> IPAddress | None:
    """A numeric IPv4 or IPv6 address (zone allowed), or None if ``text`` is not one."""
    v4 = _inet_aton(text)
    if v4 is not None:
        return v4
    if ":" not in text:
        return None
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def _cidr_mask(bits: str, version: int) -> int | None:
    """The mask for ``/bits`` (strtol syntax), or None if out of range or not a number."""
    width = 32 if version == 4 else 128
    count = _c_signed(bits)
    if count is None or not 0 <= count <= width:
        return None
    return ((1 << count) - 1) << (width - count)


# ---------------------------------------------------------------------------
# pg_hba.conf lines

_CONNECTION_TYPES = frozenset(
    {"local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"}
)
# Without GSSAPI encryption, hostnogssenc matches whatever host does.
_MATCHABLE_TYPES = frozenset({"host", "hostssl", "hostnossl", "hostnogssenc"})
_METHODS = frozenset(
    {
        "trust",
        "reject",
        "md5",
        "scram-sha-256",
        "password",
        "gss",
        "sspi",
        "ident",
        "peer",
        "pam",
        "ldap",
        "radius",
        "cert",
        "bsd",
    }
)
_PASSWORD_METHODS = frozenset({"md5", "scram-sha-256", "password"})
_SUPPORTED_METHODS = _PASSWORD_METHODS | {"trust", "reject", "cert"}
_AUTH_FAILED = {
    "trust": '"trust" authentication failed for user "{}"',
    "cert": 'certificate authentication failed for user "{}"',
    "md5": 'password authentication failed for user "{}"',
    "scram-sha-256": 'password authentication failed for user "{}"',
    "password": 'password authentication failed for user "{}"',
}
_LDAP_OPTIONS = frozenset(
    {
        "ldapurl",
        "ldaptls",
        "ldapscheme",
        "ldapserver",
        "ldapport",
        "ldapbinddn",
        "ldapbindpasswd",
        "ldapsearchattribute",
        "ldapsearchfilter",
        "ldapbasedn",
        "ldapprefix",
        "ldapsuffix",
    }
)
_RADIUS_OPTIONS = ("radiusservers", "radiusports", "radiussecrets", "radiusidentifiers")
_RADIUS_LIST_NAMES = {
    "radiusservers": "server",
    "radiusports": "port",
    "radiussecrets": "secret",
    "radiusidentifiers": "identifiers",
}
# option name -> (methods it is valid for, how PostgreSQL lists them)
_OPTION_METHODS: dict[str, tuple[frozenset[str], str]] = {
    "map": (
        frozenset({"ident", "peer", "gss", "sspi", "cert"}),
        "ident, peer, gssapi, sspi, and cert",
    ),
    "pamservice": (frozenset({"pam"}), "pam"),
    "pam_use_hostname": (frozenset({"pam"}), "pam"),
    "krb_realm": (frozenset({"gss", "sspi"}), "gssapi and sspi"),
    "include_realm": (frozenset({"gss", "sspi"}), "gssapi and sspi"),
    "compat_realm": (frozenset({"sspi"}), "sspi"),
    "upn_username": (frozenset({"sspi"}), "sspi"),
    **{name: (frozenset({"ldap"}), "ldap") for name in _LDAP_OPTIONS},
    **{name: (frozenset({"radius"}), "radius") for name in _RADIUS_OPTIONS},
}


@dataclass(frozen=True, slots=True)
class _HbaLine:
    """One parsed pg_hba.conf record."""

    connection_type: str
    databases: tuple[_Name, ...]
    roles: tuple[_Name, ...]
    address: AddressRule
    method: str
    usermap: str | None
    clientcert: str  # "off", "verify-ca" or "verify-full"
    clientname: str  # "CN" or "DN"
    path: str
    number: int
    raw: str

    def admits_transport(self, ssl: bool) -> bool:
        """Whether this line's type matches a TCP connection with or without SSL."""
        if self.connection_type not in _MATCHABLE_TYPES:
            return False
        if self.connection_type == "hostssl":
            return ssl
        if self.connection_type == "hostnossl":
            return not ssl
        return True

    @property
    def matched(self) -> str:
        """PostgreSQL's log detail naming this line."""
        return f'Connection matched file "{self.path}" line {self.number}: "{self.raw}"'


class _HbaLineParser:
    """hba.c parse_hba_line and parse_hba_auth_opt for one tokenized line."""

    def __init__(self, line: _TokenizedLine, ssl_enabled: bool, warnings: list[str]) -> None:
        self._line = line
        self._ssl_enabled = ssl_enabled
        self._warnings = warnings
        self._next = 0
        self._method = ""
        self._connection_type = ""
        self._usermap: str | None = None
        self._clientcert = "off"
        self._clientname = "CN"
        self._options: dict[str, str] = {}

    def parse(self) -> _HbaLine:
        """
        The parsed line.

        :raises HbaError: PostgreSQL's error for the line, or pgtls's when
            the line could match but needs what pgtls does not have.
        """
        self._connection_type = self._parse_connection_type()
        databases = self._names("end-of-line before database specification")
        roles = self._names("end-of-line before role specification")
        address = _NoAddress() if self._connection_type == "local" else self._parse_address()
        self._method = self._parse_method()
        self._parse_options()
        self._check_mandatory_options()
        if self._method == "cert":
            self._clientcert = "verify-full"
        if self._connection_type in _MATCHABLE_TYPES:
            self._check_supported(databases, roles)
        return _HbaLine(
            connection_type=self._connection_type,
            databases=databases,
            roles=roles,
            address=address,
            method=self._method,
            usermap=self._usermap,
            clientcert=self._clientcert,
            clientname=self._clientname,
            path=self._line.path,
            number=self._line.number,
            raw=self._line.raw,
        )

    def _error(self, reason: str) -> HbaError:
        return HbaError(self._line.path, self._line.number, reason)

    def _field(self, missing: str) -> Field:
        """The next field, or the error ``missing`` at end of line."""
        if self._next >= len(self._line.fields):
            raise self._error(missing)
        field = self._line.fields[self._next]
        self._next += 1
        return field

    def _single(self, missing: str, multiple: str) -> _Token:
        """The next field, which must hold one token."""
        field = self._field(missing)
        if len(field) > 1:
            raise self._error(multiple)
        return field[0]

    def _parse_connection_type(self) -> str:
        kind = self._single("", "multiple values specified for connection type").text
        if kind not in _CONNECTION_TYPES:
            raise self._error(f'invalid connection type "{kind}"')
        where = f"{self._line.path}:{self._line.number}"
        if kind == "hostssl" and not self._ssl_enabled:
            self._warnings.append(f"{where}: hostssl record cannot match because SSL is disabled")
        if kind == "hostgssenc":
            self._warnings.append(
                f"{where}: hostgssenc record cannot match because GSSAPI is not supported"
                " by this build"
            )
        return kind

    def _names(self, missing: str) -> tuple[_Name, ...]:
        field = self._field(missing)
        return tuple(_Name.compile(t, self._line.path, self._line.number) for t in field)

    def _parse_address(self) -> AddressRule:
        token = self._single(
            "end-of-line before IP address specification",
            "multiple values specified for host address",
        )
        if token.is_keyword("all"):
            return _AnyAddress()
        if token.is_keyword("samehost"):
            return _SameHost()
        if token.is_keyword("samenet"):
            return _SameNet()
        text, slash, bits = token.text.partition("/")
        address = _numeric_address(text)
        if address is None:
            if slash:
                raise self._error(
                    f'specifying both host name and CIDR mask is invalid: "{token.text}"'
                )
            return _HostName(text)
        if slash:
            mask = _cidr_mask(bits, address.version)
            if mask is None:
                raise self._error(f'invalid CIDR mask in address "{token.text}"')
        else:
            mask = self._parse_mask(address)
        return _Network(address.version, int(address), mask)

    def _parse_mask(self, address: IPAddress) -> int:
        """The separate netmask column."""
        token = self._single(
            "end-of-line before netmask specification", "multiple values specified for netmask"
        )
        mask = _numeric_address(token.text)
        if mask is None:
            raise self._error(f'invalid IP mask "{token.text}": Name or service not known')
        if mask.version != address.version:
            raise self._error("IP address and mask do not match")
        return int(mask)

    def _parse_method(self) -> str:
        method = self._single(
            "end-of-line before authentication method",
            "multiple values specified for authentication type",
        ).text
        if method not in _METHODS:
            raise self._error(f'invalid authentication method "{method}"')
        local = self._connection_type == "local"
        if local and method == "ident":
            method = "peer"  # PostgreSQL's backward compatibility
        if local and method == "gss":
            raise self._error("gssapi authentication is not supported on local sockets")
        if not local and method == "peer":
            raise self._error("peer authentication is only supported on local sockets")
        if self._connection_type != "hostssl" and method == "cert":
            raise self._error("cert authentication is only supported on hostssl connections")
        return method

    def _parse_options(self) -> None:
        while self._next < len(self._line.fields):
            for token in self._field(""):
                name, equals, value = token.text.partition("=")
                if not equals:
                    raise self._error(
                        f"authentication option not in name=value format: {token.text}"
                    )
                self._parse_option(name, value)

    def _parse_option(self, name: str, value: str) -> None:
        if name in ("clientcert", "clientname"):
            self._parse_certificate_option(name, value)
            return
        if name not in _OPTION_METHODS:
            raise self._error(f'unrecognized authentication option name: "{name}"')
        methods, listed = _OPTION_METHODS[name]
        if self._method not in methods:
            raise self._error(
                f'authentication option "{name}" is only valid for authentication methods {listed}'
            )
        if name == "map":
            self._usermap = value
        elif name == "ldapport" and _atoi(value) == 0:
            raise self._error(f'invalid LDAP port number: "{value}"')
        elif name == "ldapurl":
            self._parse_ldap_url(value)
        elif name in _RADIUS_OPTIONS:
            self._parse_radius_list(name, value)
        self._options[name] = value

    def _parse_certificate_option(self, name: str, value: str) -> None:
        if self._connection_type != "hostssl":
            raise self._error(f'{name} can only be configured for "hostssl" rows')
        if name == "clientname":
            if value not in ("CN", "DN"):
                raise self._error(f'invalid value for clientname: "{value}"')
            self._clientname = value
        elif value == "verify-full":
            self._clientcert = value
        elif value == "verify-ca":
            if self._method == "cert":
                raise self._error(
                    'clientcert only accepts "verify-full" when using "cert" authentication'
                )
            self._clientcert = value
        else:
            raise self._error(f'invalid value for clientcert: "{value}"')

    def _parse_ldap_url(self, url: str) -> None:
        """The parts of an ldapurl that the mode checks need (no DNS, no LDAP library)."""
        scheme, colon, rest = url.partition(":")
        if not colon or not rest.startswith("//"):
            raise self._error(f'could not parse LDAP URL "{url}": Bad parameter to an ldap routine')
        if scheme not in ("ldap", "ldaps"):
            raise self._error(f"unsupported LDAP URL scheme: {scheme}")
        _host, _slash, path = rest[2:].partition("/")
        base_dn, _mark, query = path.partition("?")
        attributes, _mark, query = query.partition("?")
        _scope, _mark, query = query.partition("?")
        search_filter = query.partition("?")[0]
        if base_dn:
            self._options["ldapbasedn"] = base_dn
        if attributes:
            self._options["ldapsearchattribute"] = attributes.split(",")[0]
        if search_filter:
            self._options["ldapsearchfilter"] = search_filter

    def _parse_radius_list(self, name: str, value: str) -> None:
        """A comma list of RADIUS values: no empty element."""
        items = _split_list(value)
        if items is None:
            raise self._error(f'could not parse RADIUS {_RADIUS_LIST_NAMES[name]} list "{value}"')
        if name == "radiusports" and any(_atoi(item) == 0 for item in items):
            raise self._error(f'invalid RADIUS port number: "{value}"')

    def _check_mandatory_options(self) -> None:
        if self._method == "ldap":
            self._check_ldap_options()
        elif self._method == "radius":
            self._check_radius_options()

    def _check_ldap_options(self) -> None:
        options = self._options
        search = ("ldapbasedn", "ldapbinddn", "ldapbindpasswd", "ldapsearchattribute")
        if "ldapprefix" in options or "ldapsuffix" in options:
            if any(name in options for name in (*search, "ldapsearchfilter")):
                raise self._error("cannot mix options for simple bind and search+bind modes")
        elif "ldapbasedn" not in options:
            raise self._error(
                'authentication method "ldap" requires argument "ldapbasedn", "ldapprefix",'
                ' or "ldapsuffix" to be set'
            )
        if "ldapsearchattribute" in options and "ldapsearchfilter" in options:
            raise self._error("cannot use ldapsearchattribute together with ldapsearchfilter")

    def _check_radius_options(self) -> None:
        counts: dict[str, int] = {}
        for name in _RADIUS_OPTIONS:
            items = _split_list(self._options[name]) if name in self._options else []
            counts[name] = len(items or [])
        for name in ("radiusservers", "radiussecrets"):
            if name not in self._options:
                raise self._error(
                    f'authentication method "radius" requires argument "{name}" to be set'
                )
        if counts["radiusservers"] == 0:
            raise self._error("list of RADIUS servers cannot be empty")
        if counts["radiussecrets"] == 0:
            raise self._error("list of RADIUS secrets cannot be empty")
        servers = counts["radiusservers"]
        for name, label, allow_none in (
            ("radiussecrets", "secrets", False),
            ("radiusports", "ports", True),
            ("radiusidentifiers", "identifiers", True),
        ):
            count = counts[name]
            if count not in (1, servers) and not (allow_none and count == 0):
                raise self._error(
                    f"the number of RADIUS {label} ({count}) must be 1 or the same as the"
                    f" number of RADIUS servers ({servers})"
                )

    def _check_supported(self, databases: Sequence[_Name], roles: Sequence[_Name]) -> None:
        """pgtls's own limits on a line that could match a connection."""
        for name in databases:
            for keyword in ("samerole", "samegroup"):
                if name.token.is_keyword(keyword):
                    raise self._error(f'database keyword "{keyword}" is not supported by pgtls')
        for name in roles:
            if name.is_member_check:
                raise self._error(
                    f'group membership check "{name.token.text}" is not supported by pgtls'
                )
        if self._method not in _SUPPORTED_METHODS:
            raise self._error(
                f'invalid authentication method "{self._method}": not supported by pgtls'
            )


def _atoi(text: str) -> int:
    """C atoi: leading blanks, a sign, digits; 0 when there are none."""
    found = re.match(r"[ \t\n\v\f\r]*[+-]?[0-9]+", text)
    value = _c_signed(found.group()) if found else None
    return value or 0


def _split_list(value: str) -> list[str] | None:
    """A comma list of (optionally double-quoted) items; None if an item is empty."""
    if not value.strip():
        return []
    items = [item.strip() for item in value.split(",")]
    items = [item[1:-1] if len(item) > 1 and item[0] == item[-1] == '"' else item for item in items]
    return None if any(not item for item in items) else items


# ---------------------------------------------------------------------------
# pg_ident.conf


@dataclass(frozen=True, slots=True)
class _IdentLine:
    """One pg_ident.conf mapping."""

    map_name: str
    system_user: _Name
    pg_user: _Name


def _parse_ident_line(line: _TokenizedLine) -> _IdentLine:
    """
    hba.c parse_ident_line.

    :raises HbaError: a missing or multi-valued field, a bad regex, or a
        ``+role`` PG-USERNAME (pgtls cannot check membership).
    """
    values: list[_Token] = []
    for index in range(3):
        if index >= len(line.fields):
            raise HbaError(line.path, line.number, "missing entry at end of line")
        if len(line.fields[index]) > 1:
            raise HbaError(line.path, line.number, "multiple values in ident field")
        values.append(line.fields[index][0])
    system_user = _Name.compile(values[1], line.path, line.number)
    pg_user = _Name.compile(values[2], line.path, line.number)
    if pg_user.is_member_check:
        raise HbaError(
            line.path,
            line.number,
            f'group membership check "{pg_user.token.text}" is not supported by pgtls',
        )
    return _IdentLine(values[0].text, system_user, pg_user)


def _ident_line_maps(line: _IdentLine, pg_user: str, system_user: str) -> tuple[bool, str | None]:
    """
    hba.c check_ident_usermap for a line of the right map.

    :return: ``(matched, error)``; an error stops the search.
    """
    target = line.pg_user
    if line.system_user.regex is None:
        if line.system_user.token.text != system_user:
            return False, None
        return _role_matches(pg_user, [target]), None
    found = line.system_user.regex.search(system_user)
    if found is None:
        return False, None
    if target.regex is None and not target.is_member_check and "\\1" in target.token.text:
        group = found.group(1) if found.re.groups else None
        if group is None:
            return False, (
                f'regular expression "{line.system_user.token.text[1:]}" has no subexpressions'
                f' as requested by backreference in "{target.token.text}"'
            )
        # The substituted name is literal, never a keyword.
        target = _Name(_Token(target.token.text.replace("\\1", group, 1), True), None)
    return _role_matches(pg_user, [target]), None


def _check_usermap(
    lines: Sequence[_IdentLine], usermap: str | None, pg_user: str, system_user: str
) -> str | None:
    """
    hba.c check_usermap: may ``system_user`` act as ``pg_user``?

    :return: None if so, else the reason to log.
    """
    if not usermap:
        if pg_user == system_user:
            return None
        return (
            f"provided user name ({pg_user}) and authenticated user name ({system_user})"
            " do not match"
        )
    for line in lines:
        if line.map_name != usermap:
            continue
        matched, error = _ident_line_maps(line, pg_user, system_user)
        if error is not None:
            return error
        if matched:
            return None
    return f'no match in usermap "{usermap}" for user "{pg_user}" authenticated as "{system_user}"'


# ---------------------------------------------------------------------------
# Deciding


class Rules:
    """
    The parsed pg_hba.conf and pg_ident.conf: made by load_rules().

    :ivar needs_hostname: whether some line names a host, so that
        ``Client.hostname`` must be looked up before match().
    :ivar warnings: ``FILE:LINE: message`` for lines that load but cannot
        match (hostssl with SSL off, hostgssenc) or skipped includes.
    """

    __slots__ = ("_client_ca_loaded", "_ident", "_lines", "_local", "needs_hostname", "warnings")

    def __init__(
        self,
        lines: Sequence[_HbaLine],
        ident: Sequence[_IdentLine],
        *,
        client_ca_loaded: bool,
        local_networks: Sequence[Interface],
        warnings: Sequence[str],
    ) -> None:
        self._lines = tuple(lines)
        self._ident = tuple(ident)
        self._client_ca_loaded = client_ca_loaded
        self._local = tuple(local_networks)
        self.needs_hostname: bool = any(
            isinstance(line.address, _HostName) and line.connection_type in _MATCHABLE_TYPES
            for line in self._lines
        )
        self.warnings: tuple[str, ...] = tuple(warnings)

    def __len__(self) -> int:
        """How many pg_hba.conf lines were loaded (includes expanded)."""
        return len(self._lines)

    def match(self, client: Client) -> Admission | Refusal:
        """
        Decide a connection as PostgreSQL's ClientAuthentication would,
        up to (not including) any password exchange.

        :param client: the connection's facts.
        :return: an Admission, or the Refusal to send.
        """
        line = self._first_match(client)
        if line is None:
            return _no_entry(client)
        refusal = self._check_clientcert(line, client)
        if refusal is not None:
            return refusal
        if line.method == "reject":
            return _rejected(client, line)
        identity = None
        if line.method == "cert" or line.clientcert == "verify-full":
            assert client.cert is not None  # _check_clientcert made sure
            failure = self._check_cert(line, client.user, client.cert)
            if failure is not None:
                return failure
            if line.method == "cert":
                identity = client.cert.dn
        return Admission(line.method, line.path, line.number, line.raw, identity)

    def _first_match(self, client: Client) -> _HbaLine | None:
        candidates = _candidates(client.address)
        for line in self._lines:
            if not line.admits_transport(client.ssl):
                continue
            if not line.address.matches(client, candidates, self._local):
                continue
            if _database_matches(client, line.databases) and _role_matches(client.user, line.roles):
                return line
        return None

    def _check_clientcert(self, line: _HbaLine, client: Client) -> Refusal | None:
        """The checks that come before the method itself (auth.c ClientAuthentication)."""
        if line.clientcert == "off":
            return None
        if not self._client_ca_loaded:
            return Refusal(
                "F0000",
                "client certificates can only be checked if a root certificate store is available",
                line.matched,
            )
        if client.cert is None:
            return Refusal("28000", "connection requires a valid client certificate", line.matched)
        return None

    def _check_cert(self, line: _HbaLine, user: str, cert: ClientCert) -> Refusal | None:
        """auth.c CheckCertAuth: the certificate's CN (or DN) must map to ``user``."""
        name = cert.dn if line.clientname == "DN" else cert.cn
        if not name:
            reasons = [
                f'certificate authentication failed for user "{user}": client certificate'
                " contains no user name"
            ]
        else:
            reason = _check_usermap(self._ident, line.usermap, user, name)
            if reason is None:
                return None
            reasons = [reason]
            if line.method != "cert":
                reasons.append(
                    "certificate validation (clientcert=verify-full) failed for user"
                    f' "{user}": {line.clientname} mismatch'
                )
        sqlstate = "28P01" if line.method in _PASSWORD_METHODS else "28000"
        message = _AUTH_FAILED[line.method].format(user)
        # cert authenticates the DN as soon as the certificate has a name,
        # before the user map is checked (auth.c CheckCertAuth).
        authenticated = None
        if line.method == "cert" and name:
            authenticated = Authenticated(cert.dn, line.method, line.path, line.number)
        return Refusal(sqlstate, message, "\n".join([*reasons, line.matched]), authenticated)


def _encryption(client: Client) -> str:
    return "SSL encryption" if client.ssl else "no encryption"


def _no_entry(client: Client) -> Refusal:
    """The implicit reject at the end of the file."""
    host = str(client.address)
    if client.replication:
        message = (
            f'no pg_hba.conf entry for replication connection from host "{host}",'
            f' user "{client.user}", {_encryption(client)}'
        )
    else:
        message = (
            f'no pg_hba.conf entry for host "{host}", user "{client.user}",'
            f' database "{client.database}", {_encryption(client)}'
        )
    detail = None
    if client.hostname is not None:
        detail = f'Client IP address resolved to "{client.hostname}", forward lookup matches.'
    return Refusal("28000", message, detail)


def _rejected(client: Client, line: _HbaLine) -> Refusal:
    """An explicit ``reject`` line."""
    host = str(client.address)
    if client.replication:
        message = (
            f'pg_hba.conf rejects replication connection for host "{host}",'
            f' user "{client.user}", {_encryption(client)}'
        )
    else:
        message = (
            f'pg_hba.conf rejects connection for host "{host}", user "{client.user}",'
            f' database "{client.database}", {_encryption(client)}'
        )
    return Refusal("28000", message, line.matched)


def load_rules(
    hba_path: str,
    ident_path: str,
    *,
    ssl_enabled: bool,
    client_ca_loaded: bool,
    local_networks: Sequence[Interface] = (),
) -> Rules:
    """
    Read and parse pg_hba.conf and pg_ident.conf, with their includes.

    :param hba_path: pg_hba.conf; it must exist and have at least one entry.
    :param ident_path: pg_ident.conf; a missing file is an empty one.
    :param ssl_enabled: whether SSL is on (hostssl lines warn otherwise).
    :param client_ca_loaded: whether a root certificate store is loaded
        (clientcert and cert refuse connections otherwise).
    :param local_networks: this machine's interfaces, for samehost/samenet.
    :raises HbaError: pg_hba.conf cannot be opened.
    :raises HbaErrors: for every bad line of both files (and a pg_ident.conf
        that exists but cannot be read); nothing is loaded.
    """
    tokenizer = _Tokenizer()
    hba_lines = tokenizer.read(hba_path, 0, (hba_path, None))
    hba_errors, tokenizer.errors = tokenizer.errors, []
    rule_warnings: list[str] = []
    lines = []
    for line in hba_lines:
        try:
            lines.append(_HbaLineParser(line, ssl_enabled, rule_warnings).parse())
        except HbaError as error:
            hba_errors.append(error)
    if not lines and not hba_errors:
        raise HbaError(hba_path, None, f'configuration file "{hba_path}" contains no entries')
    ident_errors: list[HbaError] = []
    try:
        ident_lines = tokenizer.read_if_exists(ident_path, 0, (ident_path, None)) or []
    except HbaError as error:  # pg_ident.conf exists but cannot be read
        ident_lines = []
        ident_errors.append(error)
    ident_errors += tokenizer.errors
    ident = []
    for line in ident_lines:
        try:
            ident.append(_parse_ident_line(line))
        except HbaError as error:
            ident_errors.append(error)
    if hba_errors or ident_errors:
        raise HbaErrors(hba_errors, ident_errors)
    return Rules(
        lines,
        ident,
        client_ca_loaded=client_ca_loaded,
        local_networks=local_networks,
        warnings=[*tokenizer.warnings, *rule_warnings],
    )
