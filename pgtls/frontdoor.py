"""
The front door: one Twisted Protocol per client connection.

It reads the first packets with the sans-IO reader (pgtls.wire), answers
SSLRequest with ``S`` or ``N`` and starts TLS, accepts direct TLS, asks
pg_hba.conf (pgtls.hba) whether the session may pass, and hands admitted
sessions to the relay (pgtls.relay).  Nothing a client sends reaches the
upstream before the session is admitted.  A connection from a load
balancer in ``pgtls.proxy_protocol_networks`` starts with a PROXY header
(pgtls.proxyheader), read before the first packet; its address is the
client's from then on.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from typing import Any

from cryptography import x509
from twisted.internet import defer, threads
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pgtls import backendstart, channelbinding, hba, wire
from pgtls.conf import Settings
from pgtls.conninfo import Upstream
from pgtls.fastwrite import send_or_queue, start_tls
from pgtls.metrics import Encryption, Metrics, Outcome, refusal_reason
from pgtls.proxyheader import InvalidProxyHeader, ProxyHeaderReader
from pgtls.pump import Pump
from pgtls.pump import start as start_pump
from pgtls.relay import (
    UpstreamFactory,
    UpstreamProtocol,
    send_cancel,
    send_cancel_on,
    set_nodelay,
    splice,
    upstream_endpoint,
)
from pgtls.relayreactor import dispatch_directly
from pgtls.tlsctx import NoApplicationProtocol, ServerTLS, TLSInfo, describe_connection
from pgtls.upstreamctx import UpstreamTLS
from pgtls.upstreamleg import describe_failure, open_upstream

__all__ = ["FrontDoor", "FrontDoorFactory"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALPN_POSTGRESQL = b"postgresql"


class Phase(enum.Enum):
    """Where a connection is; each input is legal in some phases only."""

    PROXY = "proxy"  # reading a load balancer's PROXY protocol header
    STARTUP = "startup"  # reading negotiation and startup packets
    HANDSHAKE = "handshake"  # TLS handshake under way
    ADMITTING = "admitting"  # pg_hba.conf decision pending (host name lookup)
    CONNECTING = "connecting"  # upstream connection under way; client paused
    RELAYING = "relaying"
    CANCELLING = "cancelling"
    CLOSED = "closed"


def client_address(address: IAddress) -> tuple[IPAddress, int]:
    """
    The client's IP address and port; an IPv4-mapped IPv6 address (a client
    of a dual-stack listener) is reported as the IPv4 address it is.
    """
    host = str(getattr(address, "host", "0.0.0.0")).split("%", 1)[0]
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(getattr(address, "port", 0))


def encryption_words(info: TLSInfo | None) -> str:
    """The SSL part of PostgreSQL's ``connection authorized`` log line."""
    if info is None:
        return ""
    return f" SSL enabled (protocol={info.protocol}, cipher={info.cipher}, bits={info.bits})"


