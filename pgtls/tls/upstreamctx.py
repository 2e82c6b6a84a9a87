"""
The TLS client context of the upstream leg, built from ``pgtls.upstream``'s
libpq keywords as libpq's initialize_SSL builds its own
(fe-secure-openssl.c): the root certificates (a file, or ``system``), the
revocation list, the client certificate and key (the key's permissions
checked as libpq checks them), the protocol version bounds, ALPN
``postgresql`` (always, as libpq 17) and SNI.

Verification: with a root certificate loaded, OpenSSL verifies the chain
(sslmode verify-ca and verify-full, and require too when a root file is
named, libpq's legacy rule); the host name (verify-full) is checked after
the handshake by :mod:`pgtls.tls.negotiation`.  Without one, nothing is
verified (require, prefer, allow).
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from pgtls.core.conninfo import Upstream
from pgtls.tls.negotiation import ALPN_POSTGRESQL, FailureReason
from pgtls.tls.serverctx import openssl_reason, read_file

__all__ = [
    "UpstreamTLS",
    "UpstreamTLSError",
    "Verification",
    "describe_handshake_failure",
    "load_upstream_tls",
]

_PROTOCOL_VERSIONS = {
    "TLSv1": SSL.TLS1_VERSION,
    "TLSv1.1": SSL.TLS1_1_VERSION,
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}

# OpenSSL's X509_verify_cert_error_string for the verification errors an
# upstream's certificate meets in practice, and their metrics label.
_VERIFY_ERRORS: dict[int, tuple[str, FailureReason]] = {
    2: ("unable to get issuer certificate", FailureReason.UNKNOWN_CA),
    3: ("unable to get certificate CRL", FailureReason.CERTIFICATE_INVALID),
    9: ("certificate is not yet valid", FailureReason.CERTIFICATE_INVALID),
    10: ("certificate has expired", FailureReason.CERTIFICATE_EXPIRED),
    11: ("CRL is not yet valid", FailureReason.CERTIFICATE_INVALID),
    12: ("CRL has expired", FailureReason.CERTIFICATE_INVALID),
    18: ("self-signed certificate", FailureReason.UNKNOWN_CA),
    19: ("self-signed certificate in certificate chain", FailureReason.UNKNOWN_CA),
    20: ("unable to get local issuer certificate", FailureReason.UNKNOWN_CA),
    21: ("unable to verify the first certificate", FailureReason.UNKNOWN_CA),
    23: ("certificate revoked", FailureReason.CERTIFICATE_REVOKED),
    24: ("invalid CA certificate", FailureReason.CERTIFICATE_INVALID),
    26: ("unsupported certificate purpose", FailureReason.CERTIFICATE_INVALID),
}


class UpstreamTLSError(Exception):
    """A TLS keyword of ``pgtls.upstream`` cannot be used; ``str()`` is one line."""


@dataclass
class Verification:
    """What OpenSSL's verify callback saw during one handshake: the first error."""

    error: int = 0
    depth: int = 0

    def callback(
        self, connection: SSL.Connection, cert: Any, errnum: int, depth: int, ok: int
    ) -> bool:
        """Keep OpenSSL's verdict, and its first error for the log line."""
        if not ok and not self.error:
            self.error = errnum
            self.depth = depth
        return bool(ok)


