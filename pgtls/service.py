"""
``twistd pgtls``: options, the listening ports and the SIGHUP reload.

makeService loads everything the server needs before twistd daemonizes, so a
passphrase is asked on the terminal and a bad file stops the start with one
line; the ports are bound in privilegedStartService, before ``--uid`` drops
root.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from pgtls import conf, hba
from pgtls.frontdoor import FrontDoorFactory
from pgtls.loader import StartupError, load_hba, load_server_config
from pgtls.tlsctx import terminal_passphrase

__all__ = ["Options", "makeService"]

_LONGDESC = """\
pgtls is PostgreSQL's SSL front door as a server of its own. It listens on
one TCP port for plaintext and SSL PostgreSQL connections, answers SSLRequest
with S or N exactly as PostgreSQL does, admits or refuses each connection by
DIR/pg_hba.conf, and relays admitted sessions to the upstream server named by
pgtls.upstream in DIR/postgresql.conf.

The data directory holds postgresql.conf (PostgreSQL syntax), server.crt and
server.key (when ssl = on), optionally root.crt (client certificates are then
required) and root.crl, pg_hba.conf and pg_ident.conf. `pgtls init DIR` writes
a working one. The SSL files, ssl, port and listen_addresses are read only at
start; SIGHUP re-reads pg_hba.conf, pg_ident.conf and the reloadable settings.

A passphrase-protected server.key is asked for on the terminal before twistd
daemonizes, unless ssl_passphrase_command is set.

Examples:
  twistd --nodaemon --pidfile= pgtls -D /var/lib/pgtls
  twistd -n pgtls -D ./demo -p 6432 -c log_connections=on
