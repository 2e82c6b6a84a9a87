"""
Opening the upstream leg: the Twisted shell of :mod:`pgtls.tls.negotiation`.

:func:`open_upstream` connects to the upstream and, when the sslmode asks
for TLS, sends SSLRequest (or starts TLS at once for direct negotiation),
runs the handshake through Twisted's own TLS layer (``startTLS``, the
public path), checks ALPN and the host name, and only then fires its
Deferred with the :class:`~pgtls.relay.upstream.UpstreamProtocol`, ready for the
client's StartupMessage.  Any failure fires it with an
:class:`UpstreamFailure` that says why in libpq's words.

A leg that never uses TLS (a Unix socket, sslmode=disable) is the plain
endpoint connect it always was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cryptography import x509
from twisted.internet import defer, error
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pgtls.core.conninfo import Upstream
from pgtls.relay.upstream import DEFAULT_CONNECT_TIMEOUT, QuietFactory, UpstreamProtocol
from pgtls.tls.negotiation import (
    SSL_REQUEST,
    Action,
    Attempt,
    Fail,
    FailureReason,
    Negotiation,
    Ready,
    Retry,
    SendSSLRequest,
    StartTLS,
    first_attempt,
)
from pgtls.tls.upstreamctx import UpstreamTLS, Verification, describe_handshake_failure

__all__ = ["UpstreamFailure", "describe_failure", "open_upstream"]

# The largest ErrorResponse read before the session is handed to the
# client; PostgreSQL's startup errors are a few hundred bytes.
_MAX_ERROR = 2**16


class UpstreamFailure(Exception):
    """The upstream leg could not be opened: ``message`` in libpq's words, ``reason`` typed."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def describe_failure(failure: Failure, upstream: Upstream) -> tuple[FailureReason, str]:
    """
    Why connecting to the upstream failed, in libpq's words, with its label.

    :param failure: what the connect Deferred failed with.
    :param upstream: the upstream, to name a host that did not resolve.
    """
    value = failure.value
    if isinstance(value, UpstreamFailure):
        return value.reason, value.message
    if isinstance(value, error.ConnectionRefusedError):
        return FailureReason.CONNECTION_REFUSED, "Connection refused"
    if isinstance(value, (error.TimeoutError, defer.TimeoutError, defer.CancelledError)):
        return FailureReason.TIMEOUT, "timeout expired"
    if isinstance(value, error.DNSLookupError):
        return (
            FailureReason.CONNECT_FAILED,
            f'could not translate host name "{upstream.host}" to address',
        )
    if isinstance(value, error.ConnectError) and isinstance(value.osError, int):
        return FailureReason.CONNECT_FAILED, os.strerror(value.osError)
    if isinstance(value, OSError) and value.strerror:
        return FailureReason.CONNECT_FAILED, value.strerror
    text = str(value) or type(value).__name__
    return FailureReason.CONNECT_FAILED, text


def open_upstream(
    endpoint: IStreamClientEndpoint,
    plain_factory: Any,
    upstream: Upstream,
    tls: UpstreamTLS | None,
    clock: Any,
    startup: bytes | None = None,
) -> defer.Deferred[Any]:
    """
    Open the upstream leg as the sslmode says.

    :param endpoint: where the upstream listens.
    :param plain_factory: the shared factory of plaintext legs (used as is
        when no TLS can be tried).
    :param upstream: the parsed ``pgtls.upstream``.
    :param tls: its client context (None when the leg never uses TLS).
    :param clock: for the negotiation's timeout (``connect_timeout``).
    :param startup: the client's StartupMessage, when the leg may send it
        itself: with sslmode allow or prefer, libpq tries the other
        encryption on a new connection when the upstream answers it with
        an ErrorResponse (a hostssl or hostnossl rule), and so does pgtls,
        before relaying anything.  The protocol then has ``startup_sent``
        set and what the upstream sent in ``pending``.
    :return: fires with an UpstreamProtocol ready for the StartupMessage
        (``tls`` set when encrypted, ``peer_certificate`` then the
        upstream's certificate), or fails with UpstreamFailure or the
        endpoint's connect error.  Cancelling it closes the connection.
    """
    if tls is None or not upstream.uses_tls:
        return endpoint.connect(plain_factory)
    return _Leg(endpoint, upstream, tls, clock, startup).start(first_attempt(upstream))


class _Leg:
    """The attempts of one upstream leg (two with prefer or allow), and its Deferred."""

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        upstream: Upstream,
        tls: UpstreamTLS,
        clock: Any,
        startup: bytes | None,
    ) -> None:
        self.startup = startup
        self.endpoint = endpoint
        self.upstream = upstream
        self.tls = tls
        self.clock = clock
        self.result: defer.Deferred[Any] = defer.Deferred(self._cancel)
        self.connecting: defer.Deferred[Any] | None = None
        self.protocol: NegotiatingUpstream | None = None

    def start(self, attempt: Attempt) -> defer.Deferred[Any]:
        negotiation = Negotiation(self.upstream, attempt)
        protocol = NegotiatingUpstream(
            negotiation, self.tls, self.clock, self._finished, self.startup
        )
        self.protocol = protocol
        self.connecting = self.endpoint.connect(QuietFactory.forProtocol(lambda: protocol))
        self.connecting.addErrback(self._connect_failed)
        return self.result

    def _connect_failed(self, failure: Failure) -> None:
        self.connecting = None
        if not self.result.called:
            self.result.errback(failure)

    def _finished(self, protocol: NegotiatingUpstream, action: Action) -> None:
        self.connecting = None
        if self.result.called:
            protocol.abort()
            return
        if isinstance(action, Ready):
            self.result.callback(protocol)
        elif isinstance(action, Retry):
            protocol.abort()
            self.log.info(
                "upstream server at {upstream}: {why}; trying again {how} (sslmode={sslmode})",
                upstream=self.upstream.address,
                why=action.message,
                how="without SSL" if action.attempt is Attempt.PLAIN else "with SSL",
                sslmode=self.upstream.sslmode,
            )
            self.start(action.attempt)
        elif isinstance(action, Fail):
            protocol.abort()
            self.result.errback(UpstreamFailure(action.reason, action.message))

    def _cancel(self, result: defer.Deferred[Any]) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        if self.protocol is not None:
            self.protocol.abort()


