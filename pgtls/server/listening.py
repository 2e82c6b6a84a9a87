"""
Where pgtls listens: PostgreSQL's listen_addresses and port, bound at
privileged start, or the sockets systemd passed (socket activation).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    quoteStringArgument,
    serverFromString,
)
from twisted.internet.interfaces import IListeningPort, IReadDescriptor, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from pgtls.core import conf
from pgtls.relay.frontdoor import FrontDoorFactory
from pgtls.relay.reactor import dispatch_directly
from pgtls.server.loader import StartupError

__all__ = [
    "LISTEN_BACKLOG",
    "ListenService",
    "Listenable",
    "bind_shared",
    "configured_listen_descriptions",
    "inherited_descriptions",
    "listen_descriptions",
    "tcp_address",
]

#: What ListenService listens on: an endpoint description, or an endpoint
#: (a socket passed without a name, which no description can name).
Listenable = str | IStreamServerEndpoint

#: The first descriptor systemd passes (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3

#: Twisted's listen backlog, used for the ports pgtls binds itself too.
LISTEN_BACKLOG = 50


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


def inherited_descriptions(
    reactor: Any, environ: Mapping[str, str] | None = None, *, start: int = SD_LISTEN_FDS_START
) -> list[Listenable]:
    """
    What to listen on for the sockets systemd passed (socket activation), in
    systemd's order; empty when it passed none to this process.

    Twisted's ``systemd:`` endpoint reads LISTEN_PID and LISTEN_FDS when it is
    imported (and removes them from the environment, which is why the
    environment the process started with is read here); it keeps the
    sockets only when LISTEN_FDNAMES names each of them, which systemd does
    and ``systemd-socket-activate`` does with ``--fdname``.  Named sockets
    are served through it; unnamed ones (``systemd-socket-activate`` without
    ``--fdname``, or a manager that sets no names) are adopted by descriptor.

    :param reactor: the reactor the endpoints are for.
    :param environ: the environment the process started with (default: read
        from /proc/self/environ, else this process's).
    :param start: the first passed descriptor.
    :raises StartupError: LISTEN_FDS or LISTEN_FDNAMES make no sense, or a
        passed socket is not a listening TCP socket.
    """
    env = _environment_at_start() if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []  # none, or meant for another process
    text = env.get("LISTEN_FDS")
    if text is None:
        return []
    try:
        count = int(text)
    except ValueError:
        raise StartupError(f'LISTEN_FDS "{text}" is not a number of sockets') from None
    names_text = env.get("LISTEN_FDNAMES", "")
    names = names_text.split(":") if names_text else []
    if names and len(names) != count:
        raise StartupError(
            f"systemd passed {count} socket(s) (LISTEN_FDS) but named {len(names)} (LISTEN_FDNAMES)"
        )
    listenables: list[Listenable] = []
    for index in range(max(count, 0)):
        if not names:
            fileno = start + index
            domain = _tcp_domain(fileno, f"socket {index} passed by systemd (unnamed)")
            family = socket.AF_INET6 if domain == "INET6" else socket.AF_INET
            listenables.append(AdoptedStreamServerEndpoint(reactor, fileno, family))
            continue
        what = f'socket {index} ("{names[index]}") passed by systemd'
        try:
            endpoint = serverFromString(reactor, f"systemd:domain=INET:index={index}")
        except IndexError:
            raise StartupError(f"{what}: Twisted's systemd endpoint does not hold it") from None
        domain = _tcp_domain(endpoint.fileno, what)
        listenables.append(f"systemd:domain={domain}:index={index}")
    return listenables


def _environment_at_start() -> Mapping[str, str]:
    """
    The environment this process was started with, LISTEN_FDS included
    (Twisted has removed it from os.environ by now): Linux keeps the
    original in /proc/self/environ.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            data = f.read()
    except OSError:
        return os.environ
    pairs = (item.split(b"=", 1) for item in data.split(b"\0") if b"=" in item)
    return {os.fsdecode(name): os.fsdecode(value) for name, value in pairs}


def _tcp_domain(fileno: int, what: str) -> str:
    """
    ``INET`` or ``INET6``: the address family of a listening TCP socket, so
    that its clients' addresses are read right.

    :raises StartupError: naming ``what``, for anything but a TCP socket.
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


_TCP = re.compile(r"(tcp6?):(\d+):interface=(.*)", re.DOTALL)


def tcp_address(description: str) -> tuple[socket.AddressFamily, str, int]:
    """
    The family, address and port of a description made by :func:`listen_descriptions`.

    :raises ValueError: not such a description.
    """
    match = _TCP.fullmatch(description)
    if match is None:
        raise ValueError(f"not a TCP listen description: {description!r}")
    kind, port, quoted = match.groups()
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    # quoteStringArgument escapes backslashes and colons with a backslash.
    return family, re.sub(r"\\(.)", r"\1", quoted), int(port)


def bind_shared(description: str, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """
    A listening socket for ``description`` with SO_REUSEPORT set, so that
    other processes (of the same user) may bind the same address and port
    and the kernel spreads new connections over them.  Twisted's endpoints
    cannot set the option; the socket is handed to the reactor with
    ``adoptStreamPort``.

    :raises OSError: the socket could not be made, bound or listen.
    """
    family, address, port = tcp_address(description)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As Twisted's TCP ports do, so that a restart need not wait out TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class UnresolvableListenAddress(StartupError):
    """
    A listen_addresses host name does not resolve; ``reason`` is PostgreSQL's
    message for it (StreamServerPort), without the setting's source.
    """

    def __init__(self, name: str, port: int, error: OSError) -> None:
        self.reason = (
            f'could not translate host name "{name}", service "{port}" to address: '
            f"{error.strerror or error}"
        )
        super().__init__(f"listen_addresses: {self.reason}")


def configured_listen_descriptions(settings: conf.Settings) -> list[list[str]]:
    """
    :func:`listen_descriptions` for the settings' listen_addresses and port; a
    name that does not resolve stops the start at the line that set
    listen_addresses (``command line`` for ``-c`` or ``-h``).

    :raises StartupError: ``FILE:LINE: listen_addresses: could not translate
        host name …``.
    """
    try:
        return listen_descriptions(settings.listen_addresses, settings.port)
    except UnresolvableListenAddress as error:
        path, line = next(
            ((path, line) for name, path, line in settings.sources if name == "listen_addresses"),
            # Not set anywhere: the default ('localhost') did not resolve.
            (os.path.join(settings.data_directory, "postgresql.conf"), None),
        )
        raise StartupError(
            str(conf.ConfigError(path, line, f"listen_addresses: {error.reason}"))
        ) from None


def _resolve(name: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as error:
        raise UnresolvableListenAddress(name, port, error) from None
    return [str(info[4][0]) for info in infos]


class ListenService(Service):
    """
    Binds every listen address at privileged start, as PostgreSQL does (with
    SO_REUSEPORT when pgtls.so_reuseport is on), or serves the sockets
    systemd, or the process before us (SIGUSR2, pgtls.server.handover), passed.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, factory: FrontDoorFactory, inherited: Sequence[Listenable] = ()
    ) -> None:
        """
        :param inherited: what to listen on for the sockets passed by systemd
            (see :func:`inherited_descriptions`); when any, listen_addresses and
            port are not used.
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
            groups: list[list[Listenable]] = [[listenable] for listenable in self.inherited]
        else:
            groups = [list(group) for group in configured_listen_descriptions(settings)]
        for group in groups:
            self._listen_first(group)
        if not self.ports:
            raise SystemExit("pgtls: could not create any TCP/IP sockets")
        super().privilegedStartService()

    def _listen_first(self, group: list[Listenable]) -> None:
        for description in group:
            outcome: list[Any] = []
            self._listen(description).addBoth(outcome.append)
            if outcome and not isinstance(outcome[0], Failure):
                port: IListeningPort = outcome[0]
                self.ports.append(port)
                # Accepting needs no legacy log context either (pgtls.relay.reactor).
                dispatch_directly(port)
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

    def _listen(self, description: Any) -> defer.Deferred[IListeningPort]:
        """
        Listen on ``description`` (an endpoint description, or an endpoint);
        with pgtls.so_reuseport, an address of ours on a socket bound shared.
        """
        if not isinstance(description, str):
            endpoint: Any = description
        elif not self.factory.settings.so_reuseport or description.startswith("systemd:"):
            endpoint = serverFromString(self.reactor, description)
        else:
            endpoint = None
        if endpoint is not None:
            listening: defer.Deferred[IListeningPort] = endpoint.listen(self.factory)
            return listening
        try:
            sock = bind_shared(description)
        except OSError as error:
            return defer.fail(error)
        with sock:
            # The reactor takes a duplicate of the descriptor.
            port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, self.factory)
        return defer.succeed(port)

    def share(self) -> list[int]:
        """
        The listening sockets' descriptors, in order, for a process that
        inherits them (a hand-over).  From now on closing a port only
        closes our descriptor: Twisted shuts down (for every process) a
        socket it bound itself when its port closes, and only closes one it
        adopted; our ports become the latter kind.
        """
        for port in self.ports:
            port._shouldShutdown = False  # type: ignore[attr-defined]
        return [cast(IReadDescriptor, port).fileno() for port in self.ports]

    def shared_port(self) -> bool:
        """Whether our sockets are bound with SO_REUSEPORT: other processes may share the port."""
        for port in self.ports:
            sock = socket.socket(fileno=cast(IReadDescriptor, port).fileno())
            try:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
                    return True
            finally:
                sock.detach()
        return False

    def pause(self) -> None:
        """Stop accepting, keeping the sockets (another process accepts on them)."""
        for port in self.ports:
            cast(IReadDescriptor, port).stopReading()  # type: ignore[attr-defined]

    def resume(self) -> None:
        """Accept again after :meth:`pause`."""
        for port in self.ports:
            cast(IReadDescriptor, port).startReading()  # type: ignore[attr-defined]

    def stop_listening(self) -> defer.Deferred[Any]:
        """Close the ports now: new connections go to the other processes on them."""
        ports, self.ports = self.ports, []
        return gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])

    def stopService(self) -> Any:
        super().stopService()
        return self.stop_listening()
