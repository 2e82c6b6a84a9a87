"""
``twistd pgtls``: options, the listening ports, the SIGHUP reload, the
shutdowns, and what systemd is told.

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
import socket
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any, Literal

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from pgtls import conf, hba
from pgtls.frontdoor import FrontDoorFactory
from pgtls.loader import StartupError, load_hba, load_server_config
from pgtls.metrics import metrics_service
from pgtls.sdnotify import Notifier, monotonic_usec
from pgtls.tlsctx import terminal_passphrase

__all__ = [
    "ListenService",
    "NotifyService",
    "Options",
    "ReloadService",
    "ShutdownService",
    "inherited_descriptions",
    "makeService",
]

#: How often STATUS= is refreshed for systemd (only sent when it changed).
STATUS_INTERVAL = 1.0
#: How long a fast shutdown lets its FATAL messages leave before it aborts.
FAST_SHUTDOWN_GRACE = 5.0
#: PostgreSQL's shutdown modes: SIGTERM asks for a smart one, SIGINT a fast one.
Mode = Literal["smart", "fast"]
SMART: Mode = "smart"
FAST: Mode = "fast"

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

Started by systemd socket activation (LISTEN_FDS, LISTEN_PID and
LISTEN_FDNAMES), pgtls serves the TCP sockets it was passed and ignores
listen_addresses and port. SIGTERM is a smart shutdown (new sessions are
refused, open ones may end within pgtls.smart_shutdown_timeout), SIGINT a
fast one (each session gets FATAL 57P01). With NOTIFY_SOCKET set (systemd's
Type=notify) pgtls reports READY, RELOADING, STOPPING and a STATUS line.

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


def inherited_descriptions(reactor: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """
    Endpoint descriptions for the sockets systemd passed (socket activation),
    in systemd's order; empty when it passed none.

    Twisted's ``systemd:`` endpoint reads LISTEN_PID and LISTEN_FDS when it is
    imported (and removes them from the environment); it keeps the sockets
    only when LISTEN_FDNAMES names each of them, which systemd does and
    ``systemd-socket-activate`` does with ``--fdname``.  LISTEN_FDNAMES is
    left in the environment, so it gives the count; Twisted's parser refuses
    an index it does not hold, which is how sockets meant for another
    process (LISTEN_PID not ours) are told apart.

    @param reactor: the reactor the endpoints are for.
    @param environ: the environment (default: this process's).
    @raise StartupError: a passed socket is not a TCP stream socket.
    """
    env = os.environ if environ is None else environ
    names = env.get("LISTEN_FDNAMES", "")
    descriptions = []
    for index, name in enumerate(names.split(":") if names else []):
        try:
            endpoint = serverFromString(reactor, f"systemd:domain=INET:index={index}")
        except IndexError:
            return []
        domain = _tcp_domain(endpoint.fileno, f'socket {index} ("{name}") passed by systemd')
        descriptions.append(f"systemd:domain={domain}:index={index}")
    return descriptions


def _tcp_domain(fileno: int, what: str) -> str:
    """
    ``INET`` or ``INET6``: the address family of a listening TCP socket, so
    that its clients' addresses are read right.

    @raise StartupError: naming ``what``, for anything but a TCP socket.
    """
    try:
        # Family and type are read from the descriptor; detach() leaves it open.
        sock = socket.socket(fileno=fileno)
    except OSError as error:
        raise StartupError(f"{what}: {error.strerror}") from None
    try:
        family, kind = sock.family, sock.type
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    finally:
        sock.detach()
    if kind != socket.SOCK_STREAM or family not in (socket.AF_INET, socket.AF_INET6):
        raise StartupError(f"{what} is not a TCP socket (ListenStream= with an address or port)")
    if not listening:
        raise StartupError(f"{what} is not listening (the socket unit needs Accept=no)")
    return "INET6" if family == socket.AF_INET6 else "INET"


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
    """
    Binds every listen address at privileged start, as PostgreSQL does, or
    serves the sockets systemd passed.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, factory: FrontDoorFactory, inherited: Sequence[str] = ()
    ) -> None:
        """
        @param inherited: descriptions of sockets passed by systemd (see
            L{inherited_descriptions}); when any, listen_addresses and port
            are not used.
        """
        self.reactor = reactor
        self.factory = factory
        self.inherited = list(inherited)
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        settings = self.factory.settings
        if self.inherited:
            self.log.info(
                "using the {count} socket(s) passed by systemd; listen_addresses "
                "and port are not used",
                count=len(self.inherited),
            )
            groups = [[description] for description in self.inherited]
        else:
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


