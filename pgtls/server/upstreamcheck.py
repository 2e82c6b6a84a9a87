"""
What ``pgtls check`` and the start say about the upstream leg: the warning
for a remote upstream that may run without TLS, and a probe that connects
as a session would (the same :class:`~pgtls.tls.negotiation.Negotiation`, on a
blocking socket) and reports the certificate the upstream presented, or
why the leg failed.  An upstream that does not answer is a warning, never a
failure: it may start later than pgtls.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from datetime import UTC

from cryptography import x509
from OpenSSL import SSL

from pgtls.core.conninfo import Upstream, format_conninfo
from pgtls.tls import channelbinding
from pgtls.tls.dn import rfc2253_name
from pgtls.tls.negotiation import (
    SSL_REQUEST,
    Action,
    Attempt,
    Fail,
    Negotiation,
    Ready,
    Retry,
    SendSSLRequest,
    StartTLS,
)
from pgtls.tls.upstreamctx import UpstreamTLS, describe_handshake_failure

__all__ = ["probe_upstream", "upstream_warnings"]

#: How long the probe waits for each step (connect, answer, handshake).
PROBE_TIMEOUT = 5.0


def upstream_warnings(upstream: Upstream) -> list[str]:
    """
    The start-up warnings about the upstream leg: a TCP upstream not on
    loopback whose sslmode lets it run without TLS (below require).
    """
    if upstream.is_unix or upstream.requires_tls or _is_loopback(upstream.host):
        return []
    return [
        f"pgtls.upstream: the upstream server {upstream.address} is not on this machine "
        f"and sslmode={upstream.sslmode} lets the upstream leg run without SSL (passwords "
        "and data in the clear, no check of the server); use sslmode=verify-full with "
        "sslrootcert"
    ]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def probe_upstream(
    upstream: Upstream,
    tls: UpstreamTLS | None,
    timeout: float = PROBE_TIMEOUT,
    *,
    server_cert: x509.Certificate | None = None,
) -> list[str]:
    """
    Connect to the upstream as a session would and describe what happened.

    :param server_cert: pgtls's own certificate, to say whether SCRAM
        channel binding can pass (see pgtls.tls.channelbinding).

    :return: report lines; those starting ``warning:`` say the upstream
        did not answer or the leg failed.
    """
    lines = [f"upstream: {format_conninfo(upstream)}"]
    lines += [f"  warning: {warning}" for warning in upstream_warnings(upstream)]
    negotiation = Negotiation(upstream)
    try:
        lines += _attempt(upstream, tls, negotiation, timeout, server_cert)
    except OSError as error:
        reason = "timeout expired" if isinstance(error, TimeoutError) else error.strerror
        lines.append(
            f"  warning: the upstream server at {upstream.address} does not answer: "
            f"{reason or error}"
        )
    return lines


def _attempt(
    upstream: Upstream,
    tls: UpstreamTLS | None,
    negotiation: Negotiation,
    timeout: float,
    server_cert: x509.Certificate | None,
) -> list[str]:
    with _connect(upstream, timeout) as sock:
        action: Action = negotiation.connected()
        connection: SSL.Connection | None = None
        while True:
            if isinstance(action, SendSSLRequest):
                sock.sendall(SSL_REQUEST)
                answer = sock.recv(1)
                action = (
                    negotiation.data_received(answer) if answer else negotiation.connection_lost()
                )
            elif isinstance(action, StartTLS):
                assert tls is not None, "TLS is tried only with a client context"
                connection, verification = tls.new_connection(sock)
                try:
                    connection.do_handshake()
                except (SSL.Error, OSError) as error:
                    label, message = describe_handshake_failure(verification, error)
                    action = negotiation.handshake_failed(label, message)
                    continue
                peer = connection.get_peer_certificate()
                action = negotiation.handshake_done(
                    connection.get_alpn_proto_negotiated() or None,
                    peer.to_cryptography() if peer is not None else None,
                )
            elif isinstance(action, Ready):
                return _ready_lines(upstream, negotiation, connection, action, server_cert)
            elif isinstance(action, Retry):
                lines = [
                    f"  SSL failed: {action.message}; sslmode=prefer then connects without SSL"
                ]
                return lines + _attempt(
                    upstream, tls, Negotiation(upstream, Attempt.PLAIN), timeout, server_cert
                )
            elif isinstance(action, Fail):
                return [
                    f"  warning: could not connect to the upstream server at "
                    f"{upstream.address}: {action.message}"
                ]
            else:
                raise RuntimeError(f"unexpected negotiation action {action!r}")


def _connect(upstream: Upstream, timeout: float) -> socket.socket:
    if upstream.is_unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(upstream.unix_socket_path)
        except OSError:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((upstream.host, upstream.port), timeout=timeout)
    # pyOpenSSL reads and writes a blocking socket; the timeout stays on
    # through SO_RCVTIMEO / SO_SNDTIMEO.
    sock.settimeout(None)
    seconds = int(timeout)
    micros = int((timeout - seconds) * 1e6)
    packed = seconds.to_bytes(8, "little") + micros.to_bytes(8, "little")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, packed)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, packed)
    return sock


def _ready_lines(
    upstream: Upstream,
    negotiation: Negotiation,
    connection: SSL.Connection | None,
    ready: Ready,
    server_cert: x509.Certificate | None,
) -> list[str]:
    if not ready.tls or connection is None:
        how = "without SSL" if upstream.uses_tls else "(no SSL on this leg)"
        lines = [f"  the upstream server at {upstream.address} answers {how}"]
        if upstream.uses_tls:
            # A leg that may use TLS went without: check said nothing yet.
            lines += channelbinding.report_lines(server_cert, None)
        return lines
    lines = [
        f"  the upstream server at {upstream.address} answers with SSL "
        f"(protocol={connection.get_protocol_version_name()}, "
        f"cipher={connection.get_cipher_name()})"
    ]
    cert = negotiation.peer_certificate
    if cert is not None:
        lines += _certificate_lines(cert)
    verified = {
        "verify-full": "chain and host name verified",
        "verify-ca": "chain verified, host name not checked (verify-ca)",
    }.get(upstream.sslmode)
    if verified is None:
        verified = "chain verified" if negotiation.upstream.sslrootcert else "not verified"
    lines.append(f"    verification: {verified}")
    if cert is not None:
        lines += channelbinding.report_lines(server_cert, cert)
    with contextlib.suppress(SSL.Error):
        connection.shutdown()
    return lines


def _certificate_lines(cert: x509.Certificate) -> list[str]:
    expires = cert.not_valid_after_utc.astimezone(UTC)
    return [
        f"    certificate subject: {rfc2253_name(cert.subject)}",
        f"    issuer: {rfc2253_name(cert.issuer)}",
        f"    valid until: {expires:%Y-%m-%d %H:%M} UTC",
    ]
