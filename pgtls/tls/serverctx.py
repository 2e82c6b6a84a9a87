"""
The server's TLS context, built once at start from the settings, as
PostgreSQL's be_tls_init builds its SSL_CTX.

:func:`load_server_tls` checks and loads the certificate chain, the private
key (its passphrase from passphrase.py if it needs one), the CA and CRL
files, and applies the protocol, cipher, curve and ALPN policy.  Every
problem is a :class:`TLSConfigError` whose text is one line in PostgreSQL's
words.  :func:`describe_connection` reports what a finished handshake agreed
on; dn.py prints its client certificate's subject.

The Twisted shell hands :class:`ServerTLS` to
:func:`pgtls.relay.fastwrite.start_tls`, which layers TLS through the fast path's
seam in _internals.py, or through ``transport.startTLS`` when the fast path
is off; this module never touches the reactor.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from pgtls.core.conf import Settings
from pgtls.core.hba import ClientCert
from pgtls.tls.dn import rfc2253_name
from pgtls.tls.errors import TLSConfigError, openssl_reason

# Re-exported: callers import these from here, as before the split.
from pgtls.tls.passphrase import (
    PASSPHRASE_COMMAND_TIMEOUT,
    PASSPHRASE_PROMPT,
    run_passphrase_command,
    terminal_passphrase,
)

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

__all__ = [
    "ALPN_PROTOCOL",
    "PASSPHRASE_PROMPT",
    "NoApplicationProtocol",
    "ServerTLS",
    "TLSConfigError",
    "TLSInfo",
    "check_key_file_permissions",
    "describe_connection",
    "file_setting",
    "load_server_tls",
    "openssl_reason",
    "read_file",
    "rfc2253_name",
    "run_passphrase_command",
    "terminal_passphrase",
]

#: PostgreSQL's ALPN protocol id (PG_ALPN_PROTOCOL).
ALPN_PROTOCOL = b"postgresql"

_PROTOCOL_VERSIONS = {
    "TLSv1": SSL.TLS1_VERSION,
    "TLSv1.1": SSL.TLS1_1_VERSION,
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}

# ssl_ecdh_curve takes OpenSSL short names (PostgreSQL looks them up with
# OBJ_sn2nid), which call the NIST P-192/P-256 curves prime192v1/prime256v1.
_CURVES: dict[str, ec.EllipticCurve] = {
    "prime192v1": ec.SECP192R1(),
    "secp224r1": ec.SECP224R1(),
    "prime256v1": ec.SECP256R1(),
    "secp384r1": ec.SECP384R1(),
    "secp521r1": ec.SECP521R1(),
    "secp256k1": ec.SECP256K1(),
    "brainpoolP256r1": ec.BrainpoolP256R1(),
    "brainpoolP384r1": ec.BrainpoolP384R1(),
    "brainpoolP512r1": ec.BrainpoolP512R1(),
}

_PrivateKey = (
    dsa.DSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
)
_PRIVATE_KEY_TYPES = (
    dsa.DSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    rsa.RSAPrivateKey,
)

_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
# PKCS#8 "ENCRYPTED PRIVATE KEY" blocks, and the traditional OpenSSL format's
# "Proc-Type: 4,ENCRYPTED" header.
_PEM_ENCRYPTED = re.compile(
    rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|^Proc-Type:[ \t]*4,[ \t]*ENCRYPTED", re.MULTILINE
)

_KEY_MODE_DETAIL = (
    "File must have permissions u=rw (0600) or less if owned by the database user, "
    "or permissions u=rw,g=r (0640) or less if owned by root."
)


class NoApplicationProtocol(SSL.Error):
    """
    The client offered ALPN protocols and ``postgresql`` was not among them.

    Raised from the ALPN callback, which makes OpenSSL abort the handshake
    with the no_application_protocol alert (PostgreSQL 17's alpn_cb); the
    handshake then fails with this exception.  ``reason`` is what the shell
    logs and counts for it, OpenSSL's text for that alert.  ``args`` keep
    the shape of pyOpenSSL's error queue because Twisted's TLS layer unpacks
    every ``SSL.Error`` that way (tls.py _representsEOF).
    """

    reason = "no application protocol"

    def __init__(self, offered: list[bytes]) -> None:
        super().__init__([("SSL routines", "", self.reason)])
        self.offered = offered


@implementer(IOpenSSLServerConnectionCreator)
@dataclass(frozen=True, slots=True)
class ServerTLS:
    """
    A loaded server context and what it asks of clients.

    ``verify_clients``: a CA file was loaded, so every handshake requests a
    certificate and verifies any presented one (an untrusted certificate
    fails the handshake; no certificate does not).  ``require_client_cert``:
    on top of that, ``pgtls.clientcert = required``, so the shell refuses a
    client without a certificate after the handshake (FATAL 28000).
    ``certificate``: the server certificate clients see (what SCRAM channel
    binding hashes), None if only OpenSSL's chain reader understood the file.
    """

    context: SSL.Context
    verify_clients: bool
    require_client_cert: bool
    certificate: x509.Certificate | None = None

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        Make the OpenSSL connection for one client.

        :param tlsProtocol: the Twisted TLS protocol it will serve (unused:
            every client gets the same context).
        """
        return SSL.Connection(self.context, None)


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """
    What a completed handshake agreed on, for logging and pg_hba.conf.

    ``protocol`` is OpenSSL's version name (``TLSv1.3``), ``cipher`` its cipher
    name, ``bits`` the cipher's secret bits, ``alpn`` the selected protocol
    or None, ``client_cert`` the verified client certificate or None.
    """

    protocol: str
    cipher: str
    bits: int
    alpn: bytes | None
    client_cert: ClientCert | None


def load_server_tls(
    settings: Settings,
    *,
    ask_passphrase: Callable[[str], str] | None = None,
    max_attempts: int = 3,
    command_timeout: float = PASSPHRASE_COMMAND_TIMEOUT,
) -> ServerTLS:
    """
    Build the server context from the settings, in PostgreSQL's order.

    :param settings: the loaded settings; file names are absolute.
    :param ask_passphrase: called with the prompt when the key is encrypted
        and no ssl_passphrase_command is set (e.g. :func:`terminal_passphrase`);
        asked again, up to ``max_attempts`` times, while the passphrase is wrong.
    :param max_attempts: how many passphrases ``ask_passphrase`` may offer.
    :param command_timeout: seconds ssl_passphrase_command may run.
    :raises TLSConfigError: a file is missing, unreadable, unsafe, malformed or
        mismatched, the passphrase is missing or wrong, or a setting has no
        valid value.
    :raises ValueError: max_attempts is less than 1.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    leaf = _load_certificate_chain(
        context, settings.ssl_cert_file, file_setting(settings, "ssl_cert_file")
    )
    key = _load_private_key(settings, ask_passphrase, max_attempts, command_timeout)
    _use_private_key(context, file_setting(settings, "ssl_key_file"), key, leaf)
    del key
    # These fail on a setting's value: the line names where it was set.
    try:
        _set_protocol_versions(context, settings)
    except TLSConfigError as error:
        raise _located(
            settings, error, "ssl_min_protocol_version", "ssl_max_protocol_version"
        ) from None
    _set_session_policy(context, settings)
    try:
        _set_ecdh_curve(context, settings.ssl_ecdh_curve)
    except TLSConfigError as error:
        raise _located(settings, error, "ssl_ecdh_curve") from None
    try:
        ciphers = _cipher_list(settings.ssl_ciphers)
    except TLSConfigError as error:
        raise _located(settings, error, "ssl_ciphers") from None
    context.set_alpn_select_callback(_select_alpn)
    verify_clients = _load_client_ca(context, settings)
    if verify_clients:
        _load_crl(context, settings)
    # Last: pyOpenSSL 25.1 to 25.3 make a connection to set a cipher list,
    # then warn at every later change to the context.
    context.set_cipher_list(ciphers)
    return ServerTLS(
        context=context,
        verify_clients=verify_clients,
        require_client_cert=verify_clients and settings.clientcert == "required",
        certificate=leaf,
    )


def describe_connection(conn: SSL.Connection) -> TLSInfo:
    """
    Describe a connection whose handshake has completed.

    A client certificate is reported only if it was verified against the CA
    file; one whose Common Name contains a NUL byte (which PostgreSQL refuses
    to use) is reported as no certificate.

    :param conn: the server side of the connection.
    :raises ValueError: the handshake has not completed.
    """
    cipher = conn.get_cipher_name()
    bits = conn.get_cipher_bits()
    if cipher is None or bits is None:
        raise ValueError("the TLS handshake has not completed")
    # Interned: the same few names, which every session keeps to its end.
    return TLSInfo(
        protocol=sys.intern(conn.get_protocol_version_name()),
        cipher=sys.intern(cipher),
        bits=bits,
        alpn=conn.get_alpn_proto_negotiated() or None,
        client_cert=_verified_client_cert(conn),
    )


def check_key_file_permissions(
    path: str, *, euid: int | None = None, shown: str | None = None
) -> None:
    """
    Refuse a private key file others could read, as PostgreSQL 11+ does.

    It must be a regular file owned by the server's user (then no group or
    other access) or by root (then at most 0640).

    :param path: the key file.
    :param euid: the server's user id; the effective uid by default.
    :param shown: the name the messages quote (default: ``path``).
    :raises TLSConfigError: the file cannot be stat'ed or is unsafe.
    """
    if euid is None:
        euid = os.geteuid()
    name = path if shown is None else shown
    try:
        st = os.stat(path)
    except OSError as error:
        raise TLSConfigError(
            f'could not access private key file "{name}": {error.strerror}'
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise TLSConfigError(f'private key file "{name}" is not a regular file')
    if st.st_uid not in (euid, 0):
        raise TLSConfigError(
            f'private key file "{name}" must be owned by the database user or root'
        )
    # Root's group may be how a non-root server reads system-wide keys, so a
    # root-owned key may be group-readable.  Checked first: pgtls may run as
    # root itself (PostgreSQL never does, so it has no rule for that case).
    if st.st_uid == 0:
        forbidden = stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO
    else:
        forbidden = stat.S_IRWXG | stat.S_IRWXO
    if st.st_mode & forbidden:
        raise TLSConfigError(
            f'private key file "{name}" has group or world access', _KEY_MODE_DETAIL
        )


def read_file(path: str) -> bytes:
    """The bytes of ``path``; OSError as open() raises it."""
    with open(path, "rb") as f:
        return f.read()


def _load_certificate_chain(context: SSL.Context, path: str, shown: str) -> x509.Certificate | None:
    """
    Load the server certificate and any intermediates after it.

    :param shown: the file's name as ssl_cert_file gives it, for messages.
    :return: the server certificate, for the key check; None if only
        OpenSSL's chain reader understood the file.
    """

    def failed(reason: str) -> TLSConfigError:
        return TLSConfigError(f'could not load server certificate file "{shown}": {reason}')

    # OpenSSL 3 reports a missing file with an empty reason: read it here to
    # get "No such file or directory" as PostgreSQL prints it.
    try:
        data = read_file(path)
    except OSError as error:
        raise failed(error.strerror or str(error)) from None
    try:
        context.use_certificate_chain_file(path)
    except SSL.Error as error:
        raise failed(openssl_reason(error)) from None
    try:
        return crypto.load_certificate(crypto.FILETYPE_PEM, data).to_cryptography()
    except crypto.Error:
        return None


def _load_private_key(
    settings: Settings,
    ask_passphrase: Callable[[str], str] | None,
    max_attempts: int,
    command_timeout: float,
) -> _PrivateKey:
    """Check, read and (if need be) decrypt the key file."""
    path = settings.ssl_key_file
    shown = file_setting(settings, "ssl_key_file")
    check_key_file_permissions(path, shown=shown)
    try:
        data = read_file(path)
    except OSError as error:
        raise _key_error(shown, error.strerror or str(error)) from None
    if not _PEM_PRIVATE_KEY.search(data):
        raise _key_error(shown, "no PEM private key found")
    if not _PEM_ENCRYPTED.search(data):
        return _parse_key(shown, data, b"")
    if settings.ssl_passphrase_command:
        try:
            passphrase = run_passphrase_command(
                settings.ssl_passphrase_command, timeout=command_timeout
            )
        except TLSConfigError as error:
            # PostgreSQL's line names the command only; this one the key too.
            raise _key_error(shown, error.message, error.detail) from None
        try:
            return _parse_key(shown, data, passphrase)
        finally:
            del passphrase
    if ask_passphrase is None:
        raise _key_error(
            shown,
            "it requires a pass phrase",
            "run pgtls in the foreground on a terminal to type it, or set ssl_passphrase_command",
        )
    return _ask_until_right(shown, data, ask_passphrase, max_attempts)


def _ask_until_right(
    path: str, data: bytes, ask_passphrase: Callable[[str], str], max_attempts: int
) -> _PrivateKey:
    """Ask for the passphrase until it decrypts the key, at most max_attempts times."""
    last_error: TLSConfigError | None = None
    for _ in range(max_attempts):
        try:
            answer = ask_passphrase(PASSPHRASE_PROMPT).encode("utf-8")
        except TLSConfigError as error:
            # No terminal, or it went away: the line names the key, as
            # PostgreSQL's does (its reason, OpenSSL's "processing error",
            # says less).
            raise _key_error(path, error.message, error.detail) from None
        try:
            return _parse_key(path, data, answer)
        except TLSConfigError as error:
            last_error = error
        finally:
            del answer
    assert last_error is not None
    raise last_error


def _parse_key(path: str, data: bytes, passphrase: bytes) -> _PrivateKey:
    """
    Parse a PEM key with OpenSSL, for its error reasons (``bad decrypt``).

    A passphrase is always given (empty for a plain key) so that OpenSSL
    never falls back to prompting on the terminal itself.
    """
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, data, passphrase).to_cryptography_key()
    except crypto.Error as error:
        raise _key_error(path, openssl_reason(error)) from None
    except ValueError as error:
        # pyOpenSSL's own complaint, e.g. a passphrase longer than OpenSSL takes.
        raise _key_error(path, str(error)) from None
    if not isinstance(key, _PRIVATE_KEY_TYPES):
        raise _key_error(path, "unsupported key type")
    return key


def _key_error(shown: str, reason: str, detail: str | None = None) -> TLSConfigError:
    return TLSConfigError(f'could not load private key file "{shown}": {reason}', detail)


def _located(settings: Settings, error: TLSConfigError, *names: str) -> TLSConfigError:
    """
    ``error`` prefixed with where the first of ``names`` that was set was set
    (``FILE:LINE: `` or ``command line: ``), as configuration errors are; a
    default value has no place to name.
    """
    for setting, path, line in settings.sources:
        if setting in names:
            where = f"{path}:{line}" if line is not None else path
            return TLSConfigError(f"{where}: {error.message}", error.detail)
    return error


def file_setting(settings: Settings, name: str) -> str:
    """
    A file setting's value as written (``server.key``), which is how
    PostgreSQL's messages name the file, rather than the absolute path
    pgtls opens (relative names are relative to the data directory).

    :param name: ``ssl_cert_file``, ``ssl_key_file``, ``ssl_ca_file`` or
        ``ssl_crl_file``.
    """
    for setting, text in settings.raw_values:
        if setting == name:
            return text
    path: str = getattr(settings, name)
    (default,) = [f.default for f in dataclasses.fields(Settings) if f.name == name]
    assert isinstance(default, str)
    if path == os.path.normpath(os.path.join(settings.data_directory, default)):
        return default
    return path


def _use_private_key(
    context: SSL.Context, path: str, key: _PrivateKey, leaf: x509.Certificate | None
) -> None:
    """
    Install the key and check it belongs to the certificate.

    The comparison is made here because OpenSSL 3 may reject a mismatched
    key while installing it, or report an unrelated reason for keys of
    another type; PostgreSQL's message is ``check of private key failed``.
    """
    if leaf is not None and leaf.public_key() != key.public_key():
        raise TLSConfigError(
            "check of private key failed: key values mismatch",
            f'private key file "{path}" is not the key of the server certificate',
        )
    try:
        context.use_privatekey(key)
    except SSL.Error as error:
        raise _key_error(path, openssl_reason(error)) from None
    try:
        context.check_privatekey()
    except SSL.Error as error:
        raise TLSConfigError(f"check of private key failed: {openssl_reason(error)}") from None


def _protocol_version(name: str, value: str) -> int:
    """OpenSSL's number for a protocol version setting; 0 (no limit) for ''."""
    if not value:
        return 0
    try:
        return _PROTOCOL_VERSIONS[value]
    except KeyError:
        raise TLSConfigError(f'"{name}" setting "{value}" not supported by this build') from None