class NotifyService(Service):
    """
    Tells systemd (``Type=notify``) how pgtls is: READY=1 once the reactor
    runs, RELOADING=1 and READY=1 around a reload, STOPPING=1 when a
    shutdown starts, and a STATUS= line with the session count, refreshed
    when it changes.  Without $NOTIFY_SOCKET it sends nothing and runs no
    timer.
    """

    def __init__(
        self,
        reactor: Any,
        factory: FrontDoorFactory,
        notifier: Notifier,
        *,
        interval: float = STATUS_INTERVAL,
    ) -> None:
        self.reactor = reactor
        self.factory = factory
        self.notifier = notifier
        self.interval = interval
        self.status: str | None = None
        self._stopping = False
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        if self.notifier.enabled:
            # Ready means accepting: the ports accept once the reactor runs.
            self.reactor.callWhenRunning(self._ready)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _ready(self) -> None:
        if self._stopping:
            return
        self._send(READY=1)
        self._loop = LoopingCall(self.update_status)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def status_text(self) -> str:
        """The STATUS= line: the state and the session count."""
        if self.factory.shutting_down:
            count = len(self.factory.connections)
            return f"shutting down; {count} connection{'' if count == 1 else 's'} left"
        count = self.factory.sessions
        return f"ready to accept connections; {count} session{'' if count == 1 else 's'}"

    def update_status(self) -> None:
        """Send STATUS= if it changed since last sent."""
        if self.status_text() != self.status:
            self._send()

    def reloading(self) -> None:
        """A reload starts (RELOADING=1 with the CLOCK_MONOTONIC time systemd asks for)."""
        if not self._stopping:
            self.notifier.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec())

    def reloaded(self) -> None:
        """The reload is done, whatever it applied: ready again."""
        if not self._stopping:
            self._send(READY=1)

    def stopping(self) -> None:
        """A shutdown starts: STOPPING=1, and READY=1 never again."""
        self._stopping = True
        self._send(STOPPING=1)

    def _send(self, **fields: str | int) -> None:
        if not self.notifier.enabled:
            return
        self.status = self.status_text()
        self.notifier.notify(**fields, STATUS=self.status)


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


