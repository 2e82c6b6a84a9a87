"""The errors of loading pg_hba.conf and pg_ident.conf."""

from __future__ import annotations

from collections.abc import Sequence

from pgtls.pgfiles import ConfigFileError

__all__ = ["HbaError", "HbaErrors"]


class HbaError(ConfigFileError):
    """pg_hba.conf or pg_ident.conf is wrong; ``str()`` is ``FILE:LINE: reason``."""


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
