"""
pg_ident.conf: user name maps (hba.c parse_ident_line, check_usermap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pgtls.core.hba.errors import HbaError
from pgtls.core.hba.names import Name, role_matches
from pgtls.core.hba.tokens import Token, TokenizedLine

__all__ = ["IdentLine", "check_usermap", "parse_ident_line"]


@dataclass(frozen=True, slots=True)
class IdentLine:
    """One pg_ident.conf mapping."""

    map_name: str
    system_user: Name
    pg_user: Name


def parse_ident_line(line: TokenizedLine) -> IdentLine:
    """
    hba.c parse_ident_line.

    :raises HbaError: a missing or multi-valued field, a bad regex, or a
        ``+role`` PG-USERNAME (pgtls cannot check membership).
    """
    values: list[Token] = []
    for index in range(3):
        if index >= len(line.fields):
            raise HbaError(line.path, line.number, "missing entry at end of line")
        if len(line.fields[index]) > 1:
            raise HbaError(line.path, line.number, "multiple values in ident field")
        values.append(line.fields[index][0])
    system_user = Name.compile(values[1], line.path, line.number)
    pg_user = Name.compile(values[2], line.path, line.number)
    if pg_user.is_member_check:
        raise HbaError(
            line.path,
            line.number,
            f'group membership check "{pg_user.token.text}" is not supported by pgtls',
        )
    return IdentLine(values[0].text, system_user, pg_user)


def _ident_line_maps(line: IdentLine, pg_user: str, system_user: str) -> tuple[bool, str | None]:
    """
    hba.c check_ident_usermap for a line of the right map.

    :return: ``(matched, error)``; an error stops the search.
    """
    target = line.pg_user
    if line.system_user.regex is None:
        if line.system_user.token.text != system_user:
            return False, None
        return role_matches(pg_user, [target]), None
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
        target = Name(Token(target.token.text.replace("\\1", group, 1), True), None)
    return role_matches(pg_user, [target]), None


def check_usermap(
    lines: Sequence[IdentLine], usermap: str | None, pg_user: str, system_user: str
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
