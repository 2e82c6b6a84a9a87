"""
Tests for pgtls.tls.serverctx: the server TLS context, as PostgreSQL's be_tls_init
builds it, checked with real TLS handshakes in memory.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from pgtls.core.conf import Settings, load_settings
from pgtls.core.hba import ClientCert
from pgtls.tls import certs
from pgtls.tls.serverctx import (
    ALPN_PROTOCOL,
    PASSPHRASE_PROMPT,
    NoApplicationProtocol,
    ServerTLS,
    TLSConfigError,
    check_key_file_permissions,
    describe_connection,
    load_server_tls,
)

KEY_MODE_DETAIL = (
    "File must have permissions u=rw (0600) or less if owned by the database user, "
    "or permissions u=rw,g=r (0640) or less if owned by root."
)
# A uid that owns nothing here: stands in for "the database user" when the
# tests run as root, or for "someone else".
OTHER_UID = 4242
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to chown files")


# -- certificates ------------------------------------------------------------


def issue(
    ca: certs.Issued,
    subject: x509.Name,
    *,
    is_ca: bool = False,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
) -> certs.Issued:
    """A certificate for any subject name, or an intermediate CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if not is_ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return certs.Issued(key, builder.sign(ca.key, hashes.SHA256()))


def name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


@dataclass(frozen=True)
class PKI:
    root: certs.Issued
    intermediate: certs.Issued
    server: certs.Issued
    alice: certs.Issued
    bob: certs.Issued
    other_ca: certs.Issued
    stranger: certs.Issued
    root_file: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = certs.make_ca("TestCA")
    intermediate = issue(root, name((NameOID.COMMON_NAME, "TestCA intermediate")), is_ca=True)
    other_ca = certs.make_ca("OtherCA")
    root_file = str(tmp_path_factory.mktemp("pki") / "client-root.crt")
    certs.write_pem(root_file, root.cert)
    return PKI(
        root=root,
        intermediate=intermediate,
        server=certs.issue_server_cert(intermediate, ["localhost"]),
        alice=certs.issue_client_cert(root, "alice", organization="Test"),
        bob=certs.issue_client_cert(root, "bob", organization="Test"),
        other_ca=other_ca,
        stranger=certs.issue_client_cert(other_ca, "alice", organization="Test"),
        root_file=root_file,
    )


@pytest.fixture
def datadir(tmp_path: Path, pki: PKI) -> Path:
    """server.crt (chain), server.key (0600) and root.crt, like a data directory."""
    certs.write_pem(str(tmp_path / "server.crt"), pki.server.cert, pki.intermediate.cert)
    certs.write_key(str(tmp_path / "server.key"), pki.server.key)
    certs.write_pem(str(tmp_path / "root.crt"), pki.root.cert)
    return tmp_path


