"""
The front door: one Twisted Protocol per client connection.

The connection's policy is pgtls.core.session's: FrontDoor feeds a Session what
happens (bytes, TLS handshake done, the pg_hba.conf verdict, the upstream
connected or failed, the timer, a shutdown) and performs what it answers:
write, start TLS, ask pg_hba.conf (pgtls.core.hba), open the upstream leg, hand
the session to the relay (pgtls.relay.upstream), close.  Nothing a client sends
reaches the upstream before the session is admitted.  A connection from a
load balancer in ``pgtls.proxy_protocol_networks`` starts with a PROXY
header (pgtls.relay.proxyheader), read before the first packet; its address is
the client's from then on.  What the connections share is FrontDoorFactory's
(pgtls.relay.listener); what their log lines say, pgtls.relay.sessionlog's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeAlias

from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from pgtls.core import backendstart, hba, wire
from pgtls.core.hba.decisions import IPAddress, unmapped
from pgtls.core.session import (
    Action,
    Admit,
    Close,
    ConnectionLost,
    ConnectUpstream,
    DataReceived,
    DropUpstream,
    Ending,
    Event,
    ForwardCancel,
    HandshakeDone,
    HbaAdmitted,
    HbaRefused,
    Log,
    ProxyHeaderInvalid,
    ProxyHeaderRead,
    Relay,
    Send,
    Session,
    Shutdown,
    StartTLS,
    State,
    StopRelay,
    StopUpstream,
    TimerFired,
    UpstreamClosed,
    UpstreamConnected,
    UpstreamFailed,
)
from pgtls.relay.counters import refusal_reason
from pgtls.relay.fastwrite import send_or_queue, start_tls
from pgtls.relay.listener import Listener
from pgtls.relay.proxyheader import InvalidProxyHeader, ProxyHeaderReader
from pgtls.relay.pump import Pump
from pgtls.relay.pump import start as start_pump
from pgtls.relay.reactor import dispatch_directly
from pgtls.relay.sessionlog import authorized_fields, session_event, session_time, ssl_reason
from pgtls.relay.upstream import (
    UpstreamProtocol,
    send_cancel,
    send_cancel_on,
    set_nodelay,
    splice,
)
from pgtls.relay.upstreamleg import describe_failure
from pgtls.tls.serverctx import TLSInfo

__all__ = ["FrontDoor", "FrontDoorFactory"]


# The session's events without fields: made once, not per connection.
_UPSTREAM_CONNECTED = UpstreamConnected()
_HBA_ADMITTED = HbaAdmitted()
_UPSTREAM_CLOSED = UpstreamClosed()
_SHUTDOWN = Shutdown()
_TIMER_FIRED = TimerFired()
_PROXY_HEADER_READ = ProxyHeaderRead()
_CONNECTION_LOST = ConnectionLost()

#: Where a connection is (see pgtls.core.session.State).
Phase = State


def client_address(address: IAddress) -> tuple[IPAddress, int]:
    """
    The client's IP address and port; an IPv4-mapped IPv6 address (a client
    of a dual-stack listener) is reported as the IPv4 address it is.
    """
    host = str(getattr(address, "host", "0.0.0.0")).split("%", 1)[0]
    return unmapped(ipaddress.ip_address(host)), int(getattr(address, "port", 0))


if TYPE_CHECKING:
    # Twisted 24.7's Factory is not generic at run time.
    _DoorFactory: TypeAlias = Factory["FrontDoor"]
else:
    _DoorFactory = Factory


class FrontDoorFactory(Listener["FrontDoor"], _DoorFactory):
    """The listening side (see pgtls.relay.listener) and the factory of its FrontDoors."""

    noisy = False

    def buildProtocol(self, addr: IAddress | None) -> FrontDoor:
        assert addr is not None, "listening ports always give the peer's address"
        return FrontDoor(self, addr)


@implementer(IHandshakeListener)
class FrontDoor(Protocol):
    """
    One client connection, from its first byte to the end of its session:
    it feeds a pgtls.core.session.Session the connection's events and performs
    the actions the session returns.
    """

    log = Logger()
    # A TCP transport that startTLS may layer TLS onto.
    transport: Any
    factory: FrontDoorFactory

    def __init__(self, factory: FrontDoorFactory, addr: IAddress) -> None:
        self.factory = factory
        self.address, self.port = client_address(addr)
        # A load balancer's connection starts with a PROXY protocol header.
        networks = factory.settings.proxy_protocol_networks
        self.session = Session(factory, proxy=any(self.address in net for net in networks))
        # The load balancer's address and port, when the client's come from
        # its PROXY protocol header.
        self.proxy: tuple[IPAddress, int] | None = None
        self._proxy_reader: ProxyHeaderReader | None = None
        self.tls_info: TLSInfo | None = None
        self.upstream: UpstreamProtocol | None = None
        self.pump: Pump | None = None
        # The upstream's startup messages, read until the session is ready
        # or refused; then dropped (see _watch_upstream).
        self._backend: backendstart.BackendStartReader | None = None
        self.backend_pid: int | None = None
        self.bytes_up = 0
        self._connect_started = 0.0
        self._counted = False
        self._timer: IDelayedCall | None = None
        self._connecting: defer.Deferred[Any] | None = None
        self._started = factory.reactor.seconds()

    @property
    def phase(self) -> Phase:
        """The session's state."""
        return self.session.state

    @property
    def reader(self) -> wire.StartupReader:
        """The first packets' reader, until relaying starts (see upstream_connected)."""
        return self.session.reader

    @property
    def startup(self) -> wire.StartupMessage | None:
        """The client's StartupMessage, once read (brief once relayed)."""
        return self.session.startup

    # -- connection events -------------------------------------------------

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        set_nodelay(self.transport)
        # Its events need no legacy log context: this protocol's lines name
        # their own namespace and host (see pgtls.relay.reactor).
        dispatch_directly(self.transport)
        self._timer = self.factory.reactor.callLater(
            self.factory.settings.authentication_timeout, self._authentication_timed_out
        )
        if self.session.state is Phase.PROXY:
            # The client's address is in the header: log it once it is read.
            self._proxy_reader = ProxyHeaderReader()
            return
        self._connection_received()

    def _connection_received(self) -> None:
        if self.factory.settings.log_connections:
            self.log.info(
                "connection received: host={host} port={port}",
                host=str(self.address),
                port=self.port,
            )

    def dataReceived(self, data: bytes) -> None:
        state = self.session.state
        if state is Phase.RELAYING:
            assert self.upstream is not None
            # The pump relays without calling this: only the reads it leaves
            # to the TLS layer (a session that is closing) come here.
            self.bytes_up += len(data)
            self.upstream.transport.write(data)
            return
        if state is Phase.PROXY:
            self._read_proxy_header(data)
            return
        self._feed(DataReceived(data))

    def handshakeCompleted(self) -> None:
        handle = self.transport.getHandle()
        self.tls_info = info = self.factory.describe_tls(handle)
        if self.factory.metrics is not None:
            self.factory.metrics.tls_established(info)
        self._feed(HandshakeDone(info.alpn, info.client_cert is not None))

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        state = self.session.state
        if state is Phase.HANDSHAKE:
            tls_reason = ssl_reason(reason.value)
            self.log.info(
                "could not accept SSL connection: {reason} (host={host})",
                reason=tls_reason,
                host=str(self.address),
            )
            self._feed(ConnectionLost(tls_reason))
        else:
            self._feed(_CONNECTION_LOST)
        relaying = state is Phase.RELAYING
        self._stop_pump()
        self._stop_timer()
        if self._connecting is not None:
            self._connecting.cancel()
        if self.upstream is not None:
            if relaying:
                # A transport with a producer registered waits for it to go
                # before it closes.
                self.upstream.transport.unregisterProducer()
            self.upstream.transport.loseConnection()
        admitted = self._counted
        if self._counted:
            self.factory.sessions -= 1
            self._counted = False
        self._session_end(admitted)
        self.factory.connection_ended(self)

    # -- driving the session -------------------------------------------------

    def _feed(self, event: Event) -> None:
        """Give the session one event and perform what it asks, in order."""
        for action in self.session.handle(event):
            self._perform(action)

    def _perform(self, action: Action) -> None:
        if type(action) is Send:
            self.transport.write(action.data)
        elif type(action) is Close:
            if action.graceful:
                self.transport.loseConnection()
            # PostgreSQL's backend exits: close_notify, then FIN at once; the
            # TLS layer alone would wait for the client's close_notify.
            _close_socket(self.transport)
        elif type(action) is Log:
            self.log.emit(
                LogLevel.warn if action.warn else LogLevel.info,
                "{message} (host={host})",
                message=action.message,
                host=str(self.address),
            )
        elif type(action) is StartTLS:
            self._start_tls(action)
        elif type(action) is Admit:
            self._admit(action.startup)
        elif type(action) is ConnectUpstream:
            self._connect_upstream()
        elif type(action) is Relay:
            self._relay(action)
        elif type(action) is ForwardCancel:
            self._cancel(action.packet)
        elif type(action) is StopRelay:
            self._stop_pump()
            # A TLS transport would wait for its producer, the upstream,
            # before its close_notify, and so never close.
            self.transport.unregisterProducer()
        elif type(action) is StopUpstream:
            assert self.upstream is not None
            self.upstream.transport.unregisterProducer()
            # loseConnection stops reading the upstream; its connectionLost
            # comes later and finds this connection closed.
            self.upstream.transport.loseConnection()
        # DropUpstream is upstream_connected's.

    # -- the PROXY protocol header -------------------------------------------

    def _read_proxy_header(self, data: bytes) -> None:
        """
        Read the header a trusted load balancer sends first; the client's
        address in it replaces the balancer's, and the bytes after it are the
        client's first packets.  Anything else is closed without a word: the
        balancer is misconfigured, or someone else is on its network.
        """
        assert self._proxy_reader is not None
        reader = self._proxy_reader
        reader.receive_data(data)
        try:
            header = reader.next_event()
        except InvalidProxyHeader as error:
            self.log.warn(
                "closed connection from load balancer {host}: {reason}",
                host=str(self.address),
                reason=str(error),
            )
            self._proxy_reader = None
            if self.factory.metrics is not None:
                self.factory.metrics.proxy_header("invalid")
            self._feed(ProxyHeaderInvalid(str(error)))
            return
        if header is wire.NEED_DATA:
            return
        self._proxy_reader = None
        self.proxy = (self.address, self.port)
        # LOCAL and UNKNOWN (health checks) name no client: the balancer's
        # own address stands, as the specification says.
        if header.source is not None:
            self.address, self.port = header.source
        if self.factory.metrics is not None:
            self.factory.metrics.proxy_header("local" if header.source is None else "proxied")
        self._feed(_PROXY_HEADER_READ)
        self._connection_received()
        if reader.trailing_data:
            self._feed(DataReceived(reader.trailing_data))

    # -- the startup phase -------------------------------------------------

    def _start_tls(self, action: StartTLS) -> None:
        tls = self.factory.tls
        assert tls is not None, "the session starts TLS only when it is offered"
        if action.answer:
            # The client waits for this byte; TLS is not on yet, so it may go
            # straight to the socket.
            send_or_queue(self.transport, action.answer, self.transport.write)
        start_tls(self.transport, tls)
        if not action.answer:
            # Direct TLS: the ClientHello arrived before TLS was layered on.
            self.transport.protocol.dataReceived(action.hello)

    def _cancel(self, packet: bytes) -> None:
        self._stop_timer()
        factory = self.factory
        if factory.upstream_tls is None:
            done = send_cancel(factory.upstream_endpoint(), packet, factory.reactor)
        else:
            # Through the same negotiation as a session (libpq 17's PQcancelCreate).
            done = send_cancel_on(factory.open_upstream(), packet, factory.reactor)
        done.addCallback(lambda _: self.transport.loseConnection())

    def _admit(self, startup: wire.StartupMessage) -> None:
        self.transport.pauseProducing()
        client = hba.Client(
            address=self.address,
            ssl=self.tls_info is not None,
            database=startup.database,
            user=startup.user,
            # replication=database is matched as an ordinary connection.
            replication=startup.walsender == "physical",
            cert=self.tls_info.client_cert if self.tls_info else None,
        )
        if not self.factory.rules.needs_hostname:
            self._decide(client)
            return
        looking_up = self.factory.resolve_hostname(self.address)
        looking_up.addCallback(lambda name: self._decide(replace(client, hostname=name)))

    def _decide(self, client: hba.Client) -> None:
        if self.session.state is not Phase.ADMITTING:
            return  # the client left or timed out during the look-up
        decision = self.factory.rules.match(client)
        authenticated = decision.authenticated
        if authenticated is not None and self.factory.settings.log_connections:
            # PostgreSQL 14+ logs it between "received" and "authorized",
            # and before a user-map refusal.
            self.log.info(
                'connection authenticated: identity="{identity}" method={method} '
                "({file}:{line_number})",
                identity=authenticated.identity,
                method=authenticated.method,
                file=authenticated.file,
                line_number=authenticated.line_number,
            )
        if isinstance(decision, hba.Refusal):
            self.log.warn(
                "refused host={host} user={user} database={database}: {message}{detail}",
                host=str(self.address),
                user=client.user,
                database=client.database,
                message=decision.message,
                detail=f" ({decision.log_detail})" if decision.log_detail else "",
            )
            self._feed(HbaRefused(refusal_reason(decision), decision.sqlstate, decision.message))
            return
        self._feed(_HBA_ADMITTED)

    def _connect_upstream(self) -> None:
        """The session is admitted: count it, log it, open the upstream leg."""
        factory = self.factory
        startup = self.session.startup
        assert startup is not None
        factory.sessions += 1
        self._counted = True
        if factory.metrics is not None:
            factory.metrics.session_admitted(self.session.encryption)
        if factory.settings.log_connections:
            self.log.info(
                "{kind}connection authorized: user={user}{in_database}{app}{ssl}",
                **authorized_fields(startup, self.tls_info),
            )
        self._connect_started = factory.reactor.seconds()
        self._connecting = factory.open_upstream(startup.packet)
        self._connecting.addCallbacks(self.upstream_connected, self._upstream_failed)

    # -- the relay phase ---------------------------------------------------

    def upstream_connected(self, upstream: UpstreamProtocol) -> None:
        """The upstream accepted the connection: send the startup, relay."""
        self._connecting = None
        upstream.client = self
        if self.session.state is Phase.CONNECTING:
            self.upstream = upstream
        for action in self.session.handle(_UPSTREAM_CONNECTED):
            if type(action) is DropUpstream:
                # The client is gone: so is the leg opened for it.
                upstream.transport.loseConnection()
            else:
                self._perform(action)

    def _relay(self, action: Relay) -> None:
        upstream = self.upstream
        assert upstream is not None
        self._stop_timer()
        factory = self.factory
        if factory.metrics is not None:
            factory.metrics.upstream_connected(factory.reactor.seconds() - self._connect_started)
        first = action.startup + action.buffered
        self.bytes_up += len(first)
        if upstream.startup_sent:
            # The leg sent it to learn whether the upstream takes it (sslmode
            # allow or prefer); what the upstream answered goes to the client.
            first = first[len(action.startup) :]
        self._backend = backendstart.BackendStartReader(parameters=False)
        splice(self.transport, upstream.transport)
        if upstream.pending:
            upstream.bytes_down += len(upstream.pending)
            self.transport.write(upstream.pending)
            # What the leg read to learn whether the upstream took the
            # StartupMessage: the first of the messages to watch.
            self._watch_upstream(upstream.pending)
            upstream.pending = b""
        watch = self._watch_upstream if self._backend is not None else None
        if upstream.tls:
            # Through the leg's TLS layer: its socket carries only records.
            if first:
                upstream.transport.write(first)
        elif first:
            send_or_queue(upstream.transport, first, upstream.transport.write)
        self.pump = start_pump(self.transport, upstream.transport, self, upstream, watch)
        # Also with a pump: what it leaves to a TLS leg's own layer (a read
        # before the layer is ready, close_notify) reaches the protocol.
        upstream.watch = watch
        if upstream.peer_certificate is not None:
            factory.upstream_certificate_seen(upstream.peer_certificate)
        self.transport.resumeProducing()

    def _watch_upstream(self, data: bytes | memoryview) -> bool:
        """
        Read what the upstream sent the client (already relayed) until the
        session is ready or refused; return whether to go on watching.
        """
        reader = self._backend
        if reader is None:
            return False
        reader.receive_data(data)
        while (event := reader.next_event()) is not backendstart.NEED_DATA:
            if isinstance(event, backendstart.BackendKeyData):
                self.backend_pid = event.process_id
            elif isinstance(event, backendstart.ErrorResponse):
                self._upstream_refused(event)
        if reader.done:
            self._backend = None
            return False
        return True

    def _upstream_refused(self, error: backendstart.ErrorResponse) -> None:
        """The upstream ended the session at its start: say why when pgtls is the cause."""
        refusal = backendstart.channel_binding_refusal(error)
        if refusal is None:
            return
        self.log.warn(
            "upstream refused SCRAM channel binding for host={host} user={user}: {message}: "
            "{why}; {remedy}",
            host=str(self.address),
            user=self.startup.user if self.startup else None,
            message=error.message,
            why=refusal.why,
            remedy=backendstart.CHANNEL_BINDING_REMEDY,
        )

    def upstream_lost(self, reason: Failure) -> None:
        """The upstream closed: so does the client, once its data is sent."""
        if self.session.state is Phase.RELAYING:
            self._feed(_UPSTREAM_CLOSED)

    def _upstream_failed(self, reason: Failure) -> None:
        self._connecting = None
        if self.session.state is not Phase.CONNECTING:
            return  # cancelled because the client went away
        upstream = self.factory.settings.upstream
        label, message = describe_failure(reason, upstream)
        # One line naming the upstream and why, in libpq's words; nothing of
        # it goes to the client.
        self.log.warn(
            "could not connect to the upstream server at {upstream}: {reason}",
            upstream=upstream.address,
            reason=message,
            upstream_failure=label.value,
        )
        if self.factory.metrics is not None:
            self.factory.metrics.upstream_failed(label)
        self._feed(UpstreamFailed(label.value))

    # -- endings -----------------------------------------------------------

    def terminate(self) -> None:
        """
        End this connection for a fast shutdown, as PostgreSQL's backends end
        on SIGTERM.  A connection past its StartupMessage gets FATAL 57P01
        ``terminating connection due to administrator command``; one still
        negotiating is closed without a word, as a backend that has not read
        its startup packet exits quietly.

        A relayed session's upstream leg is stopped first, so no upstream
        byte follows the message.  pgtls does not frame what it relays: if
        the upstream was in the middle of a message, the ErrorResponse lands
        inside it and the client sees a broken message (libpq: lost
        synchronization, or the connection closed) rather than the FATAL.
        """
        self._feed(_SHUTDOWN)

    def _stop_pump(self) -> None:
        if self.pump is not None:
            self.pump.stop()
            self.pump = None

    def _authentication_timed_out(self) -> None:
        self._timer = None
        self._feed(_TIMER_FIRED)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _session_end(self, admitted: bool) -> None:
        """Log the end of the connection (PostgreSQL's line, our summary); count it."""
        elapsed = self.factory.reactor.seconds() - self._started
        bytes_down = self.upstream.bytes_down if self.upstream else 0
        ending = self.session.ending
        self._log_session_end(elapsed, bytes_down, ending)
        if self.factory.metrics is not None:
            self.factory.metrics.connection_ended(
                outcome=ending.outcome,
                encryption=self.session.encryption,
                admitted=admitted,
                reason=ending.reason,
                tls=self.tls_info,
                bytes_up=self.bytes_up,
                bytes_down=bytes_down,
            )

    def _log_session_end(self, elapsed: float, bytes_down: int, ending: Ending) -> None:
        startup = self.startup
        if self.factory.settings.log_disconnections and self.upstream is not None and startup:
            self.log.info(
                "disconnection: session time: {elapsed} user={user} database={database} "
                "host={host} port={port}",
                elapsed=session_time(elapsed),
                user=startup.user,
                database=startup.database,
                host=str(self.address),
                port=self.port,
            )
        summary, fields = session_event(
            address=self.address,
            port=self.port,
            proxy=self.proxy,
            startup=startup,
            tls=self.tls_info,
            ending=ending,
            bytes_up=self.bytes_up,
            bytes_down=bytes_down,
            duration=elapsed,
            backend_pid=self.backend_pid,
        )
        self.log.info("session {summary}", summary=summary, **fields)


def _close_socket(transport: Any) -> None:
    """
    Close the TCP connection under any TLS layer at once, as PostgreSQL's
    backend does when it exits at authentication_timeout: the client reads
    a plain EOF.  Not abortConnection(), whose SO_LINGER 0 sends a reset,
    and not a TLS shutdown, which Twisted turns into an abort mid-handshake
    and which otherwise waits for the client's close_notify.  Only bytes
    already written (a few at startup) go out before the FIN.

    :param transport: the connection's transport, with or without TLS.
    """
    if getattr(transport, "TLS", False):
        # startTLS() gave the TLS layer a bypass to the TCP connection.
        transport = transport.protocol.transport
    transport.loseConnection()
