"""
Numbers as the C library reads them (strtoul, strtol, atoi), which
PostgreSQL uses on pg_hba.conf's addresses, masks, ports and regex bounds.
"""

from __future__ import annotations

import re

__all__ = ["atoi", "c_int", "c_number", "c_signed"]


def c_int(part: str) -> int:
    """A C integer literal (strtoul base 0): 0x hex, 0 octal, else decimal."""
    if part[:2] in ("0x", "0X"):
        return c_number(part[2:], 16)
    if part.startswith("0"):
        return c_number(part, 8)
    return c_number(part, 10)


def c_number(digits: str, base: int = 10) -> int:
    """
    ``int(digits, base)`` for an unsigned digit string of any length: past
    what C's 64-bit strtoul holds it saturates (Python would refuse to read
    thousands of digits).
    """
    significant = digits.lstrip("0") or "0"
    if len(significant) > 24:
        return 1 << 80
    return int(significant, base)


def c_signed(text: str) -> int | None:
    """strtol of a whole string (leading blanks, a sign, digits), or None if it is not one."""
    found = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)", text)
    if found is None:
        return None
    value = c_number(found.group(2))
    return -value if found.group(1) == "-" else value


def atoi(text: str) -> int:
    """C atoi: leading blanks, a sign, digits; 0 when there are none."""
    found = re.match(r"[ \t\n\v\f\r]*[+-]?[0-9]+", text)
    value = c_signed(found.group()) if found else None
    return value or 0