"""


class Options(usage.Options):
    """Command line of ``twistd pgtls``."""

    synopsis = "[-D DIR] [-p PORT] [-h ADDRESSES] [-c NAME=VALUE ...]"
    longdesc = _LONGDESC

    optParameters = [
        [
            "pgdata",
            "D",
            None,
            "Data directory with postgresql.conf, pg_hba.conf and the SSL files "
            "(default: $PGDATA).",
        ],
        ["port", "p", None, "TCP port to listen on; overrides port in postgresql.conf."],
        [
            "listen-addresses",
            "h",
            None,
            "Comma-separated addresses or host names to listen on ('*' = all); "
            "overrides listen_addresses.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["overrides"] = {}

    def opt_c(self, assignment: str) -> None:
        """Set a configuration parameter, as `postgres -c NAME=VALUE` does (repeatable)."""
        name, sep, value = assignment.partition("=")
        if not sep or not name.strip():
            raise usage.UsageError(f"-c takes NAME=VALUE, not {assignment!r}")
        self["overrides"][name.strip()] = value

    opt_set = opt_c

    def postOptions(self) -> None:
        if self["pgdata"] is None:
            self["pgdata"] = os.environ.get("PGDATA")
        if not self["pgdata"]:
            raise usage.UsageError("no data directory: give -D DIR or set PGDATA")
        self["pgdata"] = os.path.abspath(self["pgdata"])
        if self["port"] is not None:
            self["overrides"]["port"] = self["port"]
        if self["listen-addresses"] is not None:
            self["overrides"]["listen_addresses"] = self["listen-addresses"]


def listen_descriptions(listen_addresses: str, port: int) -> list[list[str]]:
    """
    Endpoint descriptions for PostgreSQL's listen_addresses, as groups: the
    first description of a group that binds is enough ('*' is the IPv6
    wildcard, which also takes IPv4 clients, or else the IPv4 one).
    """
    groups: list[list[str]] = []
    seen: set[str] = set()
    for item in (part.strip() for part in listen_addresses.split(",")):
        if not item:
            continue
        if item == "*":
            groups.append([_tcp(port, "::"), _tcp(port, "0.0.0.0")])
            continue
        for address in _resolve(item, port):
            if address not in seen:
                seen.add(address)
                groups.append([_tcp(port, address)])
    return groups


def _tcp(port: int, address: str) -> str:
    kind = "tcp6" if ":" in address else "tcp"
    return f"{kind}:{port}:interface={quoteStringArgument(address)}"


def _resolve(name: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as error:
        raise StartupError(
            f'listen_addresses: could not translate host name "{name}": {error}'
        ) from None
    return [str(info[4][0]) for info in infos]


class ListenService(Service):
    """Binds every listen address at privileged start, as PostgreSQL does."""

    log = Logger()

    def __init__(self, reactor: Any, factory: FrontDoorFactory) -> None:
        self.reactor = reactor
        self.factory = factory
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        settings = self.factory.settings
        groups = listen_descriptions(settings.listen_addresses, settings.port)
        for group in groups:
            self._listen_first(group)
        if not self.ports:
            raise SystemExit("pgtls: could not create any TCP/IP sockets")
        super().privilegedStartService()

    def _listen_first(self, group: list[str]) -> None:
        for description in group:
            outcome: list[Any] = []
            serverFromString(self.reactor, description).listen(self.factory).addBoth(outcome.append)
            if outcome and not isinstance(outcome[0], Failure):
                port: IListeningPort = outcome[0]
                self.ports.append(port)
                host = port.getHost()
                self.log.info(
                    'listening on {family} address "{host}", port {port}',
                    family="IPv6" if ":" in host.host else "IPv4",  # type: ignore[attr-defined]
                    host=host.host,  # type: ignore[attr-defined]
                    port=host.port,  # type: ignore[attr-defined]
                )
                return
            reason = outcome[0].getErrorMessage() if outcome else "did not bind"
            self.log.warn(
                "could not bind {description}: {reason}", description=description, reason=reason
            )

    def stopService(self) -> Any:
        super().stopService()
        ports, self.ports = self.ports, []
        return gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])


class ReloadService(Service):
    """SIGHUP re-reads pg_hba.conf, pg_ident.conf and the reloadable settings."""

    log = Logger()

    def __init__(self, reactor: Any, factory: FrontDoorFactory, overrides: dict[str, str]) -> None:
        self.reactor = reactor
        self.factory = factory
        self.overrides = overrides
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(
            signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self.reload)
        )

    def stopService(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        super().stopService()

    def reload(self) -> None:
        """Apply what may change without a restart; keep the rest, and say so."""
        self.log.info("received SIGHUP, reloading configuration files")
        old = self.factory.settings
        try:
            new = conf.load_settings(old.data_directory, self.overrides)
        except conf.ConfigError as error:
            self.log.warn("{error}", error=str(error))
            self.log.warn(
                'configuration file "{path}" contains errors; no changes were applied',
                path=error.path,
            )
        else:
            for notice in new.notices:
                self.log.info("{notice}", notice=notice)
            self.factory.settings = self._apply(old, new)
        try:
            rules = load_hba(self.factory.settings, self.factory.tls)
        except hba.HbaError as error:
            # Both files are swapped together, so neither changes; the log
            # names the one at fault, as PostgreSQL's does.
            which = "pg_ident.conf" if "pg_ident" in os.path.basename(error.path) else "pg_hba.conf"
            self.log.warn("{error}", error=str(error))
            self.log.warn("{which} was not reloaded", which=which)
        else:
            for warning in rules.warnings:
                self.log.warn("{warning}", warning=warning)
            self.factory.rules = rules

    def _apply(self, old: conf.Settings, new: conf.Settings) -> conf.Settings:
        for name in conf.restart_only_changes(old, new):
            self.log.warn(
                'parameter "{name}" cannot be changed without restarting the server', name=name
            )
        for name, value in conf.changed_settings(old, new):
            self.log.info('parameter "{name}" changed to "{value}"', name=name, value=value)
        return conf.reloaded(old, new)


def makeService(options: Options) -> MultiService:
    """Load the data directory (asking for a passphrase if needed) and build the server."""
    from twisted.internet import reactor

    try:
        config = load_server_config(
            options["pgdata"], options["overrides"], ask_passphrase=terminal_passphrase
        )
        # Resolve listen_addresses now, so a bad name stops the start here.
        listen_descriptions(config.settings.listen_addresses, config.settings.port)
    except StartupError as error:
        raise SystemExit(f"pgtls: {error}") from None
    factory = FrontDoorFactory(config.settings, config.rules, config.tls, reactor)
    top = MultiService()
    ListenService(reactor, factory).setServiceParent(top)
    ReloadService(reactor, factory, dict(options["overrides"])).setServiceParent(top)
    log = Logger()
    for notice in config.settings.notices:
        log.info("{notice}", notice=notice)
    for warning in config.rules.warnings:
        log.warn("{warning}", warning=warning)
    return top
