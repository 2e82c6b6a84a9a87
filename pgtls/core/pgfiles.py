"""
What PostgreSQL's configuration files share, read once for all of them.

postgresql.conf (guc-file.l), pg_hba.conf and pg_ident.conf (hba.c) each
have their own lexer and their own way of reporting errors (the first one
stops postgresql.conf; every bad line of the authentication files is
reported), but they resolve include names, list an ``include_dir``, limit
include nesting, report a failed system call (``%m``), fold names to lower
case and read booleans the same way.  PostgreSQL 16 shares the include
rules in conffiles.c (AbsoluteConfigLocation, GetConfFilesInDir,
CONF_FILE_MAX_DEPTH); pgtls shares them here, pure (no Twisted, no
socket), so that conf.py, the hba package and wire.py cannot drift apart
again.
"""

from __future__ import annotations

import os
import stat

__all__ = [
    "MAX_DEPTH",
    "ConfigFileError",
    "IncludeProblem",
    "absolute",
    "ascii_lower",
    "include_dir_files",
    "is_blank",
    "parse_bool",
    "read_bytes",
    "strerror",
]

# CONF_FILE_MAX_DEPTH: the main file is depth 0, each include one more.
MAX_DEPTH = 10


class ConfigFileError(Exception):
    """
    A configuration file is wrong; ``str()`` is ``FILE:LINE: reason``
    (``FILE: reason`` when no line is to blame).

    :ivar path: the file to blame.
    :ivar line: the line to blame, or None.
    :ivar reason: what is wrong, in PostgreSQL's words.
    """

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(self.shown(f"{located(path, line)}: {reason}"))

    def shown(self, text: str) -> str:
        """The text ``str()`` gives; subclasses may escape it for a terminal."""
        return text


class IncludeProblem(Exception):
    """
    An include directive cannot be followed; ``reason`` is PostgreSQL's
    message, which the caller charges to the directive's file and line.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def located(path: str, line: int | None) -> str:
    """``FILE:LINE``, or ``FILE`` alone when no line is to blame."""
    return f"{path}:{line}" if line is not None else path


def absolute(location: str, calling_file: str) -> str:
    """
    A file named in ``calling_file``, as AbsoluteConfigLocation resolves
    it: an absolute name as written, a relative one joined to the calling
    file's directory and canonicalized.
    """
    if os.path.isabs(location):
        return location
    return os.path.normpath(os.path.join(os.path.dirname(calling_file), location))


def strerror(error: OSError) -> str:
    """The C library's text for a failed system call, as PostgreSQL's ``%m``."""
    if error.errno is not None:
        return os.strerror(error.errno)
    return error.strerror or str(error)


def is_blank(name: str) -> bool:
    """PostgreSQL refuses include names made only of blanks (they name the directory)."""
    return name.strip(" \t\r\n") == ""


def read_bytes(path: str) -> bytes:
    """
    A whole file's bytes.

    :raises OSError: it cannot be opened or read.
    """
    with open(path, "rb") as file:
        return file.read()


def include_dir_files(location: str, calling_file: str) -> list[str]:
    """
    The files ``include_dir location`` reads, as ParseConfigDirectory
    lists them: names ending in ``.conf`` and not starting with a dot,
    directories skipped, in strcmp order of the names' bytes (pg_qsort_strcmp),
    each named ``directory/name``.

    :param location: the directory as written.
    :param calling_file: the file holding the directive.
    :raises IncludeProblem: the name is blank, or the directory or one of
        its entries cannot be read.
    """
    if is_blank(location):
        raise IncludeProblem(f'empty configuration directory name: "{location}"')
    directory = absolute(location, calling_file)
    try:
        names = os.listdir(directory)
    except OSError as error:
        raise IncludeProblem(
            f'could not open configuration directory "{directory}": {strerror(error)}'
        ) from None
    files = []
    # Any name ending in .conf and not starting with a dot has the six
    # bytes PostgreSQL also insists on.
    for name in names:
        if name.startswith(".") or not name.endswith(".conf"):
            continue
        path = os.path.join(directory, name)
        try:
            is_directory = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError as error:
            raise IncludeProblem(f'could not stat file "{path}": {strerror(error)}') from None
        if not is_directory:
            files.append(path)
    # strcmp order: compare the bytes, not the decoded characters (a name
    # that is not UTF-8 holds surrogate escapes, which sort apart from its bytes).
    return sorted(files, key=os.fsencode)


def ascii_lower(text: str) -> str:
    """Fold A-Z only, as PostgreSQL's pg_tolower and guc_name_compare do."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def parse_bool(text: str) -> bool | None:
    """
    PostgreSQL's parse_bool: on/off/true/false/yes/no/1/0 in any case, any
    prefix of true/false/yes/no, at least two letters of on/off.

    :return: the value, or None when text is not a Boolean.
    """
    word = ascii_lower(text)
    for full, value, shortest in _BOOL_WORDS:
        if len(word) >= shortest and full.startswith(word):
            return value
    return None


_BOOL_WORDS = (
    ("true", True, 1),
    ("false", False, 1),
    ("yes", True, 1),
    ("no", False, 1),
    # "o" alone could be either.
    ("on", True, 2),
    ("off", False, 2),
    ("1", True, 1),
    ("0", False, 1),
)
