"""
libpq-style connection strings for ``pgtls.upstream``.

TO BE COMPLETED by the conf helper: parse_conninfo().
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Upstream"]


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the upstream PostgreSQL listens: a Unix socket directory or a TCP host."""

    host: str
    port: int = 5432
    connect_timeout: float | None = None

    @property
    def is_unix(self) -> bool:
        """A host starting with ``/`` is a Unix socket directory, as in libpq."""
        return self.host.startswith("/")

    @property
    def unix_socket_path(self) -> str:
        """The socket file libpq would use: ``DIR/.s.PGSQL.PORT``."""
        return f"{self.host.rstrip('/')}/.s.PGSQL.{self.port}"