class FrontDoorFactory(Factory):
    """
    Shared state of the listening side: the settings, rules and TLS context
    in force, the session count, and how to reach the upstream.  A reload
    replaces ``settings`` and ``rules``; connections read them when they
    need them, so a new rule applies to every connection not yet admitted.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        settings: Settings,
        rules: hba.Rules,
        tls: ServerTLS | None,
        reactor: Any,
        *,
        connect_upstream: Callable[[], IStreamClientEndpoint] | None = None,
        resolve_hostname: Callable[[IPAddress], defer.Deferred[str | None]] | None = None,
        describe_tls: Callable[[Any], TLSInfo] = describe_connection,
        metrics: Metrics | None = None,
        upstream_tls: UpstreamTLS | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.tls = tls
        self.reactor = reactor
        self.sessions = 0
        # Every live client connection, whatever its phase: what a shutdown
        # ends or waits for.
        self.connections: set[FrontDoor] = set()
        # Set by a shutdown: new sessions are refused as PostgreSQL refuses them.
        self.shutting_down = False
        self._idle_waiters: list[defer.Deferred[None]] = []
        self._connect_upstream = connect_upstream
        self.upstream_factory = UpstreamFactory()
        self._endpoint: tuple[Upstream, IStreamClientEndpoint] | None = None
        self._resolve_hostname = resolve_hostname
        # Tests with fake transports have no OpenSSL connection to describe.
        self.describe_tls = describe_tls
        # None when pgtls.metrics_listen is off: no metrics work at all.
        self.metrics = metrics
        # The upstream leg's TLS client context; None when it never uses TLS.
        self.upstream_tls = upstream_tls
        # The upstream certificate last judged for channel binding.
        self._upstream_certificate: x509.Certificate | None = None

    def upstream_certificate_seen(self, cert: x509.Certificate) -> None:
        """
        The upstream presented ``cert`` in a TLS handshake: say once, for
        each new one, whether SCRAM channel binding can pass through pgtls
        (see pgtls.channelbinding).  Called by the upstream leg after each
        handshake; a repeat costs one comparison of DER bytes.
        """
        if cert == self._upstream_certificate:
            return
        self._upstream_certificate = cert
        ours = self.tls.certificate if self.tls is not None else None
        if ours is None:
            return  # no TLS for clients: none of them can bind
        verdict = channelbinding.verdict(ours, cert)
        if verdict.warning:
            self.log.warn("channel binding: {verdict}", verdict=verdict.text)
        else:
            self.log.info("channel binding: {verdict}", verdict=verdict.text)

    def upstream_endpoint(self) -> IStreamClientEndpoint:
        """
        The endpoint of the upstream server in the settings in force, one for
        every session: each connection would otherwise keep its own copy of
        the address.
        """
        if self._connect_upstream is not None:
            return self._connect_upstream()
        upstream = self.settings.upstream
        if self._endpoint is None or self._endpoint[0] != upstream:
            self._endpoint = (upstream, upstream_endpoint(self.reactor, upstream))
        return self._endpoint[1]

    def open_upstream(self, startup: bytes | None = None) -> defer.Deferred[Any]:
        """
        Open a leg to the upstream, TLS negotiated as pgtls.upstream's sslmode
        says (see pgtls.upstreamleg); it fires with the UpstreamProtocol, ready
        for the client's StartupMessage.
        """
        return open_upstream(
            self.upstream_endpoint(),
            self.upstream_factory,
            self.settings.upstream,
            self.upstream_tls,
            self.reactor,
            startup,
        )

    def resolve_hostname(self, address: IPAddress) -> defer.Deferred[str | None]:
        """The client's verified host name, looked up off the reactor thread."""
        if self._resolve_hostname is not None:
            return self._resolve_hostname(address)
        return threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), hba.resolve_client_hostname, address
        )

    def when_idle(self) -> defer.Deferred[None]:
        """A Deferred that fires once no client connection is left (at once if none is)."""
        if not self.connections:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def connection_ended(self, door: FrontDoor) -> None:
        """Forget a connection that is gone; wake when_idle() waiters if it was the last."""
        self.connections.discard(door)
        if not self.connections:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def buildProtocol(self, addr: IAddress | None) -> FrontDoor:
        assert addr is not None, "listening ports always give the peer's address"
        return FrontDoor(self, addr)