@implementer(IOpenSSLClientConnectionCreator)
class _KeepConnection:
    """
    The leg's connection creator for one handshake: it keeps the OpenSSL
    connection on the protocol, since Twisted's TLS layer forgets it when
    the connection is lost, which is when a failed handshake is told.
    """

    def __init__(self, protocol: NegotiatingUpstream) -> None:
        self.protocol = protocol

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        connection, self.protocol.verification = self.protocol.upstream_tls.new_connection()
        return connection


@implementer(IHandshakeListener)
class NegotiatingUpstream(UpstreamProtocol):
    """
    An upstream connection that negotiates TLS before it relays.

    Until the negotiation says Ready, bytes and events go to the
    :class:`~pgtls.tls.negotiation.Negotiation`; then it is the plain
    UpstreamProtocol, whose transport encrypts when ``tls`` is set.
    """

    def __init__(
        self,
        negotiation: Negotiation,
        tls: UpstreamTLS,
        clock: Any,
        finished: Callable[[NegotiatingUpstream, Action], None],
        startup: bytes | None = None,
    ) -> None:
        super().__init__()
        self.startup = startup
        # What OpenSSL's verification met during the handshake.
        self.verification: Verification | None = None
        # Reading the upstream's first answer to the StartupMessage.
        self._sniffing: bytearray | None = None
        self.negotiation = negotiation
        self.upstream_tls = tls
        self.clock = clock
        self.finished: Callable[[NegotiatingUpstream, Action], None] | None = finished
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        timeout = self.negotiation.upstream.connect_timeout or DEFAULT_CONNECT_TIMEOUT
        self._timer = self.clock.callLater(timeout, self._timed_out)
        self._act(self.negotiation.connected())

    def dataReceived(self, data: bytes) -> None:
        if self.finished is None:
            super().dataReceived(data)
        elif self._sniffing is not None:
            self._sniff(data)
        else:
            self._act(self.negotiation.data_received(data))

    def _sniff(self, data: bytes) -> None:
        """
        The upstream's first bytes after the StartupMessage: an ErrorResponse
        (``E``, whole) means refused, and another attempt if the sslmode has
        one; anything else (authentication) is kept for the client.
        """
        assert self._sniffing is not None
        self._sniffing += data
        buffered = self._sniffing
        if buffered[0] == ord("E") and len(buffered) >= 5:
            length = int.from_bytes(buffered[1:5], "big")
            if 4 <= length <= _MAX_ERROR and len(buffered) < 1 + length:
                return  # the rest of the error is on its way
            retry = self.negotiation.startup_refused() if length <= _MAX_ERROR else None
            if retry is not None:
                self._done(retry)
                return
        elif buffered[0] == ord("E"):
            return
        self._sniffing = None
        self.pending = bytes(buffered)
        self._done(Ready(tls=self.tls))

    def handshakeCompleted(self) -> None:
        if self.finished is None:
            return
        peer = self.transport.getPeerCertificate()
        certificate = peer.to_cryptography() if peer is not None else None
        alpn = self.transport.getHandle().get_alpn_proto_negotiated() or None
        self._act(self.negotiation.handshake_done(alpn, certificate))

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        if self.finished is None:
            if hasattr(self, "client"):
                super().connectionLost(reason)
            return
        if self._sniffing is not None:
            self._done(Fail(FailureReason.CLOSED, "server closed the connection unexpectedly"))
            return
        if self.negotiation.in_handshake:
            label, message = describe_handshake_failure(
                self.verification, reason.value or Exception()
            )
            self._act(self.negotiation.handshake_failed(label, message))
            return
        self._act(self.negotiation.connection_lost())

    def _act(self, action: Action) -> None:
        if isinstance(action, SendSSLRequest):
            self.transport.write(SSL_REQUEST)
        elif isinstance(action, StartTLS):
            self.tls = True
            self.transport.startTLS(_KeepConnection(self))
        elif isinstance(action, Ready) and self.startup and self.negotiation.has_fallback():
            self.transport.write(self.startup)
            self.startup_sent = True
            self._sniffing = bytearray()
        elif isinstance(action, (Ready, Fail, Retry)):
            self._done(action)

    def _done(self, action: Ready | Fail | Retry) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        finished, self.finished = self.finished, None
        # A relayed session keeps neither the StartupMessage nor the record
        # of the handshake's verification.
        self.startup = None
        self.verification = None
        if isinstance(action, Ready):
            self.peer_certificate = self.negotiation.peer_certificate
        if finished is not None:
            finished(self, action)

    def _timed_out(self) -> None:
        self._timer = None
        self._done(Fail(FailureReason.TIMEOUT, "timeout expired"))

    def abort(self) -> None:
        """Close the connection at once (a failed or abandoned attempt)."""
        self.finished = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.transport is not None:
            self.transport.abortConnection()


def peer_certificate_of(protocol: Any) -> x509.Certificate | None:
    """The upstream's certificate on an opened leg, or None for a plaintext one."""
    return getattr(protocol, "peer_certificate", None)
