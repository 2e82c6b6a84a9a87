"""
Everything the server reads at start, loaded and checked in one place, so
``twistd pgtls`` and ``pgtls check`` accept and refuse the same things.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from twisted.internet.endpoints import serverFromString

from pgtls.core import conf, hba
from pgtls.server._ifaddrs import local_networks
from pgtls.tls import serverctx
from pgtls.tls.upstreamctx import UpstreamTLS, UpstreamTLSError, load_upstream_tls

__all__ = [
    "ServerConfig",
    "StartupError",
    "load_hba",
    "load_server_config",
    "server_endpoint_problem",
]

#: What an endpoint setting looks like, for messages.
_ENDPOINT_EXAMPLE = "tcp:9187:interface=127.0.0.1"


class StartupError(Exception):
    """
    pgtls cannot start; ``str()`` is one line naming the file, or one such
    line per bad line when pg_hba.conf or pg_ident.conf has several.
    """


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What a starting server needs: settings, admission rules, TLS contexts."""

    settings: conf.Settings
    rules: hba.Rules
    tls: serverctx.ServerTLS | None
    # The upstream leg's client context; None when it never uses TLS.
    upstream_tls: UpstreamTLS | None = None


def load_hba(settings: conf.Settings, tls: serverctx.ServerTLS | None) -> hba.Rules:
    """pg_hba.conf and pg_ident.conf of the data directory; raises HbaError (HbaErrors)."""
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

    :raises StartupError: anything is missing or wrong; nothing is half-loaded.
    """
    if not os.path.isdir(data_directory):
        raise StartupError(f"{data_directory}: data directory does not exist")
    try:
        settings = conf.load_settings(data_directory, overrides or {})
        _check_endpoint_setting(settings, "pgtls.metrics_listen", settings.metrics_listen)
        tls = (
            serverctx.load_server_tls(settings, ask_passphrase=ask_passphrase)
            if settings.ssl
            else None
        )
        rules = load_hba(settings, tls)
    except (conf.ConfigError, hba.HbaError, serverctx.TLSConfigError) as error:
        raise StartupError(str(error)) from None
    try:
        upstream_tls = load_upstream_tls(settings.upstream)
    except UpstreamTLSError as error:
        path, line = _source(settings, "pgtls.upstream")
        raise StartupError(
            str(
                conf.ConfigError(
                    path, line, f'invalid value for parameter "pgtls.upstream": {error}'
                )
            )
        ) from None
    return ServerConfig(settings, rules, tls, upstream_tls)


def server_endpoint_problem(description: str) -> str | None:
    """
    Why ``description`` is not a Twisted server endpoint string, in our
    words (Twisted's would be Python's: ``invalid literal for int()``), or
    None when Twisted's parser takes it.  Nothing listens: the endpoint is
    made and dropped, and an endpoint only keeps the reactor it is given.
    """
    try:
        serverFromString(object(), description)
    except OSError as error:
        # An ssl: endpoint reads its certificate files at once.
        return f"not a usable endpoint: {error.filename}: {error.strerror}"
    except (ValueError, TypeError, KeyError, IndexError):
        return f"not a server endpoint string (write one such as {_ENDPOINT_EXAMPLE})"
    return None


def _check_endpoint_setting(settings: conf.Settings, name: str, description: str) -> None:
    """
    An endpoint setting that Twisted cannot parse stops the start at the
    line that set it.

    :raises conf.ConfigError: naming the file and line (or ``command line``).
    """
    if not description:
        return
    problem = server_endpoint_problem(description)
    if problem is None:
        return
    path, line = _source(settings, name)
    raise conf.ConfigError(
        path, line, f'invalid value for parameter "{name}": "{description}": {problem}'
    )


def _source(settings: conf.Settings, name: str) -> tuple[str, int | None]:
    """Where the setting ``name`` was set: its file and line, or the command line."""
    return next(
        ((path, line) for setting, path, line in settings.sources if setting == name),
        ("command line", None),
    )
