"""
How pgtls opens the upstream leg, as libpq's PQconnectPoll does: sans-IO.

A :class:`Negotiation` is one connection attempt.  The Twisted shell
(:mod:`pgtls.relay.upstreamleg`) feeds it what happens (connected, bytes read,
TLS handshake done or failed, connection closed) and does what it answers:
an :class:`Action`.  It never sees the client's bytes: the StartupMessage
is sent by the shell once the answer is :class:`Ready`.

Attempts follow the sslmode, as in libpq:

========== =====================================================
sslmode    attempts
========== =====================================================
disable    plaintext
allow      plaintext; TLS on a new connection if the first fails
prefer     SSLRequest (``N``: plaintext on the same connection);
           plaintext on a new connection if the handshake fails
require,   SSLRequest; ``N`` fails
verify-*
direct     TLS ClientHello at once; ALPN ``postgresql`` required
========== =====================================================

A Unix-socket upstream never uses TLS, whatever the sslmode (libpq).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from cryptography import x509

from pgtls.core.conninfo import Upstream
from pgtls.tls.peername import peer_name_mismatch

__all__ = [
    "ALPN_POSTGRESQL",
    "SSL_REQUEST",
    "Attempt",
    "Fail",
    "FailureReason",
    "Negotiation",
    "Ready",
    "Retry",
    "SendSSLRequest",
    "StartTLS",
    "Wait",
    "first_attempt",
]

#: The SSLRequest packet: length 8, code 80877103.
SSL_REQUEST = struct.pack("!II", 8, 80877103)
ALPN_POSTGRESQL = b"postgresql"


class Attempt(enum.Enum):
    """How one connection to the upstream begins."""

    PLAIN = "plain"  # StartupMessage at once, no TLS
    SSL_REQUEST = "ssl_request"  # SSLRequest, then TLS on S
    DIRECT = "direct"  # TLS ClientHello at once (sslnegotiation=direct)


class FailureReason(enum.Enum):
    """Why the upstream leg failed: the ``reason`` label of the metrics."""

    CONNECTION_REFUSED = "connection_refused"
    TIMEOUT = "timeout"
    CONNECT_FAILED = "connect_failed"  # no such socket file, no route, DNS ...
    CLOSED = "closed"  # the upstream closed during negotiation
    SSL_NOT_SUPPORTED = "ssl_not_supported"  # N where TLS is required
    INVALID_RESPONSE = "invalid_response"  # not S or N, or bytes after S
    HANDSHAKE_FAILED = "handshake_failed"  # alert, protocol version, ciphers
    UNKNOWN_CA = "unknown_ca"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_REVOKED = "certificate_revoked"
    CERTIFICATE_INVALID = "certificate_invalid"  # any other verification error
    HOST_NAME_MISMATCH = "host_name_mismatch"
    NO_ALPN = "no_alpn"


# -- actions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendSSLRequest:
    """Write :data:`SSL_REQUEST` and wait for one byte."""


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Start the TLS handshake (client side)."""


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do until the next event."""


@dataclass(frozen=True, slots=True)
class Ready:
    """The leg is ready for the client's StartupMessage; ``tls`` says whether it is encrypted."""

    tls: bool


