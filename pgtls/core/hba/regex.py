"""
Regular expressions: PostgreSQL's ARE syntax on Python's re.
"""

from __future__ import annotations

import re
import string
import warnings

from pgtls.core.hba.cnumbers import c_number
from pgtls.core.hba.errors import HbaError

__all__ = ["compile_regex"]

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
    low = c_number(bound.group(1))
    high = c_number(bound.group(2)) if bound.group(2) else None
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


def compile_regex(pattern: str, path: str, number: int) -> re.Pattern[str]:
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
