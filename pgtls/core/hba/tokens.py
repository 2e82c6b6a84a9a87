"""
Tokenizing authentication files (hba.c next_token, next_field_expand,
tokenize_auth_file): logical lines, quoted tokens, ``@file`` lists and the
include records.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

from pgtls.core.hba.errors import HbaError
from pgtls.core.pgfiles import (
    MAX_DEPTH,
    IncludeProblem,
    absolute,
    include_dir_files,
    read_bytes,
    strerror,
)

__all__ = ["Field", "Token", "TokenizedLine", "Tokenizer"]

_BLANKS = " \t\r"


@dataclass(frozen=True, slots=True)
class Token:
    """
    One token.  ``quoted`` means a double quote came before its first
    character: such a token is never a keyword, a ``+role`` or an ``@file``.
    """

    text: str
    quoted: bool

    def is_keyword(self, word: str) -> bool:
        """Whether this is the unquoted keyword ``word``."""
        return not self.quoted and self.text == word


Field = tuple[Token, ...]


@dataclass(frozen=True, slots=True)
class TokenizedLine:
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


def _next_token(line: str, position: int) -> tuple[Token | None, bool, int]:
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
    return Token("".join(chars), initial_quote), comma, position


class _MissingFile(HbaError):
    """A file to read does not exist (include_if_exists and pg_ident.conf allow that)."""

    def __init__(self, path: str, line: int | None, reason: str, missing: str) -> None:
        super().__init__(path, line, reason)
        self.missing = missing


class Tokenizer:
    """Reads authentication files with their includes and ``@file`` lists."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        # Lines that could not be tokenized (a bad include or @file); the
        # rest of the file is read, as PostgreSQL 16's tokenize_auth_file does.
        self.errors: list[HbaError] = []

    def read(self, path: str, depth: int, where: tuple[str, int | None]) -> list[TokenizedLine]:
        """
        Tokenize one file.

        :param path: the file.
        :param depth: its include depth (0 for the top file).
        :param where: ``(file, line)`` that names it, for errors.
        :raises _MissingFile: the file does not exist.
        :raises HbaError: the file or something it includes cannot be read.
        """
        if depth > MAX_DEPTH:
            raise HbaError(*where, f'could not open file "{path}": maximum nesting depth exceeded')
        try:
            data = read_bytes(path)
        except OSError as error:
            reason = f'could not open file "{path}": {strerror(error)}'
            if error.errno == errno.ENOENT:
                raise _MissingFile(*where, reason, path) from None
            raise HbaError(*where, reason) from None
        lines: list[TokenizedLine] = []
        # Non-UTF-8 bytes survive as surrogate escapes, as in postgresql.conf.
        for number, raw in _logical_lines(data.decode("utf-8", "surrogateescape")):
            try:
                fields = self._fields(raw, path, number, depth)
                if fields:
                    lines.extend(self._include_or_line(fields, path, number, raw, depth))
            except HbaError as error:
                self.errors.append(error)
        return lines

    def read_if_exists(
        self, path: str, depth: int, where: tuple[str, int | None]
    ) -> list[TokenizedLine] | None:
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
        tokens: list[Token] = []
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

    def _expand(self, name: str, path: str, number: int, depth: int) -> list[Token]:
        """Every token of every line of an ``@file``, in order."""
        lines = self.read(absolute(name, path), depth, (path, number))
        return [token for line in lines for field in line.fields for token in field]

    def _include_or_line(
        self, fields: tuple[Field, ...], path: str, number: int, raw: str, depth: int
    ) -> list[TokenizedLine]:
        """An include record's lines, or the line itself."""
        if len(fields) == 2:
            keyword, target = fields[0][0].text, fields[1][0].text
            where = (path, number)
            if keyword == "include":
                return self.read(absolute(target, path), depth + 1, where)
            if keyword == "include_if_exists":
                full = absolute(target, path)
                maybe = self.read_if_exists(full, depth + 1, where)
                if maybe is None:
                    self.warnings.append(
                        f'{path}:{number}: skipping missing authentication file "{full}"'
                    )
                    return []
                return maybe
            if keyword == "include_dir":
                try:
                    files = include_dir_files(target, path)
                except IncludeProblem as problem:
                    raise HbaError(path, number, problem.reason) from None
                return [line for name in files for line in self.read(name, depth + 1, where)]
        return [TokenizedLine(fields, path, number, raw)]