def _set_protocol_versions(context: SSL.Context, settings: Settings) -> None:
    low = _protocol_version("ssl_min_protocol_version", settings.ssl_min_protocol_version)
    high = _protocol_version("ssl_max_protocol_version", settings.ssl_max_protocol_version)
    if low and high and low > high:
        raise TLSConfigError(
            "could not set SSL protocol version range",
            '"ssl_min_protocol_version" cannot be higher than "ssl_max_protocol_version"',
        )
    try:
        context.set_min_proto_version(low)
    except SSL.Error:
        raise TLSConfigError("could not set minimum SSL protocol version") from None
    try:
        context.set_max_proto_version(high)
    except SSL.Error:
        raise TLSConfigError("could not set maximum SSL protocol version") from None


def _set_session_policy(context: SSL.Context, settings: Settings) -> None:
    """No compression, resumption or renegotiation, as PostgreSQL 14+."""
    options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION
    if settings.ssl_prefer_server_ciphers:
        options |= SSL.OP_CIPHER_SERVER_PREFERENCE
    context.set_options(options)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # Idle sessions are the common case; don't keep 2 x 16 kB buffers for each.
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)


def _set_ecdh_curve(context: SSL.Context, name: str) -> None:
    """Restrict key exchange to the one named curve, as SSL_CTX_set_tmp_ecdh does."""
    curve = _CURVES.get(name)
    if curve is None:
        raise TLSConfigError(f"ECDH: unrecognized curve name: {name}")
    context.set_tmp_ecdh(curve)


