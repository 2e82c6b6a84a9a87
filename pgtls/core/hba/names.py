"""
Database and role names of pg_hba.conf and pg_ident.conf: keywords,
literal names, ``/regex`` patterns and ``+role`` membership checks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pgtls.core.hba.decisions import Client
from pgtls.core.hba.regex import compile_regex
from pgtls.core.hba.tokens import Token

__all__ = ["Name", "database_matches", "role_matches"]


@dataclass(frozen=True, slots=True)
class Name:
    """A database or role token, with its compiled pattern when it is a ``/regex``."""

    token: Token
    regex: re.Pattern[str] | None

    @classmethod
    def compile(cls, token: Token, path: str, number: int) -> Name:
        """A name from a token: any token starting with ``/`` is a regex, quoted or not."""
        if token.text.startswith("/"):
            return cls(token, compile_regex(token.text[1:], path, number))
        return cls(token, None)

    @property
    def is_member_check(self) -> bool:
        """An unquoted ``+role``: membership, which only the database knows."""
        return not self.token.quoted and self.token.text.startswith("+")


def role_matches(user: str, names: Sequence[Name]) -> bool:
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


def database_matches(client: Client, names: Sequence[Name]) -> bool:
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