@implementer(IHandshakeListener)
class FrontDoor(Protocol):
    """One client connection, from its first byte to the end of its session."""

    log = Logger()
    # A TCP transport that startTLS may layer TLS onto.
    transport: Any

    def __init__(self, factory: FrontDoorFactory, addr: IAddress) -> None:
        self.door = factory
        self.address, self.port = client_address(addr)
        self.phase = Phase.STARTUP
        self._reader: wire.StartupReader | None = wire.StartupReader()
        # The load balancer's address and port, when the client's come from
        # its PROXY protocol header.
        self.proxy: tuple[IPAddress, int] | None = None
        self._proxy_reader: ProxyHeaderReader | None = None
        self.direct_tls = False
        self.tls_info: TLSInfo | None = None
        self.startup: wire.StartupMessage | None = None
        self.upstream: UpstreamProtocol | None = None
        self.pump: Pump | None = None
        # The upstream's startup messages, read until the session is ready
        # or refused; then dropped (see _watch_upstream).
        self._backend: backendstart.BackendStartReader | None = None
        self.backend_pid: int | None = None
        self.bytes_up = 0
        # How the connection ended, for the session summary and the metrics:
        # a fixed word, the reason label that goes with it (a refusal's kind,
        # OpenSSL's reason), and the words of the log (PostgreSQL's message).
        self.outcome: Outcome = "closed"
        self.reason: str | None = None
        self.detail = "closed before startup"
        self.encryption: Encryption = "none"
        self._connect_started = 0.0
        self._stranded_plaintext = False
        self._counted = False
        self._timer: IDelayedCall | None = None
        self._connecting: defer.Deferred[Any] | None = None
        self._started = factory.reactor.seconds()

    @property
    def reader(self) -> wire.StartupReader:
        """The first packets' reader, until relaying starts (see upstream_connected)."""
        assert self._reader is not None, "no startup reading once relaying started"
        return self._reader

    # -- connection events -------------------------------------------------

    def connectionMade(self) -> None:
        self.door.connections.add(self)
        set_nodelay(self.transport)
        # Its events need no legacy log context: this protocol's lines name
        # their own namespace and host (see pgtls.relayreactor).
        dispatch_directly(self.transport)
        settings = self.door.settings
        self._timer = self.door.reactor.callLater(
            settings.authentication_timeout, self._authentication_timed_out
        )
        if any(self.address in network for network in settings.proxy_protocol_networks):
            # The client's address is in the header: log it once it is read.
            self.phase = Phase.PROXY
            self._proxy_reader = ProxyHeaderReader()
            return
        self._connection_received()

    def _connection_received(self) -> None:
        if self.door.settings.log_connections:
            self.log.info(
                "connection received: host={host} port={port}",
                host=str(self.address),
                port=self.port,
            )

    def dataReceived(self, data: bytes) -> None:
        if self.phase is Phase.RELAYING:
            assert self.upstream is not None
            # The pump relays without calling this: only the reads it leaves
            # to the TLS layer (a session that is closing) come here.
            self.bytes_up += len(data)
            self.upstream.transport.write(data)
            return
        if self.phase in (Phase.ADMITTING, Phase.CONNECTING):
            # Read before the pause took hold: keep it for the upstream.
            self.reader.receive_data(data)
            return
        if self.phase is Phase.PROXY:
            self._read_proxy_header(data)
            return
        if self.phase is not Phase.STARTUP:
            return
        self.reader.receive_data(data)
        self._read_packets()

    def handshakeCompleted(self) -> None:
        handle = self.transport.getHandle()
        self.tls_info = self.door.describe_tls(handle)
        if self.door.metrics is not None:
            self.door.metrics.tls_established(self.tls_info)
        if self._stranded_plaintext:
            self._refuse(wire.UnencryptedDataAfterSSLRequest())
            return
        if self.direct_tls and self.tls_info.alpn != ALPN_POSTGRESQL:
            self.log.info(
                "received direct SSL connection request without ALPN protocol "
                "negotiation extension (host={host})",
                host=str(self.address),
            )
            self._ending("refused", "direct_ssl_no_alpn")
            self._close("direct SSL without ALPN")
            return
        self.reader.encryption_started()
        self.phase = Phase.STARTUP
        self._read_packets()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        if self.phase is Phase.HANDSHAKE:
            self._ending("handshake_failed", _ssl_reason(reason))
            self.detail = "TLS handshake failed"
            self.log.info(
                "could not accept SSL connection: {reason} (host={host})",
                reason=self.reason,
                host=str(self.address),
            )
        elif self.phase is Phase.STARTUP:
            self._end_of_startup()
        relaying = self.phase is Phase.RELAYING
        self._stop_pump()
        if relaying:
            self.detail = "client closed the connection"
        elif self.phase in (Phase.ADMITTING, Phase.CONNECTING):
            self.detail = "client left before the session started"
        self.phase = Phase.CLOSED
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
            self.door.sessions -= 1
            self._counted = False
        self._session_end(admitted)
        self.door.connection_ended(self)

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
            if self.door.metrics is not None:
                self.door.metrics.proxy_header("invalid")
            self._ending("protocol_error")
            self.detail = str(error)
            self._close(str(error))
            return
        if header is wire.NEED_DATA:
            return
        self._proxy_reader = None
        self.proxy = (self.address, self.port)
        # LOCAL and UNKNOWN (health checks) name no client: the balancer's
        # own address stands, as the specification says.
        if header.source is not None:
            self.address, self.port = header.source
        if self.door.metrics is not None:
            self.door.metrics.proxy_header("local" if header.source is None else "proxied")
        self.phase = Phase.STARTUP
        self._connection_received()
        if reader.trailing_data:
            self.reader.receive_data(reader.trailing_data)
            self._read_packets()

    # -- the startup phase -------------------------------------------------

    def _end_of_startup(self) -> None:
        """The client left mid-packet: PostgreSQL logs it (or not), sends nothing."""
        self.reader.receive_data(b"")
        try:
            self.reader.next_event()
        except wire.ProtocolError as error:
            self._ending("protocol_error")
            self.detail = error.message
            if error.log:
                self.log.info(
                    "{message} (host={host})", message=error.message, host=str(self.address)
                )

    def _read_packets(self) -> None:
        while self.phase is Phase.STARTUP:
            try:
                event = self.reader.next_event()
            except wire.ProtocolError as error:
                self._refuse(error)
                return
            if event is wire.NEED_DATA:
                return
            self._handle(event)

    def _handle(self, event: object) -> None:
        if isinstance(event, wire.SSLRequest):
            self._ssl_request()
        elif isinstance(event, wire.GSSENCRequest):
            # Built without GSSAPI: PostgreSQL's answer is N and go on.
            self.transport.write(b"N")
            if self.reader.buffered:
                self._refuse(wire.UnencryptedDataAfterGSSENCRequest())
        elif isinstance(event, wire.DirectTLS):
            self._direct_tls()
        elif isinstance(event, wire.CancelRequest):
            self._cancel(event)
        elif isinstance(event, wire.StartupMessage):
            self._admit(event)
        elif isinstance(event, wire.Closed):
            self._close("closed before startup")

    def _ssl_request(self) -> None:
        tls = self.door.tls
        if tls is None or self.tls_info is not None:
            # Off, or already inside direct TLS: PostgreSQL 17 answers N.
            self.transport.write(b"N")
            if self.reader.buffered:
                self._refuse(wire.UnencryptedDataAfterSSLRequest())
            return
        # The client waits for this byte; TLS is not on yet, so it may go
        # straight to the socket.
        send_or_queue(self.transport, b"S", self.transport.write)
        # Bytes sent before the client could have seen our S were not
        # protected by TLS: they are dropped, never relayed, and the session
        # is refused once TLS is up (CVE-2021-23214), as PostgreSQL 15 does.
        self._stranded_plaintext = bool(self.reader.take_buffered())
        self._start_tls(tls)

    def _direct_tls(self) -> None:
        tls = self.door.tls
        if tls is None:
            self._ending("refused", "direct_ssl_off")
            self._close("direct SSL rejected: ssl is off")
            return
        hello = self.reader.take_buffered()
        self.direct_tls = True
        self._start_tls(tls)
        # The ClientHello arrived before TLS was layered on: hand it over.
        self.transport.protocol.dataReceived(hello)

    def _start_tls(self, tls: ServerTLS) -> None:
        self.phase = Phase.HANDSHAKE
        self.encryption = "ssl"
        start_tls(self.transport, tls)

    def _client_cert_missing(self) -> bool:
        tls = self.door.tls
        return (
            self.tls_info is not None
            and tls is not None
            and tls.require_client_cert
            and self.tls_info.client_cert is None
        )

    def _cancel(self, event: wire.CancelRequest) -> None:
        if self._client_cert_missing():
            self._refuse_session(
                "client_cert_required", "28000", "connection requires a valid client certificate"
            )
            return
        self.phase = Phase.CANCELLING
        self._ending("cancel")
        self.detail = "cancel request forwarded"
        self._stop_timer()
        if self.door.upstream_tls is None:
            done = send_cancel(self.door.upstream_endpoint(), event.packet, self.door.reactor)
        else:
            # Through the same negotiation as a session (libpq 17's PQcancelCreate).
            done = send_cancel_on(self.door.open_upstream(), event.packet, self.door.reactor)
        done.addCallback(lambda _: self.transport.loseConnection())

    def _admit(self, startup: wire.StartupMessage) -> None:
        self.startup = startup
        if self.door.shutting_down:
            # PostgreSQL refuses before authentication (CAC_SHUTDOWN).
            self._refuse_session("shutting_down", "57P03", "the database system is shutting down")
            return
        if self._client_cert_missing():
            self._refuse_session(
                "client_cert_required", "28000", "connection requires a valid client certificate"
            )
            return
        if self.door.sessions >= self.door.settings.max_connections:
            self._refuse_session("too_many_clients", "53300", "sorry, too many clients already")
            return
        self.phase = Phase.ADMITTING
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
        if not self.door.rules.needs_hostname:
            self._decide(client)
            return
        looking_up = self.door.resolve_hostname(self.address)
        looking_up.addCallback(
            lambda name: self._decide(
                hba.Client(
                    address=client.address,
                    ssl=client.ssl,
                    database=client.database,
                    user=client.user,
                    replication=client.replication,
                    cert=client.cert,
                    hostname=name,
                )
            )
        )

    def _decide(self, client: hba.Client) -> None:
        if self.phase is not Phase.ADMITTING:
            return  # the client left or timed out during the look-up
        decision = self.door.rules.match(client)
        authenticated = decision.authenticated
        if authenticated is not None and self.door.settings.log_connections:
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
            self._refuse_session(refusal_reason(decision), decision.sqlstate, decision.message)
            return
        # max_connections is checked again: a look-up may have let others in.
        if self.door.sessions >= self.door.settings.max_connections:
            self._refuse_session("too_many_clients", "53300", "sorry, too many clients already")
            return
        self.door.sessions += 1
        self._counted = True
        if self.door.metrics is not None:
            self.door.metrics.session_admitted(self.encryption)
        if self.door.settings.log_connections:
            app = self.startup.application_name if self.startup else None
            # PostgreSQL's walsenders (replication=true or database) log no database.
            walsender = self.startup is not None and self.startup.walsender is not None
            self.log.info(
                "{kind}connection authorized: user={user}{in_database}{app}{ssl}",
                kind="replication " if walsender else "",
                user=client.user,
                database=client.database,
                in_database="" if walsender else f" database={client.database}",
                app=f" application_name={app}" if app else "",
                ssl=encryption_words(self.tls_info),
            )
        self.phase = Phase.CONNECTING
        self._connect_started = self.door.reactor.seconds()
        self._connecting = self.door.open_upstream(
            self.startup.packet if self.startup is not None else None
        )
        self._connecting.addCallbacks(self.upstream_connected, self._upstream_failed)

    # -- the relay phase ---------------------------------------------------

    def upstream_connected(self, upstream: UpstreamProtocol) -> None:
        """The upstream accepted the connection: send the startup, relay."""
        self._connecting = None
        upstream.client = self
        if self.phase is not Phase.CONNECTING or self.startup is None:
            upstream.transport.loseConnection()
            return
        self._stop_timer()
        self.upstream = upstream
        self.phase = Phase.RELAYING
        self._ending("relayed")
        self.detail = "relayed"
        if self.door.metrics is not None:
            self.door.metrics.upstream_connected(
                self.door.reactor.seconds() - self._connect_started
            )
        first = self.startup.packet + self.reader.take_buffered()
        self.bytes_up += len(first)
        if upstream.startup_sent:
            # The leg sent it to learn whether the upstream takes it (sslmode
            # allow or prefer); what the upstream answered goes to the client.
            first = first[len(self.startup.packet) :]
        # An idle session keeps neither the reader (which holds the whole
        # StartupMessage) nor more of the message than its last log line needs.
        self._reader = None
        self.startup = self.startup.brief()
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
            self.door.upstream_certificate_seen(upstream.peer_certificate)
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
        if self.phase is Phase.RELAYING:
            self._stop_pump()
            # A TLS transport would wait for its producer, the upstream,
            # before its close_notify, and so never close.
            self.transport.unregisterProducer()
            self.detail = "upstream closed the connection"
            self._close("relayed")

    def _upstream_failed(self, reason: Failure) -> None:
        self._connecting = None
        if self.phase is not Phase.CONNECTING:
            return  # cancelled because the client went away
        upstream = self.door.settings.upstream
        label, message = describe_failure(reason, upstream)
        # One line naming the upstream and why, in libpq's words; nothing of
        # it goes to the client.
        self.log.warn(
            "could not connect to the upstream server at {upstream}: {reason}",
            upstream=upstream.address,
            reason=message,
            upstream_failure=label.value,
        )
        if self.door.metrics is not None:
            self.door.metrics.upstream_failed(label)
        # 57P03 tells libpq not to retry the same server without SSL; the
        # upstream's address stays in the server log, never in the answer.
        self._ending("upstream_unavailable", label.value)
        self._fatal(
            "57P03",
            "the database system is not accepting connections",
            error_detail="pgtls could not connect to the upstream server.",
        )

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
        if self.phase is Phase.RELAYING:
            assert self.upstream is not None
            self._stop_pump()
            self.transport.unregisterProducer()
            self.upstream.transport.unregisterProducer()
            # loseConnection stops reading the upstream; its connectionLost
            # comes later and finds this connection closed.
            self.upstream.transport.loseConnection()
        if self.phase in (Phase.ADMITTING, Phase.CONNECTING, Phase.RELAYING):
            self._fatal("57P01", "terminating connection due to administrator command")
        elif self.phase is not Phase.CLOSED:
            self._close("terminated by a fast shutdown")

    def _stop_pump(self) -> None:
        if self.pump is not None:
            self.pump.stop()
            self.pump = None

    def _authentication_timed_out(self) -> None:
        # PostgreSQL closes silently and logs nothing when the startup phase
        # outlives authentication_timeout.
        self._timer = None
        self._ending("timeout")
        self.detail = "authentication timeout"
        self.phase = Phase.CLOSED
        _close_socket(self.transport)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _refuse(self, error: wire.ProtocolError) -> None:
        if error.log:
            self.log.warn("{message} (host={host})", message=error.message, host=str(self.address))
        self._ending("protocol_error")
        self.detail = error.message
        data = error.response()
        if data:
            self.transport.write(data)
        self._close(error.message)

    def _refuse_session(self, reason: str, sqlstate: str, message: str) -> None:
        """Refuse by rule or limit; ``reason`` is the metrics label (REFUSAL_REASONS)."""
        self._ending("refused", reason)
        self._fatal(sqlstate, message)

    def _fatal(self, sqlstate: str, message: str, *, error_detail: str | None = None) -> None:
        self.detail = message
        self.transport.write(wire.error_response(sqlstate, message, detail=error_detail))
        self._close(message)

    def _ending(self, outcome: Outcome, reason: str | None = None) -> None:
        """Say how the connection ends, for the session summary and the metrics."""
        self.outcome = outcome
        self.reason = reason

    def _close(self, detail: str) -> None:
        if self.phase is not Phase.CLOSED:
            self.detail = self.detail if self.detail != "closed before startup" else detail
        self.phase = Phase.CLOSED
        self.transport.loseConnection()
        # PostgreSQL's backend exits: close_notify, then FIN at once; the
        # TLS layer alone would wait for the client's close_notify.
        _close_socket(self.transport)

    def _session_end(self, admitted: bool) -> None:
        """Log the end of the connection (PostgreSQL's line, our summary); count it."""
        elapsed = self.door.reactor.seconds() - self._started
        bytes_down = self.upstream.bytes_down if self.upstream else 0
        self._log_session_end(elapsed, bytes_down)
        if self.door.metrics is not None:
            self.door.metrics.connection_ended(
                outcome=self.outcome,
                encryption=self.encryption,
                admitted=admitted,
                reason=self.reason,
                tls=self.tls_info,
                bytes_up=self.bytes_up,
                bytes_down=bytes_down,
            )

    def _log_session_end(self, elapsed: float, bytes_down: int) -> None:
        startup = self.startup
        if self.door.settings.log_disconnections and self.upstream is not None and startup:
            self.log.info(
                "disconnection: session time: {elapsed} user={user} database={database} "
                "host={host} port={port}",
                elapsed=_session_time(elapsed),
                user=startup.user,
                database=startup.database,
                host=str(self.address),
                port=self.port,
            )
        info = self.tls_info
        # One event per connection, its fields named for log shippers (JSON
        # logs); the text names the TLS parameters only when TLS was up.
        fields = {
            "peer": _peer(self.address, self.port),
            "host": str(self.address),
            "port": self.port,
            "proxy": _peer(*self.proxy) if self.proxy else None,
            "user": startup.user if startup else None,
            "database": startup.database if startup else None,
            "ssl": info is not None,
            "protocol": info.protocol if info else None,
            "cipher": info.cipher if info else None,
            "outcome": self.outcome,
            "reason": self.reason,
            "detail": self.detail,
            "bytes_up": self.bytes_up,
            "bytes_down": bytes_down,
            "duration": elapsed,
            "backend_pid": self.backend_pid,
        }
        # str.format writes the text at once; Twisted's formatter would take
        # its template apart in Python, field by field, for every connection.
        template = _SUMMARY_SSL if info else _SUMMARY_PLAIN
        pid = "" if self.backend_pid is None else f" backend_pid={self.backend_pid}"
        if startup is None:
            # No StartupMessage: the text shows the names as PostgreSQL's
            # log_line_prefix shows missing ones (%u, %d); JSON keeps null.
            summary = template.format(**{**fields, "user": _UNKNOWN, "database": _UNKNOWN}, pid=pid)
        else:
            summary = template.format(**fields, pid=pid)
        self.log.info("session {summary}", summary=summary, **fields)