def settings_for(directory: Path, **changes: object) -> Settings:
    """The default settings with the data directory's files, then ``changes``."""
    base = Settings(
        data_directory=str(directory),
        ssl=True,
        ssl_cert_file=str(directory / "server.crt"),
        ssl_key_file=str(directory / "server.key"),
        ssl_ca_file=str(directory / "root.crt"),
        ssl_crl_file=str(directory / "root.crl"),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def write_traditional_key(path: Path, key: ec.EllipticCurvePrivateKey, passphrase: bytes) -> None:
    """An ``openssl``-style key: BEGIN EC PRIVATE KEY with Proc-Type/DEK-Info headers."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(passphrase),
    )
    assert b"Proc-Type: 4,ENCRYPTED" in pem
    path.write_bytes(pem)
    path.chmod(0o600)


def write_encrypted_key(path: Path, pki: PKI, passphrase: bytes, style: str) -> None:
    path.unlink(missing_ok=True)
    if style == "pkcs8":
        certs.write_key(str(path), pki.server.key, passphrase=passphrase)
        assert b"BEGIN ENCRYPTED PRIVATE KEY" in path.read_bytes()
    else:
        assert isinstance(pki.server.key, ec.EllipticCurvePrivateKey)
        write_traditional_key(path, pki.server.key, passphrase)


# -- in-memory handshakes ------------------------------------------------------


def client_context(
    pki: PKI,
    *,
    cert: certs.Issued | None = None,
    alpn: list[bytes] | None = None,
    max_version: int = 0,
    curve: ec.EllipticCurve | None = None,
) -> SSL.Context:
    """A client that verifies the server against the test root, like sslmode=verify-ca."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(pki.root_file)
    ctx.set_verify(SSL.VERIFY_PEER)
    if cert is not None:
        ctx.use_certificate(cert.cert)
        ctx.use_privatekey(cert.key)
    if alpn is not None:
        ctx.set_alpn_protos(alpn)
    if max_version:
        ctx.set_max_proto_version(max_version)
    if curve is not None:
        ctx.set_tmp_ecdh(curve)
    return ctx


@dataclass
class Handshake:
    server: SSL.Connection
    client: SSL.Connection
    server_error: SSL.Error | None = None
    client_error: SSL.Error | None = None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None


def reason(error: SSL.Error | None) -> str:
    assert error is not None
    return " / ".join(entry[2] for entry in error.args[0])


def _pump(source: SSL.Connection, sink: SSL.Connection) -> bool:
    moved = False
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return moved
        sink.bio_write(data)
        moved = True


def handshake(tls: ServerTLS, client_ctx: SSL.Context) -> Handshake:
    """Run a TLS handshake between two memory-BIO connections; record each side's error."""
    result = Handshake(tls.serverConnectionForTLS(None), SSL.Connection(client_ctx, None))  # type: ignore[arg-type]
    result.server.set_accept_state()
    result.client.set_connect_state()
    done = {"server": False, "client": False}
    for _ in range(10):
        for side in ("client", "server"):
            if done[side] or getattr(result, f"{side}_error") is not None:
                continue
            try:
                getattr(result, side).do_handshake()
                done[side] = True
            except SSL.WantReadError:
                pass
            except SSL.Error as error:
                setattr(result, f"{side}_error", error)
        if not (_pump(result.client, result.server) | _pump(result.server, result.client)):
            break
    if done["client"] and result.server_error is not None:
        # TLS 1.3: the client is done before the server judges its
        # certificate; the server's alert shows on the client's next read.
        try:
            result.client.recv(1)
        except SSL.WantReadError:
            pass
        except SSL.Error as error:
            result.client_error = error
    return result


# -- the good path ------------------------------------------------------------


def test_good_chain_completes_a_handshake(datadir: Path, pki: PKI) -> None:
    """The chain file's intermediate is sent: a client trusting only the root verifies it."""
    tls = load_server_tls(settings_for(datadir))
    result = handshake(tls, client_context(pki))
    assert result.ok, (result.server_error, result.client_error)
    info = describe_connection(result.server)
    assert info.protocol == "TLSv1.3"
    assert info.cipher == result.client.get_cipher_name()
    assert info.bits in (128, 256)
    assert info.alpn is None
    assert info.client_cert is None
    sent = result.client.get_peer_cert_chain(as_cryptography=True)
    assert sent is not None
    assert [c.subject for c in sent] == [pki.server.cert.subject, pki.intermediate.cert.subject]


def test_server_tls_is_a_twisted_connection_creator(datadir: Path) -> None:
    """ServerTLS can be handed to transport.startTLS as a connection creator."""
    tls = load_server_tls(settings_for(datadir))
    assert IOpenSSLServerConnectionCreator.providedBy(tls)
    assert isinstance(tls.serverConnectionForTLS(None), SSL.Connection)  # type: ignore[arg-type]


# Reading what a context or connection was given, on every pyOpenSSL in
# setup.cfg's range (the oldest lack some of the calls).


def context_mode(context: SSL.Context) -> int:
    """The context's mode (set_mode(0) returns it)."""
    with warnings.catch_warnings():
        # pyOpenSSL 25.1 to 25.3 warn at any set_ call once set_cipher_list
        # made its trial connection; reading this way changes nothing.
        warnings.simplefilter("ignore", DeprecationWarning)
        return int(context.set_mode(0))


def connection_options(conn: SSL.Connection) -> int:
    """The connection's options; before pyOpenSSL 26 its context's, which it starts with."""
    if hasattr(conn, "set_options"):
        return int(conn.set_options(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return int(conn.get_context().set_options(0))


def group_name(conn: SSL.Connection) -> str | None:
    """The key-exchange group; None where pyOpenSSL cannot tell (before 26)."""
    get = getattr(conn, "get_group_name", None)
    return None if get is None else str(get())


def client_ca_names(conn: SSL.Connection) -> list[bytes]:
    """The CA names of the server's CertificateRequest, DER-encoded."""
    try:
        names = conn.get_client_ca_list(as_cryptography=True)
    except TypeError:  # pyOpenSSL before 25.? returns its own X509Name only
        return [name.der() for name in conn.get_client_ca_list()]
    return [name.public_bytes() for name in names]


def test_session_compression_and_renegotiation_are_off(datadir: Path) -> None:
    """No compression, tickets, session cache or renegotiation; buffers released when idle."""
    tls = load_server_tls(settings_for(datadir))
    mode = context_mode(tls.context)
    options = connection_options(tls.serverConnectionForTLS(None))  # type: ignore[arg-type]
    for flag in (
        SSL.OP_NO_COMPRESSION,
        SSL.OP_NO_TICKET,
        SSL.OP_NO_RENEGOTIATION,
        SSL.OP_CIPHER_SERVER_PREFERENCE,
    ):
        assert options & flag, flag
    assert tls.context.get_session_cache_mode() == SSL.SESS_CACHE_OFF
    assert mode & SSL.MODE_RELEASE_BUFFERS


def test_server_cipher_preference_follows_the_setting(datadir: Path) -> None:
    """ssl_prefer_server_ciphers = off leaves the client's cipher order in charge."""
    tls = load_server_tls(settings_for(datadir, ssl_prefer_server_ciphers=False))
    options = connection_options(tls.serverConnectionForTLS(None))  # type: ignore[arg-type]
    assert not options & SSL.OP_CIPHER_SERVER_PREFERENCE


def test_cipher_list_applies_to_tls12(datadir: Path, pki: PKI) -> None:
    """ssl_ciphers decides the TLS 1.2 cipher."""
    tls = load_server_tls(
        settings_for(
            datadir,
            ssl_ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
            ssl_max_protocol_version="TLSv1.2",
        )
    )
    result = handshake(tls, client_context(pki))
    assert result.ok
    info = describe_connection(result.server)
    assert (info.protocol, info.cipher, info.bits) == (
        "TLSv1.2",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        128,
    )


def test_describe_before_handshake_is_an_error(datadir: Path) -> None:
    """A connection without a completed handshake cannot be described."""
    tls = load_server_tls(settings_for(datadir))
    with pytest.raises(ValueError, match="handshake"):
        describe_connection(tls.serverConnectionForTLS(None))  # type: ignore[arg-type]


# -- protocol versions and curves -----------------------------------------------


def test_max_protocol_version_is_enforced(datadir: Path, pki: PKI) -> None:
    """ssl_max_protocol_version = TLSv1.2 caps a TLS 1.3 client at 1.2."""
    tls = load_server_tls(settings_for(datadir, ssl_max_protocol_version="TLSv1.2"))
    result = handshake(tls, client_context(pki))
    assert result.ok
    assert describe_connection(result.server).protocol == "TLSv1.2"


def test_min_protocol_version_is_enforced(datadir: Path, pki: PKI) -> None:
    """ssl_min_protocol_version = TLSv1.3 refuses a TLS 1.2 client: unsupported protocol."""
    tls = load_server_tls(settings_for(datadir, ssl_min_protocol_version="TLSv1.3"))
    result = handshake(tls, client_context(pki, max_version=SSL.TLS1_2_VERSION))
    assert "unsupported protocol" in reason(result.server_error)
    assert result.client_error is not None


def test_protocol_range_min_above_max_is_refused(datadir: Path) -> None:
    """min > max is PostgreSQL's range error, with its DETAIL on the same line."""
    settings = settings_for(
        datadir, ssl_min_protocol_version="TLSv1.3", ssl_max_protocol_version="TLSv1.2"
    )
    with pytest.raises(TLSConfigError) as caught:
        load_server_tls(settings)
    assert str(caught.value) == (
        "could not set SSL protocol version range: "
        '"ssl_min_protocol_version" cannot be higher than "ssl_max_protocol_version"'
    )
    assert caught.value.message == "could not set SSL protocol version range"


def test_unknown_protocol_version_is_refused(datadir: Path) -> None:
    """A version name OpenSSL has no number for is reported as unsupported."""
    with pytest.raises(TLSConfigError) as caught:
        load_server_tls(settings_for(datadir, ssl_min_protocol_version="TLSv9"))
    assert str(caught.value) == (
        '"ssl_min_protocol_version" setting "TLSv9" not supported by this build'
    )


def test_ecdh_curve_restricts_key_exchange(datadir: Path, pki: PKI) -> None:
    """Only the ssl_ecdh_curve group is used; a client without it fails (no suitable key share)."""
    tls = load_server_tls(settings_for(datadir, ssl_ecdh_curve="secp384r1"))
    result = handshake(tls, client_context(pki))
    assert result.ok
    assert group_name(result.server) in ("secp384r1", None)
    tls = load_server_tls(settings_for(datadir, ssl_ecdh_curve="secp384r1"))
    result = handshake(tls, client_context(pki, curve=ec.SECP256R1()))
    assert "no suitable key share" in reason(result.server_error)


def test_default_curve_is_prime256v1(datadir: Path, pki: PKI) -> None:
    """The default ssl_ecdh_curve, prime256v1, is P-256 whatever the client prefers."""
    result = handshake(load_server_tls(settings_for(datadir)), client_context(pki))
    assert result.ok
    assert group_name(result.server) in ("prime256v1", "secp256r1", None)


def test_unknown_curve_is_refused(datadir: Path) -> None:
    """An unknown curve name is PostgreSQL's ECDH error."""
    with pytest.raises(TLSConfigError) as caught:
        load_server_tls(settings_for(datadir, ssl_ecdh_curve="nosuchcurve"))
    assert str(caught.value) == "ECDH: unrecognized curve name: nosuchcurve"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ssl_ecdh_curve = 'nosuchcurve'", "ECDH: unrecognized curve name: nosuchcurve"),
        (
            "ssl_ciphers = 'NOPE'",
            "could not set the cipher list (no valid ciphers available)",
        ),
        (
            "ssl_min_protocol_version = 'TLSv1.3'\nssl_max_protocol_version = 'TLSv1.2'",
            "could not set SSL protocol version range: "
            '"ssl_min_protocol_version" cannot be higher than "ssl_max_protocol_version"',
        ),
    ],
)
def test_bad_tls_setting_names_its_line(datadir: Path, line: str, message: str) -> None:
    """A TLS setting OpenSSL refuses: PostgreSQL's words after the file and line that set it."""
    conf_file = datadir / "postgresql.conf"
    conf_file.write_text(f"ssl = on\n{line}\n")
    with pytest.raises(TLSConfigError) as caught:
        load_server_tls(load_settings(str(datadir)))
    assert str(caught.value) == f"{conf_file}:2: {message}"


def test_no_valid_cipher_is_refused(datadir: Path) -> None:
    """A cipher list that selects nothing is PostgreSQL's cipher error."""
    with pytest.raises(TLSConfigError) as caught:
        load_server_tls(settings_for(datadir, ssl_ciphers="NO-SUCH-CIPHER"))
    assert str(caught.value) == "could not set the cipher list (no valid ciphers available)"


# -- ALPN ---------------------------------------------------------------------------


def test_alpn_postgresql_is_selected(datadir: Path, pki: PKI) -> None:
    """A client offering postgresql among others gets postgresql."""
    tls = load_server_tls(settings_for(datadir))
    result = handshake(tls, client_context(pki, alpn=[b"http/1.1", ALPN_PROTOCOL]))
    assert result.ok
    assert describe_connection(result.server).alpn == b"postgresql"
    assert result.client.get_alpn_proto_negotiated() == b"postgresql"


def test_alpn_without_postgresql_aborts_the_handshake(datadir: Path, pki: PKI) -> None:
    """ALPN offered without postgresql: the client gets the no_application_protocol alert."""
    tls = load_server_tls(settings_for(datadir))
    result = handshake(tls, client_context(pki, alpn=[b"http/1.1", b"h2"]))
    assert isinstance(result.server_error, NoApplicationProtocol)
    assert result.server_error.offered == [b"http/1.1", b"h2"]
    assert reason(result.server_error) == "no application protocol"
    assert "no application protocol" in reason(result.client_error)


# -- client certificates ---------------------------------------------------------


def test_ca_file_requests_certificates_naming_the_ca(datadir: Path, pki: PKI) -> None:
    """With root.crt the CertificateRequest lists its CA; no certificate still completes."""
    tls = load_server_tls(settings_for(datadir))
    assert tls.verify_clients
    assert tls.require_client_cert
    assert tls.context.get_verify_mode() == SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
    result = handshake(tls, client_context(pki))
    assert result.ok
    assert client_ca_names(result.client) == [pki.root.cert.subject.public_bytes()]
    assert describe_connection(result.server).client_cert is None


def test_optional_clientcert_does_not_require_a_certificate(datadir: Path) -> None:
    """pgtls.clientcert = optional: certificates verified, but not required."""
    tls = load_server_tls(settings_for(datadir, clientcert="optional"))
    assert tls.verify_clients
    assert not tls.require_client_cert


def test_without_ca_file_no_certificate_is_requested(datadir: Path, pki: PKI) -> None:
    """Default root.crt absent: no CertificateRequest, so a client's certificate is never sent."""
    (datadir / "root.crt").unlink()
    tls = load_server_tls(settings_for(datadir))
    assert not tls.verify_clients
    assert not tls.require_client_cert
    result = handshake(tls, client_context(pki, cert=pki.alice))
    assert result.ok
    assert result.server.get_peer_certificate() is None
    assert describe_connection(result.server).client_cert is None


def test_empty_ca_file_setting_loads_no_ca(datadir: Path) -> None:
    """ssl_ca_file = '' means no CA, even though root.crt exists."""
    tls = load_server_tls(
        settings_for(datadir, ssl_ca_file="", explicit=frozenset({"ssl_ca_file"}))
    )
    assert not tls.verify_clients


def test_good_client_certificate_is_verified_and_described(datadir: Path, pki: PKI) -> None:
    """Subject O=Test, CN=alice gives cn 'alice' and PostgreSQL's DN 'CN=alice,O=Test'."""
    tls = load_server_tls(settings_for(datadir))
    result = handshake(tls, client_context(pki, cert=pki.alice))
    assert result.ok
    info = describe_connection(result.server)
    assert info.client_cert == ClientCert(cn="alice", dn="CN=alice,O=Test")


def test_certificate_from_another_ca_fails_the_handshake(datadir: Path, pki: PKI) -> None:
    """An untrusted client certificate aborts the handshake (client sees unknown ca)."""
    tls = load_server_tls(settings_for(datadir))
    result = handshake(tls, client_context(pki, cert=pki.stranger))
    assert "certificate verify failed" in reason(result.server_error)
    assert "unknown ca" in reason(result.client_error)


def test_revoked_certificate_fails_with_crl(datadir: Path, pki: PKI) -> None:
    """root.crl revoking alice's certificate fails her handshake; bob's still passes."""
    certs.write_pem(str(datadir / "root.crl"), certs.make_crl(pki.root, [pki.alice.cert]))
    tls = load_server_tls(settings_for(datadir))
    result = handshake(tls, client_context(pki, cert=pki.alice))
    assert "certificate verify failed" in reason(result.server_error)
    assert "revoked" in reason(result.client_error)
    tls = load_server_tls(settings_for(datadir))
    result = handshake(tls, client_context(pki, cert=pki.bob))
    assert result.ok
    assert describe_connection(result.server).client_cert == ClientCert("bob", "CN=bob,O=Test")


def test_crl_is_not_consulted_without_a_ca(datadir: Path) -> None:
    """Without root.crt, root.crl is not read at all (PostgreSQL 8.2's rule)."""
    (datadir / "root.crt").unlink()
    (datadir / "root.crl").write_text("not a CRL\n")
    assert not load_server_tls(settings_for(datadir)).verify_clients


def test_common_name_with_nul_is_not_a_usable_certificate(datadir: Path, pki: PKI) -> None:
    """A CN with an embedded NUL, which PostgreSQL refuses, is reported as no certificate."""
    evil = issue(pki.root, name((NameOID.COMMON_NAME, "alice\0.evil")))
    tls = load_server_tls(settings_for(datadir))
    result = handshake(tls, client_context(pki, cert=evil))
    assert result.ok
    assert result.server.get_peer_certificate() is not None
    assert describe_connection(result.server).client_cert is None


def test_certificate_without_cn_has_dn_only(datadir: Path, pki: PKI) -> None:
    """No Common Name: cn is None, the DN is still given."""
    nameless = issue(pki.root, name((NameOID.ORGANIZATION_NAME, "Test")))
    tls = load_server_tls(settings_for(datadir))
    result = handshake(tls, client_context(pki, cert=nameless))
    assert describe_connection(result.server).client_cert == ClientCert(None, "O=Test")


# -- file errors ---------------------------------------------------------------------


def config_error(settings: Settings, **kwargs: object) -> str:
    with pytest.raises(TLSConfigError) as caught:
        load_server_tls(settings, **kwargs)  # type: ignore[arg-type]
    text = str(caught.value)
    assert "\n" not in text
    return text


def test_missing_certificate(datadir: Path) -> None:
    """A missing certificate file names the file and the system's reason."""
    path = datadir / "server.crt"
    path.unlink()
    assert config_error(settings_for(datadir)) == (
        f'could not load server certificate file "{path.name}": No such file or directory'
    )


def test_garbage_certificate(datadir: Path) -> None:
    """A file without a PEM certificate gives OpenSSL's reason, no start line."""
    path = datadir / "server.crt"
    path.write_text("hello\n")
    assert config_error(settings_for(datadir)) == (
        f'could not load server certificate file "{path.name}": no start line'
    )


def test_missing_key(datadir: Path) -> None:
    """The key file is stat'ed first: PostgreSQL's "could not access" message."""
    path = datadir / "server.key"
    path.unlink()
    assert config_error(settings_for(datadir)) == (
        f'could not access private key file "{path.name}": No such file or directory'
    )


def test_key_that_is_not_a_regular_file(datadir: Path) -> None:
    """A directory where the key should be is refused before reading."""
    path = datadir / "keydir"
    path.mkdir(mode=0o700)
    assert config_error(settings_for(datadir, ssl_key_file=str(path))) == (
        f'private key file "{path}" is not a regular file'
    )


def test_garbage_key(datadir: Path) -> None:
    """A file with no PEM private key in it says so."""
    path = datadir / "server.key"
    path.write_text("hello\n")
    assert config_error(settings_for(datadir)) == (
        f'could not load private key file "{path.name}": no PEM private key found'
    )


def test_corrupt_key(datadir: Path) -> None:
    """A damaged PEM key gives OpenSSL's short reason, not a Python repr."""
    path = datadir / "server.key"
    path.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert config_error(settings_for(datadir)) == (
        f'could not load private key file "{path.name}": unsupported'
    )


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_mismatched_key(datadir: Path, pki: PKI, key_type: str) -> None:
    """A key that is not the certificate's (same or other type) fails PostgreSQL's key check."""
    path = datadir / "server.key"
    path.unlink()
    other = certs.issue_server_cert(pki.root, ["localhost"], key_type=key_type)
    certs.write_key(str(path), other.key)
    assert config_error(settings_for(datadir)) == (
        "check of private key failed: key values mismatch: "
        'private key file "server.key" is not the key of the server certificate'
    )


def test_explicit_missing_ca_file(datadir: Path) -> None:
    """A CA file named in the configuration must exist."""
    path = datadir / "ca.pem"
    settings = settings_for(datadir, ssl_ca_file=str(path), explicit=frozenset({"ssl_ca_file"}))
    assert config_error(settings) == (
        f'could not load root certificate file "{path}": No such file or directory'
    )


def test_garbage_ca_file(datadir: Path) -> None:
    """A root.crt with no certificate in it is an error, not "no CA"."""
    path = datadir / "root.crt"
    path.write_text("hello\n")
    assert config_error(settings_for(datadir)) == (
        f'could not load root certificate file "{path.name}": no certificate or crl found'
    )


def test_explicit_missing_crl_file(datadir: Path) -> None:
    """A CRL file named in the configuration must exist."""
    path = datadir / "revoked.crl"
    settings = settings_for(datadir, ssl_crl_file=str(path), explicit=frozenset({"ssl_crl_file"}))
    assert config_error(settings) == (
        f'could not load SSL certificate revocation list file "{path}": No such file or directory'
    )


def test_garbage_crl_file(datadir: Path) -> None:
    """A root.crl with no CRL in it is an error."""
    path = datadir / "root.crl"
    path.write_text("hello\n")
    assert config_error(settings_for(datadir)) == (
        f'could not load SSL certificate revocation list file "{path.name}": '
        "no certificate or crl found"
    )


# -- key file permissions ---------------------------------------------------------------


def test_key_0600_owned_by_server_user_loads(datadir: Path) -> None:
    """The usual key, 0600 and ours, is accepted."""
    assert (datadir / "server.key").stat().st_mode & 0o777 == 0o600
    load_server_tls(settings_for(datadir))


def test_group_readable_key_owned_by_server_user_is_refused(datadir: Path) -> None:
    """Owned by the server's (non-root) user, 0640 is too open."""
    path = datadir / "server.key"
    path.chmod(0o640)
    euid = os.geteuid()
    if ROOT:
        os.chown(path, OTHER_UID, -1)
        euid = OTHER_UID
    with pytest.raises(TLSConfigError) as caught:
        check_key_file_permissions(str(path), euid=euid)
    assert str(caught.value) == (
        f'private key file "{path}" has group or world access: {KEY_MODE_DETAIL}'
    )
    assert caught.value.detail == KEY_MODE_DETAIL


def test_world_readable_key_is_refused(datadir: Path) -> None:
    """0644 is refused whoever owns the key, root included."""
    path = datadir / "server.key"
    path.chmod(0o644)
    assert config_error(settings_for(datadir)) == (
        f'private key file "{path.name}" has group or world access: {KEY_MODE_DETAIL}'
    )


@needs_root
def test_root_owned_key_may_be_group_readable(datadir: Path) -> None:
    """A root-owned key may be 0640 (read through root's group) but not group-writable."""
    path = datadir / "server.key"
    path.chmod(0o640)
    load_server_tls(settings_for(datadir))
    check_key_file_permissions(str(path), euid=OTHER_UID)
    path.chmod(0o660)
    with pytest.raises(TLSConfigError, match="has group or world access"):
        check_key_file_permissions(str(path), euid=OTHER_UID)


@needs_root
def test_key_owned_by_someone_else_is_refused(datadir: Path) -> None:
    """A key owned by neither the server's user nor root is refused."""
    path = datadir / "server.key"
    os.chown(path, OTHER_UID, -1)
    assert config_error(settings_for(datadir)) == (
        f'private key file "{path.name}" must be owned by the database user or root'
    )


# -- passphrases ------------------------------------------------------------------------

KEY_STYLES = ["pkcs8", "traditional"]


@pytest.mark.parametrize("style", KEY_STYLES)
def test_passphrase_command_decrypts_the_key(datadir: Path, pki: PKI, style: str) -> None:
    """ssl_passphrase_command's output decrypts PKCS#8 and traditional encrypted keys."""
    write_encrypted_key(datadir / "server.key", pki, b"secret", style)
    tls = load_server_tls(settings_for(datadir, ssl_passphrase_command="echo secret"))
    assert handshake(tls, client_context(pki)).ok


def test_passphrase_command_gets_the_prompt_for_percent_p(datadir: Path, pki: PKI) -> None:
    """%p in the command is replaced by the prompt."""
    write_encrypted_key(datadir / "server.key", pki, b"secret", "pkcs8")
    command = f'test "%p" = "{PASSPHRASE_PROMPT}" && echo secret'
    load_server_tls(settings_for(datadir, ssl_passphrase_command=command))


def test_passphrase_command_percent_escapes(datadir: Path, pki: PKI) -> None:
    """%% becomes %, and any other %x is kept as written."""
    write_encrypted_key(datadir / "server.key", pki, b"a%b%x", "pkcs8")
    load_server_tls(settings_for(datadir, ssl_passphrase_command="echo 'a%%b%x'"))


def test_passphrase_command_first_line_without_crlf(datadir: Path, pki: PKI) -> None:
    """Only the first line counts, without its trailing CR/LF."""
    write_encrypted_key(datadir / "server.key", pki, b"secret", "traditional")
    command = r"printf 'secret\r\nsecond line\n'"
    load_server_tls(settings_for(datadir, ssl_passphrase_command=command))


@pytest.mark.parametrize(
    ("command", "detail"),
    [
        ("exit 3", "child process exited with exit code 3"),
        ("/nonexistent/pgtls-passphrase", "command not found"),
        ("kill -TERM $$", "child process was terminated by signal 15: Terminated"),
    ],
)
def test_failing_passphrase_command(datadir: Path, pki: PKI, command: str, detail: str) -> None:
    """
    A failing command is PostgreSQL's "command failed" with the wait status,
    after the key file's name.
    """
    write_encrypted_key(datadir / "server.key", pki, b"secret", "pkcs8")
    assert config_error(settings_for(datadir, ssl_passphrase_command=command)) == (
        f'could not load private key file "server.key": command "{command}" failed: {detail}'
    )


def test_wrong_passphrase_from_command(datadir: Path, pki: PKI) -> None:
    """A wrong passphrase is OpenSSL's bad decrypt, and the command is not rerun."""
    write_encrypted_key(datadir / "server.key", pki, b"secret", "pkcs8")
    path = datadir / "server.key"
    count = datadir / "runs"
    command = f"echo run >> {count}; echo wrong"
    assert config_error(settings_for(datadir, ssl_passphrase_command=command)) == (
        f'could not load private key file "{path.name}": bad decrypt'
    )
    assert count.read_text() == "run\n"


def test_passphrase_command_timeout(datadir: Path, pki: PKI) -> None:
    """A command that does not answer in time is killed and reported."""
    write_encrypted_key(datadir / "server.key", pki, b"secret", "pkcs8")
    started = time.monotonic()
    text = config_error(
        settings_for(datadir, ssl_passphrase_command="sleep 5"), command_timeout=0.2
    )
    assert text == (
        'could not load private key file "server.key": '
        'command "sleep 5" failed: no pass phrase within 0.2 seconds'
    )
    assert time.monotonic() - started < 4


def recording(*answers: str) -> tuple[list[str], Callable[[str], str]]:
    prompts: list[str] = []
    replies = iter(answers)

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return next(replies)

    return prompts, ask


def test_plain_key_runs_no_command_and_asks_nothing(datadir: Path) -> None:
    """An unencrypted key never runs ssl_passphrase_command or asks for a passphrase."""
    marker = datadir / "ran"
    prompts, ask = recording()
    load_server_tls(
        settings_for(datadir, ssl_passphrase_command=f"touch {marker}; exit 1"),
        ask_passphrase=ask,
    )
    assert not marker.exists()
    assert prompts == []


@pytest.mark.parametrize("style", KEY_STYLES)
def test_callback_asked_again_after_a_wrong_passphrase(datadir: Path, pki: PKI, style: str) -> None:
    """ask_passphrase gets the prompt; a wrong answer is asked again."""
    write_encrypted_key(datadir / "server.key", pki, "sécret".encode(), style)
    prompts, ask = recording("wrong", "sécret")
    tls = load_server_tls(settings_for(datadir), ask_passphrase=ask)
    assert prompts == [PASSPHRASE_PROMPT, PASSPHRASE_PROMPT]
    assert handshake(tls, client_context(pki)).ok


def test_callback_gives_up_after_max_attempts(datadir: Path, pki: PKI) -> None:
    """After max_attempts wrong answers the key error is reported."""
    write_encrypted_key(datadir / "server.key", pki, b"secret", "traditional")
    prompts, ask = recording("a", "b", "c", "secret")
    path = datadir / "server.key"
    assert config_error(settings_for(datadir), ask_passphrase=ask, max_attempts=3) == (
        f'could not load private key file "{path.name}": bad decrypt'
    )
    assert len(prompts) == 3


def test_encrypted_key_without_a_way_to_ask(datadir: Path, pki: PKI) -> None:
    """No command and no callback: refuse, saying how to supply the passphrase."""
    write_encrypted_key(datadir / "server.key", pki, b"secret", "pkcs8")
    path = datadir / "server.key"
    assert config_error(settings_for(datadir)) == (
        f'could not load private key file "{path.name}": it requires a pass phrase: run pgtls '
        "in the foreground on a terminal to type it, or set ssl_passphrase_command"
    )


def test_encrypted_key_and_no_terminal_names_the_key(datadir: Path, pki: PKI) -> None:
    """
    The terminal cannot be asked: the line names the key file as ssl_key_file
    gives it, as PostgreSQL's ``could not load private key file "server.key"``.
    """
    write_encrypted_key(datadir / "server.key", pki, b"secret", "pkcs8")

    def no_terminal(prompt: str) -> str:
        raise TLSConfigError("no terminal to ask for its pass phrase (No such device)", "hint")

    assert config_error(settings_for(datadir), ask_passphrase=no_terminal) == (
        'could not load private key file "server.key": no terminal to ask for its pass phrase '
        "(No such device): hint"
    )
    key = datadir / "keys" / "db.key"
    key.parent.mkdir()
    (datadir / "server.key").rename(key)
    settings = settings_for(
        datadir, ssl_key_file=str(key), raw_values=(("ssl_key_file", "keys/db.key"),)
    )
    assert config_error(settings, ask_passphrase=no_terminal).startswith(
        'could not load private key file "keys/db.key": no terminal'
    )


# -- through Twisted's TLS layer ----------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class ClientCreator:
    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self.context, None)


