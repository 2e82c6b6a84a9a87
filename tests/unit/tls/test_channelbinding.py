"""
Tests for pgtls.tls.channelbinding: the tls-server-end-point hash as PostgreSQL
computes it, and what SCRAM channel binding does through pgtls for a pair
of certificates.
"""

from __future__ import annotations

import datetime
import hashlib
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

from pgtls.tls import certs
from pgtls.tls.channelbinding import Binding, end_point_hash, report_lines, verdict

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def self_signed(
    key: SigningKey, algorithm: hashes.HashAlgorithm | None, name: str = "db.internal"
) -> x509.Certificate:
    """A self-signed certificate for ``name``, signed with ``algorithm``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    return builder.sign(key, algorithm)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        (hashes.SHA256(), hashlib.sha256),
        (hashes.SHA384(), hashlib.sha384),
        (hashes.SHA512(), hashlib.sha512),
    ],
)
def test_the_hash_follows_the_signature(
    rsa_key: rsa.RSAPrivateKey, algorithm: hashes.HashAlgorithm, expected: object
) -> None:
    """The certificate's DER, hashed with its signature's algorithm (SHA-256 for SHA-1)."""
    cert = self_signed(rsa_key, algorithm)
    assert end_point_hash(cert) == expected(der(cert)).digest()  # type: ignore[operator]


@pytest.mark.parametrize("digest", ["sha1", "md5"])
def test_md5_and_sha1_signatures_hash_with_sha256(digest: str) -> None:
    """RFC 5929 and PostgreSQL: a certificate signed with MD5 or SHA-1 hashes with SHA-256."""
    # cryptography signs with neither any more; pyOpenSSL's old API still does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        key = crypto.PKey()
        key.generate_key(crypto.TYPE_RSA, 2048)
        legacy = crypto.X509()
        legacy.get_subject().CN = "legacy"
        legacy.set_issuer(legacy.get_subject())
        legacy.set_pubkey(key)
        legacy.gmtime_adj_notBefore(0)
        legacy.gmtime_adj_notAfter(3600)
        legacy.set_serial_number(1)
        legacy.sign(key, digest)
        cert = legacy.to_cryptography()
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == digest
    assert end_point_hash(cert) == hashlib.sha256(der(cert)).digest()


def test_an_ecdsa_certificate_of_pgtls_init() -> None:
    """pgtls's own certificates (ECDSA with SHA-256) hash with SHA-256."""
    cert = certs.issue_server_cert(certs.make_ca("cb test CA"), ["localhost"]).cert
    assert end_point_hash(cert) == hashlib.sha256(der(cert)).digest()


def test_an_ed25519_certificate_has_no_hash() -> None:
    """Ed25519 signs without a separate hash: PostgreSQL computes no binding data."""
    assert end_point_hash(self_signed(ed25519.Ed25519PrivateKey.generate(), None)) is None


def test_the_same_certificate_can_bind(rsa_key: rsa.RSAPrivateKey) -> None:
    """The upstream's own certificate on pgtls: binding passes, require included."""
    cert = self_signed(rsa_key, hashes.SHA256())
    same = x509.load_der_x509_certificate(der(cert))
    result = verdict(cert, same)
    assert (result.binding, result.warning) == (Binding.SHARED, False)
    assert "can pass end to end, channel_binding=require included" in result.text


def test_a_different_certificate_warns(rsa_key: rsa.RSAPrivateKey) -> None:
    """
    Another certificate, even with the same subject and key: a warning that
    names both and what to do.
    """
    ours = self_signed(rsa_key, hashes.SHA256())
    theirs = self_signed(rsa_key, hashes.SHA256())
    result = verdict(ours, theirs)
    assert (result.binding, result.warning) == (Binding.DIFFERENT, True)
    assert ours.fingerprint(hashes.SHA256()).hex()[:16] in result.text
    assert theirs.fingerprint(hashes.SHA256()).hex()[:16] in result.text
    assert "subject CN=db.internal" in result.text
    assert result.text.endswith(
        "SCRAM clients must connect with channel_binding=disable, or pgtls must present "
        "the upstream's own certificate and key (ssl_cert_file, ssl_key_file)"
    )


def test_no_tls_upstream_leg(rsa_key: rsa.RSAPrivateKey) -> None:
    """Without TLS upstream, nothing to compare: prefer works, require fails."""
    result = verdict(self_signed(rsa_key, hashes.SHA256()), None)
    assert (result.binding, result.warning) == (Binding.NOT_OFFERED, False)
    assert "channel_binding=require fails" in result.text


def test_a_shared_ed25519_certificate_cannot_bind() -> None:
    """The same certificate, but one PostgreSQL cannot hash: binding fails anyway."""
    cert = self_signed(ed25519.Ed25519PrivateKey.generate(), None)
    result = verdict(cert, cert)
    assert (result.binding, result.warning) == (Binding.NO_HASH, True)
    assert "channel_binding=disable" in result.text


def test_report_lines(rsa_key: rsa.RSAPrivateKey) -> None:
    """pgtls check's line: a note or a warning; nothing when pgtls has no certificate."""
    ours = self_signed(rsa_key, hashes.SHA256())
    theirs = self_signed(rsa_key, hashes.SHA256(), "other")
    assert report_lines(None, theirs) == []
    (note,) = report_lines(ours, ours)
    assert note.startswith("  note: channel binding: pgtls presents the upstream's own")
    (warning,) = report_lines(ours, theirs)
    assert warning.startswith("  warning: channel binding: pgtls's certificate (subject CN=")
