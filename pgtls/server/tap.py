"""
``twistd pgtls``: the options, the SIGHUP reload, what systemd is told, and
makeService, which puts them together with the listening ports
(pgtls.server.listening) and the shutdowns (pgtls.server.shutdown).

makeService loads everything the server needs before twistd daemonizes, so a
passphrase is asked on the terminal and a bad file stops the start with one
line; the ports are bound in privilegedStartService, before ``--uid`` drops
root, unless systemd passed them (socket activation).  SIGTERM is
PostgreSQL's smart shutdown, SIGINT its fast one.  Under systemd's
``Type=notify`` pgtls says when it is ready, reloading and stopping.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from pgtls.core import conf, hba
from pgtls.relay import fastpath, selftest
from pgtls.relay import reactor as relay_reactor
from pgtls.relay.frontdoor import FrontDoorFactory
from pgtls.server.handover import Channel, HandoverService, ReadyService, no_terminal_passphrase
from pgtls.server.listening import (
    ListenService,
    configured_listen_descriptions,
    inherited_descriptions,
)
from pgtls.server.loader import StartupError, load_hba, load_server_config
from pgtls.server.metrics import metrics_service
from pgtls.server.sdnotify import Notifier, NotifyService
from pgtls.server.shutdown import ShutdownService
from pgtls.server.startprobe import StartProbeService
from pgtls.server.upstreamcheck import upstream_warnings
from pgtls.tls.passphrase import terminal_passphrase

__all__ = ["Options", "ReloadService", "makeService"]

_LONGDESC = """\
pgtls is PostgreSQL's SSL front door as a server of its own. It listens on
one TCP port for plaintext and SSL PostgreSQL connections, answers SSLRequest
with S or N exactly as PostgreSQL does, admits or refuses each connection by
DIR/pg_hba.conf, and relays admitted sessions to the upstream server named by
pgtls.upstream in DIR/postgresql.conf.

The data directory holds postgresql.conf (PostgreSQL syntax), server.crt and
server.key (when ssl = on), optionally root.crt (client certificates are then
required) and root.crl, pg_hba.conf and pg_ident.conf. `pgtls init DIR` writes
a working one. SIGHUP re-reads pg_hba.conf, pg_ident.conf and the settings
authentication_timeout, log_connections, log_disconnections,
pgtls.smart_shutdown_timeout and pgtls.proxy_protocol_networks; the SSL files
and every other setting are read only at start.

pgtls.upstream takes libpq's TLS keywords (sslmode, sslrootcert, sslcert ...)
for a verified TLS upstream leg. pgtls.proxy_protocol_networks names the load
balancers whose connections begin with a PROXY protocol header (v1 or v2).
pgtls.so_reuseport = on lets several pgtls processes share the port.
pgtls.metrics_listen (a Twisted endpoint string) serves Prometheus metrics.

A passphrase-protected server.key is asked for on the terminal before twistd
daemonizes, unless ssl_passphrase_command is set.

Started by systemd socket activation (LISTEN_FDS, LISTEN_PID, and
LISTEN_FDNAMES if set), pgtls serves the TCP sockets it was passed, named or
not, and ignores listen_addresses and port. SIGTERM is a smart shutdown (new
sessions are refused, open ones may end within
pgtls.smart_shutdown_timeout), SIGINT a fast one (each session gets FATAL
57P01). SIGUSR2 starts a new pgtls on the same listening sockets, which
reads every file anew (a renewed certificate); once it is ready this one
stops accepting and ends as in a smart shutdown, refusing no connection.
With NOTIFY_SOCKET set (systemd's Type=notify) pgtls reports READY,
RELOADING, STOPPING and a STATUS line.

The relay's fast path uses private internals of Twisted and pyOpenSSL; a
self-test proves them at start, and if it fails pgtls logs one warning and
relays through Twisted's public path. pgtls.fast_path = off (or the
environment variable PGTLS_FAST_PATH=off, which wins) turns it off.

Examples:
  twistd --nodaemon --pidfile= pgtls -D /var/lib/pgtls
  twistd --nodaemon --pidfile= pgtls -D ./demo -p 6432 -c log_connections=on