@implementer(IHandshakeListener)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.handshake_done = False
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


def twisted_pair(
    tls: ServerTLS, client_ctx: SSL.Context
) -> tuple[TLSMemoryBIOProtocol, Recorder, Recorder]:
    server_app, client_app = Recorder(), Recorder()
    server_factory = TLSMemoryBIOFactory(tls, False, Factory.forProtocol(lambda: server_app))
    client_factory = TLSMemoryBIOFactory(
        ClientCreator(client_ctx), True, Factory.forProtocol(lambda: client_app)
    )
    server_proto = server_factory.buildProtocol(None)
    client_proto = client_factory.buildProtocol(None)
    _, _, pump = iosim.connectedServerAndClient(lambda: server_proto, lambda: client_proto)
    pump.flush()
    return server_proto, server_app, client_app


def test_twisted_tls_layer_uses_server_tls(datadir: Path, pki: PKI) -> None:
    """TLSMemoryBIOFactory takes ServerTLS; the handshake agrees on postgresql."""
    tls = load_server_tls(settings_for(datadir))
    server_proto, server_app, client_app = twisted_pair(
        tls, client_context(pki, cert=pki.alice, alpn=[ALPN_PROTOCOL])
    )
    assert server_app.handshake_done and client_app.handshake_done
    info = describe_connection(server_proto.getHandle())
    assert info.alpn == b"postgresql"
    assert info.client_cert == ClientCert("alice", "CN=alice,O=Test")


def test_twisted_tls_layer_reports_the_alpn_abort(datadir: Path, pki: PKI) -> None:
    """Through Twisted, the ALPN abort reaches both sides as a handshake failure."""
    tls = load_server_tls(settings_for(datadir))
    _, server_app, client_app = twisted_pair(tls, client_context(pki, alpn=[b"http/1.1"]))
    assert not server_app.handshake_done
    assert server_app.lost is not None
    assert isinstance(server_app.lost.value, NoApplicationProtocol)
    assert client_app.lost is not None
    assert isinstance(client_app.lost.value, SSL.Error)
    assert "no application protocol" in reason(client_app.lost.value)
