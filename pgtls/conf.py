"""
postgresql.conf for pgtls: PostgreSQL's syntax, pgtls's settings.

TO BE COMPLETED by the conf helper: the parser and load_settings().  The
Settings dataclass below is the contract other modules code against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgtls.conninfo import Upstream

__all__ = ["ConfigError", "Settings"]


class ConfigError(Exception):
    """A configuration file is wrong; ``str()`` is ``FILE:LINE: reason``."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class Settings:
    """
    Every setting pgtls understands, typed.  File names are absolute
    (relative ones are resolved against the data directory at load).
    ``explicit`` holds the names set by a file or an override, so callers
    can tell a default from a choice (root.crt absent is fine by default,
    an error when named explicitly).
    """

    data_directory: str
    listen_addresses: str = "localhost"
    port: int = 5432
    ssl: bool = False
    ssl_cert_file: str = "server.crt"
    ssl_key_file: str = "server.key"
    ssl_ca_file: str = "root.crt"
    ssl_crl_file: str = "root.crl"
    ssl_ciphers: str = "HIGH:MEDIUM:+3DES:!aNULL"
    ssl_prefer_server_ciphers: bool = True
    ssl_min_protocol_version: str = "TLSv1.2"
    ssl_max_protocol_version: str = ""
    ssl_ecdh_curve: str = "prime256v1"
    ssl_passphrase_command: str = ""
    max_connections: int = 100
    authentication_timeout: float = 60.0
    log_connections: bool = False
    log_disconnections: bool = False
    upstream: Upstream = field(default_factory=lambda: Upstream("/var/run/postgresql", 5432))
    clientcert: str = "required"
    explicit: frozenset[str] = frozenset()