@dataclass(frozen=True, slots=True)
class Fail:
    """The leg failed: ``message`` is libpq's words, ``reason`` the typed label."""

    reason: FailureReason
    message: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Close this connection and open a new one that begins as ``attempt``."""

    attempt: Attempt
    message: str  # why the previous attempt ended, for a debug line


Action = SendSSLRequest | StartTLS | Wait | Ready | Fail | Retry


class _State(enum.Enum):
    CONNECTING = "connecting"
    AWAIT_RESPONSE = "await_response"
    HANDSHAKE = "handshake"
    READY = "ready"
    FAILED = "failed"


def first_attempt(upstream: Upstream) -> Attempt:
    """How the first connection to ``upstream`` begins."""
    if not upstream.uses_tls or upstream.sslmode == "allow":
        return Attempt.PLAIN
    if upstream.sslnegotiation == "direct":
        return Attempt.DIRECT
    return Attempt.SSL_REQUEST


class Negotiation:
    """
    One connection attempt to the upstream, as a state machine.

    Each method is an event and returns the :data:`Action` to take; an
    event that cannot happen in the current state is a bug in the shell
    and raises ``RuntimeError``.
    """

    def __init__(self, upstream: Upstream, attempt: Attempt | None = None) -> None:
        self.upstream = upstream
        self.attempt = first_attempt(upstream) if attempt is None else attempt
        self.state = _State.CONNECTING
        #: The peer's certificate once the handshake is done (None without TLS).
        self.peer_certificate: x509.Certificate | None = None
        #: Whether the leg, once ready, is encrypted.
        self.tls = False

    @property
    def in_handshake(self) -> bool:
        """Whether the TLS handshake is under way (a loss then is a handshake failure)."""
        return self.state is _State.HANDSHAKE

    def _expect(self, *states: _State) -> None:
        if self.state not in states:
            raise RuntimeError(f"upstream negotiation event in state {self.state.value}")

    def _fail(self, reason: FailureReason, message: str) -> Fail:
        self.state = _State.FAILED
        return Fail(reason, message)

    def connected(self) -> Action:
        """The connection is open."""
        self._expect(_State.CONNECTING)
        if self.attempt is Attempt.PLAIN:
            self.state = _State.READY
            return Ready(tls=False)
        if self.attempt is Attempt.DIRECT:
            self.state = _State.HANDSHAKE
            return StartTLS()
        self.state = _State.AWAIT_RESPONSE
        return SendSSLRequest()

    def data_received(self, data: bytes) -> Action:
        """
        Bytes from the upstream before the handshake: the answer to
        SSLRequest.  The shell gives every byte read (a TLS layer reads
        from the handshake on).
        """
        self._expect(_State.AWAIT_RESPONSE)
        if not data:
            return Wait()
        answer = data[:1]
        if answer == b"S":
            if len(data) > 1:
                # CVE-2021-23222: bytes an attacker injected before TLS.
                return self._fail(
                    FailureReason.INVALID_RESPONSE,
                    "received unencrypted data after SSL response",
                )
            self.state = _State.HANDSHAKE
            return StartTLS()
        if answer == b"N":
            if self.upstream.requires_tls:
                return self._fail(
                    FailureReason.SSL_NOT_SUPPORTED,
                    "server does not support SSL, but SSL was required",
                )
            if len(data) > 1:
                return self._fail(
                    FailureReason.INVALID_RESPONSE,
                    "received unencrypted data after SSL response",
                )
            self.state = _State.READY
            return Ready(tls=False)
        if answer == b"E":
            # libpq since CVE-2024-10977: no message read, no fallback.
            return self._fail(
                FailureReason.INVALID_RESPONSE, "server sent an error response during SSL exchange"
            )
        shown = answer.decode("latin-1")
        return self._fail(
            FailureReason.INVALID_RESPONSE,
            f"received invalid response to SSL negotiation: {shown}",
        )

    def handshake_done(self, alpn: bytes | None, peer: x509.Certificate | None) -> Action:
        """
        The handshake completed (and OpenSSL verified the chain, when the
        sslmode asks for it); check ALPN and the host name.
        """
        self._expect(_State.HANDSHAKE)
        self.peer_certificate = peer
        if self.attempt is Attempt.DIRECT and alpn != ALPN_POSTGRESQL:
            return self._fail(
                FailureReason.NO_ALPN,
                "direct SSL connection was established without ALPN protocol negotiation extension",
            )
        if self.upstream.sslmode == "verify-full":
            if peer is None:
                return self._fail(
                    FailureReason.CERTIFICATE_INVALID,
                    "could not get server's host name from server certificate",
                )
            mismatch = peer_name_mismatch(peer, self.upstream.tls_name)
            if mismatch is not None:
                return self._fail(FailureReason.HOST_NAME_MISMATCH, mismatch)
        self.state = _State.READY
        self.tls = True
        return Ready(tls=True)

    def handshake_failed(self, reason: FailureReason, message: str) -> Action:
        """
        The handshake failed: ``message`` is libpq's ``SSL error: ...``.
        With sslmode=prefer libpq tries again without SSL on a new connection.
        """
        self._expect(_State.HANDSHAKE)
        self.state = _State.FAILED
        if self.upstream.sslmode == "prefer" and self.attempt is Attempt.SSL_REQUEST:
            return Retry(Attempt.PLAIN, message)
        return Fail(reason, message)

    def connection_lost(self) -> Action:
        """The upstream closed before the leg was ready."""
        if self.state in (_State.READY, _State.FAILED):
            return Wait()
        if self.state is _State.HANDSHAKE:
            return self.handshake_failed(FailureReason.CLOSED, "SSL SYSCALL error: EOF detected")
        self.state = _State.FAILED
        return Fail(FailureReason.CLOSED, "server closed the connection unexpectedly")

    def startup_refused(self) -> Retry | None:
        """
        The upstream answered the StartupMessage with an ErrorResponse
        before any authentication request.  libpq then tries the other
        encryption on a new connection: plaintext after TLS with prefer,
        TLS after plaintext with allow.  None: the error goes to the client.
        """
        self._expect(_State.READY)
        return self._fallback()

    def has_fallback(self) -> bool:
        """Whether an ErrorResponse to the StartupMessage would make libpq try again."""
        return self.state is _State.READY and self._fallback() is not None

    def _fallback(self) -> Retry | None:
        mode = self.upstream.sslmode
        if not self.upstream.uses_tls:
            return None
        if mode == "prefer" and self.tls:
            return Retry(Attempt.PLAIN, "the server refused the session over SSL")
        if mode == "allow" and not self.tls:
            return Retry(Attempt.SSL_REQUEST, "the server refused the session without SSL")
        return None
