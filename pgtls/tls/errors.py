"""
How TLS set-up fails: :class:`TLSConfigError`, in PostgreSQL's words, and
:func:`openssl_reason`, the reason OpenSSL gave.

Shared by the server context (serverctx.py), the passphrase sources
(passphrase.py) and the upstream context (upstreamctx.py); the session log
reads a failed handshake's reason with :func:`first_openssl_reason` too.
"""

from __future__ import annotations

__all__ = ["TLSConfigError", "first_openssl_reason", "openssl_reason"]


class TLSConfigError(Exception):
    """
    The SSL files or settings cannot make a server context.

    ``message`` is PostgreSQL's error message, ``detail`` its DETAIL line or
    None; ``str()`` is the two joined on one line.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        self.message = message
        self.detail = detail
        super().__init__(message if detail is None else f"{message}: {detail}")


def first_openssl_reason(error: Exception) -> str | None:
    """
    The first reason in the OpenSSL error queue that pyOpenSSL's errors carry
    (a list of (library, function, reason)); None when there is none.
    """
    queue = error.args[0] if error.args else None
    if isinstance(queue, list):
        for entry in queue:
            if isinstance(entry, tuple) and len(entry) == 3 and entry[2]:
                return str(entry[2])
    return None


def openssl_reason(error: Exception) -> str:
    """The first reason in an OpenSSL error queue, as PostgreSQL's SSLerrmessage."""
    return first_openssl_reason(error) or "no SSL error reported"