#: What the session line's text shows for a name the client never sent.
_UNKNOWN = "[unknown]"

_SUMMARY_FIELDS = (
    "outcome={outcome}{pid} bytes_up={bytes_up} bytes_down={bytes_down} "
    "duration={duration:.3f}: {detail}"
)
_SUMMARY_SSL = (
    "host={host} port={port} user={user} database={database} "
    "ssl=on protocol={protocol} cipher={cipher} " + _SUMMARY_FIELDS
)
_SUMMARY_PLAIN = (
    "host={host} port={port} user={user} database={database} ssl=off " + _SUMMARY_FIELDS
)


def _peer(address: IPAddress, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    if address.version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def _session_time(seconds: float) -> str:
    """PostgreSQL's ``H:MM:SS.mmm`` session time."""
    millis = int(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours}:{minutes:02d}:{secs:02d}.{millis:03d}"


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


def _ssl_reason(reason: Failure) -> str:
    """OpenSSL's reason text, as PostgreSQL logs it; EOF when the client left."""
    from OpenSSL import SSL

    value = reason.value
    if isinstance(value, NoApplicationProtocol):
        return value.reason
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        for entry in value.args[0]:
            if len(entry) >= 3 and entry[2]:
                return str(entry[2])
    if reason.check(SSL.Error):
        return str(value)
    return "EOF detected"
