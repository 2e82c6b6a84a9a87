"""
Everything the server reads at start, loaded and checked in one place, so
``twistd pgtls`` and ``pgtls check`` accept and refuse the same things.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pgtls import conf, hba, tlsctx
from pgtls._ifaddrs import local_networks
from pgtls.upstreamctx import UpstreamTLS, UpstreamTLSError, load_upstream_tls

__all__ = ["ServerConfig", "StartupError", "load_hba", "load_server_config"]


class StartupError(Exception):
    """pgtls cannot start; ``str()`` is one line naming the file."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What a starting server needs: settings, admission rules, TLS contexts."""

    settings: conf.Settings
    rules: hba.Rules
    tls: tlsctx.ServerTLS | None
    # The upstream leg's client context; None when it never uses TLS.
    upstream_tls: UpstreamTLS | None = None


def load_hba(settings: conf.Settings, tls: tlsctx.ServerTLS | None) -> hba.Rules:
    """pg_hba.conf and pg_ident.conf of the data directory; raises HbaError."""
    return hba.load_rules(
        os.path.join(settings.data_directory, "pg_hba.conf"),
        os.path.join(settings.data_directory, "pg_ident.conf"),
        ssl_enabled=settings.ssl,
        client_ca_loaded=tls is not None and tls.verify_clients,
        local_networks=local_networks(),
    )


def load_server_config(
    data_directory: str,
    overrides: Mapping[str, str] | None = None,
    *,
    ask_passphrase: Callable[[str], str] | None = None,
) -> ServerConfig:
    """
    Load postgresql.conf, the SSL files (asking for a passphrase if the key
    needs one) and pg_hba.conf.

    @raise StartupError: anything is missing or wrong; nothing is half-loaded.
    """
    if not os.path.isdir(data_directory):
        raise StartupError(f"{data_directory}: data directory does not exist")
    try:
        settings = conf.load_settings(data_directory, overrides or {})
        tls = (
            tlsctx.load_server_tls(settings, ask_passphrase=ask_passphrase)
            if settings.ssl
            else None
        )
        rules = load_hba(settings, tls)
    except (conf.ConfigError, hba.HbaError, tlsctx.TLSConfigError) as error:
        raise StartupError(str(error)) from None
    try:
        upstream_tls = load_upstream_tls(settings.upstream)
    except UpstreamTLSError as error:
        raise StartupError(
            f'{settings.upstream_origin}: invalid value for parameter "pgtls.upstream": {error}'
        ) from None
    return ServerConfig(settings, rules, tls, upstream_tls)