class ShutdownService(Service):
    """
    PostgreSQL's shutdown modes.  SIGTERM is a smart shutdown: new sessions
    are refused (FATAL 57P03 ``the database system is shutting down``, after
    the SSL negotiation, as PostgreSQL does; cancel requests still pass),
    and pgtls exits once every connection has ended, or terminates what is
    left as a fast shutdown when pgtls.smart_shutdown_timeout expires.
    SIGINT is a fast shutdown: every session gets FATAL 57P01 and is closed
    (see L{pgtls.frontdoor.FrontDoor.terminate}); a connection that has not
    closed within FAST_SHUTDOWN_GRACE is aborted.  A SIGINT during a smart
    shutdown makes it fast.  The ports stay open until the end, so that
    clients are told rather than refused; then the reactor stops.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        factory: FrontDoorFactory,
        notify: NotifyService,
        *,
        grace: float = FAST_SHUTDOWN_GRACE,
    ) -> None:
        self.reactor = reactor
        self.factory = factory
        self.notify = notify
        self.grace = grace
        self.mode: Mode | None = None
        self._timer: IDelayedCall | None = None
        self._reactor_stopping = False

    def startService(self) -> None:
        super().startService()
        # The reactor puts in its own SIGTERM and SIGINT handlers (stop at
        # once) when it starts, which is after startService: ours replace them.
        self.reactor.callWhenRunning(self.install_signal_handlers)

    def install_signal_handlers(self) -> None:
        """SIGTERM asks for a smart shutdown, SIGINT for a fast one, on the reactor thread."""
        signal.signal(signal.SIGTERM, self._signalled)
        signal.signal(signal.SIGINT, self._signalled)

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        mode = SMART if signum == signal.SIGTERM else FAST
        self.reactor.callFromThread(self.request, mode)

    def request(self, mode: Mode) -> None:
        """
        Start a shutdown of ``mode`` (SMART or FAST), or make a smart one
        under way fast; a request no faster than the one under way is ignored.
        """
        if self.mode == mode or self.mode == FAST:
            return
        first = self.mode is None
        self.mode = mode
        self.log.info("received {mode} shutdown request", mode=mode)
        if first:
            self.factory.shutting_down = True
            self.notify.stopping()
        if mode == FAST:
            self._fast()
        else:
            self._smart()
        if first:
            self.factory.when_idle().addCallback(lambda _: self._stop_reactor())

    def _smart(self) -> None:
        count = len(self.factory.connections)
        if not count:
            return
        timeout = self.factory.settings.smart_shutdown_timeout
        self.log.info(
            "waiting for {count} connection(s) to end{limit}",
            count=count,
            limit=f" (at most {timeout:g}s)" if timeout else "",
        )
        if timeout:
            self._timer = self.reactor.callLater(timeout, self._smart_expired)

    def _smart_expired(self) -> None:
        self._timer = None
        self.log.warn(
            "pgtls.smart_shutdown_timeout expired with {count} connection(s) open: "
            "terminating them as in a fast shutdown",
            count=len(self.factory.connections),
        )
        self._terminate_all()

    def _fast(self) -> None:
        self._cancel_timer()
        # PostgreSQL's words: closing the upstream legs ends their transactions.
        self.log.info("aborting any active transactions")
        self._terminate_all()

    def _terminate_all(self) -> None:
        for door in list(self.factory.connections):
            door.terminate()
        if self.factory.connections and self._timer is None:
            self._timer = self.reactor.callLater(self.grace, self._abort_all)

    def _abort_all(self) -> None:
        self._timer = None
        doors = list(self.factory.connections)
        self.log.warn(
            "{count} connection(s) did not close within {grace}s: aborting them",
            count=len(doors),
            grace=self.grace,
        )
        for door in doors:
            door.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stop_reactor(self) -> None:
        self._cancel_timer()
        if not self._reactor_stopping:
            self._reactor_stopping = True
            self.reactor.stop()

    def stopService(self) -> defer.Deferred[None]:
        """
        Wait until no connection is left.  When the reactor stops for another
        reason than our signals, the connections are ended as in a fast
        shutdown first.
        """
        super().stopService()
        self._reactor_stopping = True
        if self.mode is None:
            self.mode = FAST
            self.factory.shutting_down = True
            self.notify.stopping()
            self._terminate_all()
        idle = self.factory.when_idle()

        def done(result: None) -> None:
            self._cancel_timer()

        idle.addCallback(done)
        return idle


def makeService(options: Options) -> MultiService:
    """Load the data directory (asking for a passphrase if needed) and build the server."""
    from twisted.internet import reactor

    try:
        config = load_server_config(
            options["pgdata"], options["overrides"], ask_passphrase=terminal_passphrase
        )
        inherited = inherited_descriptions(reactor)
        if not inherited:
            # Resolve listen_addresses now, so a bad name stops the start here.
            listen_descriptions(config.settings.listen_addresses, config.settings.port)
        metrics = metrics_service(reactor, config.settings)
    except StartupError as error:
        raise SystemExit(f"pgtls: {error}") from None
    factory = FrontDoorFactory(
        config.settings,
        config.rules,
        config.tls,
        reactor,
        metrics=metrics.metrics if metrics is not None else None,
    )
    top = MultiService()
    notify = NotifyService(reactor, factory, Notifier.from_environment())
    ListenService(reactor, factory, inherited).setServiceParent(top)
    ReloadService(reactor, factory, dict(options["overrides"]), notify).setServiceParent(top)
    notify.setServiceParent(top)
    ShutdownService(reactor, factory, notify).setServiceParent(top)
    if metrics is not None:
        metrics.setServiceParent(top)
    log = Logger()
    for notice in config.settings.notices:
        log.info("{notice}", notice=notice)
    for warning in config.rules.warnings:
        log.warn("{warning}", warning=warning)
    return top