@implementer(IOpenSSLClientConnectionCreator)
@dataclass(frozen=True)
class UpstreamTLS:
    """
    The upstream leg's client context, and how each connection is made.

    ``verifies``: a root certificate store is loaded and OpenSSL verifies
    the chain.  ``certificate``: the client certificate pgtls presents, or None.
    """

    upstream: Upstream
    context: SSL.Context
    verifies: bool
    certificate: x509.Certificate | None = None
    _sni: bytes | None = field(default=None, repr=False)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A new client connection, with SNI as libpq sends it."""
        return self.new_connection()[0]

    def new_connection(self, sock: Any = None) -> tuple[SSL.Connection, Verification]:
        """
        A new client connection (on ``sock``, or memory BIOs), with SNI as
        libpq sends it, and the record of its verification errors.
        """
        connection = SSL.Connection(self.context, sock)
        verification = Verification()
        if self.verifies:
            # Per connection: Twisted keeps its own object in the app data.
            connection.set_verify(SSL.VERIFY_PEER, verification.callback)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        connection.set_connect_state()
        return connection, verification


def load_upstream_tls(upstream: Upstream) -> UpstreamTLS | None:
    """
    Build the client context of the upstream leg.

    :param upstream: the parsed ``pgtls.upstream``; file names absolute.
    :return: None when the leg never uses TLS (a Unix socket, sslmode=disable).
    :raises UpstreamTLSError: a named file is missing, unreadable, malformed
        or (a key) too readable; a verifying sslmode without sslrootcert.
    """
    if not upstream.uses_tls:
        return None
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # An idle session's leg keeps no 2 x 16 kB of OpenSSL buffers (as the
    # client leg's context).
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_min_proto_version(_PROTOCOL_VERSIONS.get(upstream.ssl_min_protocol_version, 0))
    context.set_max_proto_version(_PROTOCOL_VERSIONS.get(upstream.ssl_max_protocol_version, 0))
    context.set_alpn_protos([ALPN_POSTGRESQL])
    verifies = _load_root(context, upstream)
    if verifies:
        context.set_verify(SSL.VERIFY_PEER)
        _load_crl(context, upstream.sslcrl)
    elif upstream.sslcrl:
        raise UpstreamTLSError(
            f'sslcrl "{upstream.sslcrl}" needs sslrootcert: a revocation list is '
            "checked only when the certificate is verified"
        )
    else:
        context.set_verify(SSL.VERIFY_NONE)
    certificate = _load_client_certificate(context, upstream)
    return UpstreamTLS(upstream, context, verifies, certificate, _sni_name(upstream))


def _sni_name(upstream: Upstream) -> bytes | None:
    """The SNI host name: the host keyword, unless sslsni=0 or it is an IP address literal."""
    name = upstream.tls_name
    if not upstream.sslsni or not name:
        return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return None
    try:
        return name.encode("idna")
    except UnicodeError:
        return name.encode("utf-8")


def _load_root(context: SSL.Context, upstream: Upstream) -> bool:
    """Load sslrootcert; say whether the chain is to be verified."""
    path = upstream.sslrootcert
    if path == "system":
        context.set_default_verify_paths()
        return True
    if not path:
        if upstream.sslmode in ("verify-ca", "verify-full"):
            raise UpstreamTLSError(
                f"sslmode={upstream.sslmode} needs sslrootcert: either provide the root "
                "certificate file, use the system's trusted roots with sslrootcert=system, "
                "or change sslmode to disable server certificate verification"
            )
        return False
    if not os.path.exists(path):
        raise UpstreamTLSError(
            f'root certificate file "{path}" does not exist: either provide the file, use '
            "the system's trusted roots with sslrootcert=system, or change sslmode to "
            "disable server certificate verification"
        )
    try:
        read_file(path)
        context.load_verify_locations(path)
    except OSError as error:
        raise UpstreamTLSError(
            f'could not read root certificate file "{path}": {error.strerror}'
        ) from None
    except SSL.Error as error:
        raise UpstreamTLSError(
            f'could not read root certificate file "{path}": {openssl_reason(error)}'
        ) from None
    return True


def _load_crl(context: SSL.Context, path: str) -> None:
    """Check the whole chain against the revocation list, as libpq does."""
    if not path:
        return
    try:
        read_file(path)
        store = context.get_cert_store()
        assert store is not None, "a client context always has a store"
        store.load_locations(path)
    except OSError as error:
        raise UpstreamTLSError(
            f'could not load SSL certificate revocation list file "{path}": {error.strerror}'
        ) from None
    except crypto.Error as error:
        raise UpstreamTLSError(
            f'could not load SSL certificate revocation list file "{path}": {openssl_reason(error)}'
        ) from None
    store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)


def _load_client_certificate(context: SSL.Context, upstream: Upstream) -> x509.Certificate | None:
    """sslcert and sslkey (decrypted with sslpassword), for an upstream that asks for one."""
    cert_path, key_path = upstream.sslcert, upstream.sslkey
    if not cert_path and not key_path:
        return None
    if not cert_path:
        raise UpstreamTLSError(f'sslkey "{key_path}" is set but sslcert is not')
    try:
        data = read_file(cert_path)
        context.use_certificate_chain_file(cert_path)
    except OSError as error:
        raise UpstreamTLSError(
            f'could not open certificate file "{cert_path}": {error.strerror}'
        ) from None
    except SSL.Error as error:
        raise UpstreamTLSError(
            f'could not read certificate file "{cert_path}": {openssl_reason(error)}'
        ) from None
    if not key_path:
        raise UpstreamTLSError(
            f'certificate present, but not private key file (sslcert "{cert_path}" needs sslkey)'
        )
    check_client_key_permissions(key_path)
    try:
        key = serialization.load_pem_private_key(
            read_file(key_path), password=upstream.sslpassword.encode("utf-8") or None
        )
        context.use_privatekey(key)  # type: ignore[arg-type]
        context.check_privatekey()
    except OSError as error:
        raise UpstreamTLSError(
            f'could not load private key file "{key_path}": {error.strerror}'
        ) from None
    except TypeError:
        # cryptography: encrypted and no password, or a password for a plain key.
        reason = "the key is encrypted and sslpassword is not set"
        if upstream.sslpassword:
            reason = "sslpassword is set but the key is not encrypted"
        raise UpstreamTLSError(f'could not load private key file "{key_path}": {reason}') from None
    except (ValueError, crypto.Error, SSL.Error) as error:
        reason = "bad decrypt" if upstream.sslpassword else str(error).split("\n", 1)[0]
        if isinstance(error, SSL.Error):
            reason = openssl_reason(error)
        raise UpstreamTLSError(f'could not load private key file "{key_path}": {reason}') from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        return None


def check_client_key_permissions(path: str, *, euid: int | None = None) -> None:
    """
    Refuse a client key others could read, as libpq's initialize_SSL does:
    a key of pgtls's own user must allow no group or other access (0600),
    a root-owned key at most group read (0640).

    :raises UpstreamTLSError: libpq's message.
    """
    euid = os.geteuid() if euid is None else euid
    try:
        st = os.stat(path)
    except OSError:
        raise UpstreamTLSError(f'certificate present, but not private key file "{path}"') from None
    if not stat.S_ISREG(st.st_mode):
        raise UpstreamTLSError(f'private key file "{path}" is not a regular file')
    mode = st.st_mode
    if (st.st_uid == euid and mode & (stat.S_IRWXG | stat.S_IRWXO)) or (
        st.st_uid == 0 and mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO)
    ):
        raise UpstreamTLSError(
            f'private key file "{path}" has group or world access; file must have '
            "permissions u=rw (0600) or less if owned by the current user, or permissions "
            "u=rw,g=r (0640) or less if owned by root"
        )


def describe_handshake_failure(
    record: Verification | None, error: BaseException
) -> tuple[FailureReason, str]:
    """
    Say why a handshake failed, in libpq's words (``SSL error: ...``), and
    the typed reason; a verification error adds OpenSSL's words for it.
    """
    if not isinstance(error, SSL.Error):
        text = str(error) or type(error).__name__
        if "Connection was closed cleanly" in text or "Connection lost" in text:
            return FailureReason.CLOSED, "SSL SYSCALL error: EOF detected"
        return FailureReason.HANDSHAKE_FAILED, f"SSL error: {text}"
    reason = openssl_reason(error)
    if record is not None and record.error:
        words, label = _VERIFY_ERRORS.get(
            record.error, (f"X509 error {record.error}", FailureReason.CERTIFICATE_INVALID)
        )
        return label, f"SSL error: {reason} ({words})"
    if reason == "certificate verify failed":
        return FailureReason.CERTIFICATE_INVALID, f"SSL error: {reason}"
    return FailureReason.HANDSHAKE_FAILED, f"SSL error: {reason}"