def _cipher_list(ciphers: str) -> bytes:
    """
    The TLS 1.2-and-older cipher list, checked on a context of its own (in
    PostgreSQL's order of checks); TLS 1.3 suites stay OpenSSL's.
    """
    try:
        encoded = ciphers.encode("ascii")
        SSL.Context(SSL.TLS_SERVER_METHOD).set_cipher_list(encoded)
    except (SSL.Error, UnicodeEncodeError):
        raise TLSConfigError("could not set the cipher list (no valid ciphers available)") from None
    return encoded


def _select_alpn(conn: SSL.Connection, offered: list[bytes]) -> bytes:
    """Pick ``postgresql``; abort a client that offers ALPN without it."""
    if ALPN_PROTOCOL in offered:
        return ALPN_PROTOCOL
    raise NoApplicationProtocol(offered)


def _wanted(settings: Settings, name: str, path: str) -> bool:
    """
    Whether to load an optional file: an explicitly named one always (so a
    missing one is an error), a default one only if it exists.
    """
    if not path:
        return False
    return name in settings.explicit or os.path.lexists(path)


def _load_client_ca(context: SSL.Context, settings: Settings) -> bool:
    """
    Trust the CA file for client certificates and name its CAs in the
    CertificateRequest; request a certificate from every client but let one
    without a certificate finish the handshake.

    :return: whether a CA file was loaded.
    """
    path = settings.ssl_ca_file
    if not _wanted(settings, "ssl_ca_file", path):
        return False

    shown = file_setting(settings, "ssl_ca_file")

    def failed(reason: str) -> TLSConfigError:
        return TLSConfigError(f'could not load root certificate file "{shown}": {reason}')

    try:
        read_file(path)
    except OSError as error:
        raise failed(error.strerror or str(error)) from None
    try:
        context.load_verify_locations(path)
        context.load_client_ca(os.fsencode(path))
    except SSL.Error as error:
        raise failed(openssl_reason(error)) from None
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE)
    return True


def _load_crl(context: SSL.Context, settings: Settings) -> None:
    """Check client certificates against the CRL file, all the chain."""
    path = settings.ssl_crl_file
    if not _wanted(settings, "ssl_crl_file", path):
        return

    shown = file_setting(settings, "ssl_crl_file")

    def failed(reason: str) -> TLSConfigError:
        return TLSConfigError(
            f'could not load SSL certificate revocation list file "{shown}": {reason}'
        )

    try:
        read_file(path)
    except OSError as error:
        raise failed(error.strerror or str(error)) from None
    store = context.get_cert_store()
    if store is None:
        raise failed("no certificate store")
    try:
        store.load_locations(path)
    except crypto.Error as error:
        raise failed(openssl_reason(error)) from None
    store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)


def _verified_client_cert(conn: SSL.Connection) -> ClientCert | None:
    if conn.get_peer_certificate(as_cryptography=True) is None:
        return None
    chain = conn.get_verified_chain(as_cryptography=True)
    if not chain:
        return None
    subject = chain[0].subject
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else None
    if cn is not None and "\0" in cn:
        return None
    return ClientCert(cn=cn, dn=rfc2253_name(subject))
