"""The errors of loading pg_hba.conf and pg_ident.conf."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from pgtls.core.pgfiles import ConfigFileError

__all__ = ["HbaError", "HbaErrors", "HbaFile"]


class HbaFile(enum.Enum):
    """
    Which authentication file is at fault, with what it includes; the value
    is the name PostgreSQL gives it in "... was not reloaded".
    """

    HBA = "pg_hba.conf"
    IDENT = "pg_ident.conf"


class HbaError(ConfigFileError):
    """
    pg_hba.conf or pg_ident.conf is wrong; ``str()`` is ``FILE:LINE: reason``.

    :ivar source: the file at fault (``path`` may be a file it includes).
    """

    def __init__(
        self, path: str, line: int | None, reason: str, source: HbaFile = HbaFile.HBA
    ) -> None:
        super().__init__(path, line, reason)
        self.source = source

    @property
    def sources(self) -> tuple[HbaFile, ...]:
        """The files at fault, pg_hba.conf first."""
        return (self.source,)


class HbaErrors(HbaError):
    """
    Every bad line of a load, in PostgreSQL's order (lines that do not
    tokenize, then lines that do not parse, pg_hba.conf before
    pg_ident.conf).  ``path``, ``line``, ``reason`` and ``source`` are the
    first error's; ``str()`` is one ``FILE:LINE: reason`` line per error.

    :ivar hba_errors: the errors in pg_hba.conf and what it includes.
    :ivar ident_errors: the errors in pg_ident.conf and what it includes,
        each with ``source`` pg_ident.conf (the tokenizer and the name
        parsers that made them serve both files and do not know which).
    :ivar errors: both, in that order.
    """

    def __init__(self, hba_errors: Sequence[HbaError], ident_errors: Sequence[HbaError]) -> None:
        self.hba_errors: tuple[HbaError, ...] = tuple(hba_errors)
        self.ident_errors: tuple[HbaError, ...] = tuple(
            _in_file(error, HbaFile.IDENT) for error in ident_errors
        )
        self.errors: tuple[HbaError, ...] = self.hba_errors + self.ident_errors
        first = self.errors[0]
        super().__init__(first.path, first.line, first.reason, first.source)

    def __str__(self) -> str:
        return "\n".join(HbaError.__str__(error) for error in self.errors)

    @property
    def sources(self) -> tuple[HbaFile, ...]:
        """The files at fault, pg_hba.conf first."""
        return tuple(dict.fromkeys(error.source for error in self.errors))


def _in_file(error: HbaError, source: HbaFile) -> HbaError:
    """``error``, charged to ``source``."""
    if error.source is source:
        return error
    return HbaError(error.path, error.line, error.reason, source)