"""


class Options(usage.Options):
    """Command line of ``twistd pgtls``."""

    synopsis = "[-D DIR] [-p PORT] [-h ADDRESSES] [-c NAME=VALUE ...]"
    # Empty, so that usage.Options does not wrap _LONGDESC into one paragraph
    # (it runs the examples together); getUsage adds it as written.
    longdesc = ""

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

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse as usage.Options does, but end a usage error with one line,
        as ``postgres -x`` does: twistd would print its whole usage text and
        then the error, so SystemExit (exit status 1) passes its handler by.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            raise SystemExit(f"pgtls: {error} (see twistd pgtls --help)") from None

    def getUsage(self, width: int | None = None) -> str:
        """The options as Twisted lists them, then the description as written."""
        usage_text: str = super().getUsage(width)
        return f"{usage_text}\n{_LONGDESC}"

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


class ReloadService(Service):
    """SIGHUP re-reads pg_hba.conf, pg_ident.conf and the reloadable settings."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        factory: FrontDoorFactory,
        overrides: dict[str, str],
        notify: NotifyService | None = None,
    ) -> None:
        self.reactor = reactor
        self.factory = factory
        self.overrides = overrides
        self.notify = notify
        self._previous: Any = None

    def privilegedStartService(self) -> None:
        # Hooked before any port listens (this service comes first), as the
        # postmaster does: a client may connect and a SIGHUP follow at once,
        # and SIGHUP's default action would end the server.
        super().privilegedStartService()
        self._hook()

    def startService(self) -> None:
        super().startService()
        self._hook()

    def _hook(self) -> None:
        if self._previous is None:
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
        if self.notify is not None:
            self.notify.reloading()
        try:
            self._reload()
        finally:
            if self.notify is not None:
                self.notify.reloaded()

    def _reload(self) -> None:
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
            # has each bad line, then names the file at fault, as
            # PostgreSQL's does.
            errors = error.errors if isinstance(error, hba.HbaErrors) else (error,)
            for each in errors:
                self.log.warn("{error}", error=str(each))
            for which in _not_reloaded(error):
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


def _not_reloaded(error: hba.HbaError) -> list[str]:
    """The files whose errors kept the rules in force, as PostgreSQL names them."""
    return [source.value for source in error.sources]


def _startup_exit(error: StartupError) -> SystemExit:
    """One ``pgtls:`` line per error (several bad pg_hba.conf lines are each named)."""
    return SystemExit("\n".join(f"pgtls: {line}" for line in str(error).split("\n")))


def makeService(options: Options) -> MultiService:
    """Load the data directory (asking for a passphrase if needed) and build the server."""
    # Started by SIGUSR2 (pgtls.server.handover): report there, and ask no terminal.
    channel = Channel.from_environment()
    try:
        config = load_server_config(
            options["pgdata"],
            options["overrides"],
            ask_passphrase=terminal_passphrase if channel is None else no_terminal_passphrase,
        )
    except StartupError as error:
        raise _startup_exit(error) from None
    try:
        fast = fastpath.start(config.settings.fast_path, os.environ, selftest.self_test)
    except ValueError as error:  # a bad PGTLS_FAST_PATH
        raise SystemExit(f"pgtls: {error}") from None
    # Nothing has imported the global reactor yet: the fast path's reactor
    # goes in now, else Twisted's default (epoll) does.
    if fast:
        relay_reactor.install()
    from twisted.internet import reactor

    try:
        inherited = inherited_descriptions(reactor)
        if not inherited:
            # Resolve listen_addresses now, so a bad name stops the start here.
            configured_listen_descriptions(config.settings)
        metrics = metrics_service(reactor, config.settings)
        if channel is not None and channel.metrics_fd is not None:
            # The metrics socket the old process served: ours, or closed if
            # we serve no metrics now (it would take connections no one serves).
            if metrics is not None:
                metrics.endpoint = channel.metrics_endpoint(reactor)
            else:
                os.close(channel.metrics_fd)
    except StartupError as error:
        raise _startup_exit(error) from None
    factory = FrontDoorFactory(
        config.settings,
        config.rules,
        config.tls,
        reactor,
        metrics=metrics.metrics if metrics is not None else None,
        upstream_tls=config.upstream_tls,
    )
    top = MultiService()
    notify = NotifyService(reactor, factory, Notifier.from_environment())
    if channel is not None:
        notify.main_pid = os.getpid()
    ReloadService(reactor, factory, dict(options["overrides"]), notify).setServiceParent(top)
    listen = ListenService(reactor, factory, inherited)
    listen.setServiceParent(top)
    notify.setServiceParent(top)
    shutdown = ShutdownService(reactor, factory, notify, listen=listen)
    shutdown.setServiceParent(top)
    # After the ports: it looks at the upstream once the reactor runs.
    StartProbeService(reactor, factory).setServiceParent(top)
    if metrics is not None:
        metrics.setServiceParent(top)
    HandoverService(reactor, listen, shutdown, metrics).setServiceParent(top)
    if channel is not None:
        # Last: ready once every port listens and systemd has been told.
        ReadyService(reactor, channel).setServiceParent(top)
    log = Logger()
    for notice in config.settings.notices:
        log.info("{notice}", notice=notice)
    for warning in config.rules.warnings:
        log.warn("{warning}", warning=warning)
    for warning in upstream_warnings(config.settings.upstream):
        log.warn("{warning}", warning=warning)
    return top
