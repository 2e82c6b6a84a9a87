"""
Certificates for pgtls: a local CA, server and client certificates, CRLs.

Used by ``pgtls init`` / ``pgtls client-cert`` and by the tests.  Keys are
ECDSA P-256 unless asked otherwise; files are written with
:func:`write_key` (mode 0600, never over an existing file) and
:func:`write_pem`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "Issued",
    "issue_client_cert",
    "issue_server_cert",
    "make_ca",
    "make_crl",
    "write_key",
    "write_pem",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_ONE_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Issued:
    """A private key and the certificate issued for it."""

    key: PrivateKey
    cert: x509.Certificate


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r} (use 'ec' or 'rsa')")


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: PrivateKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + days * _ONE_DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def make_ca(
    common_name: str = "pgtls local CA", *, key_type: str = "ec", days: int = 3650
) -> Issued:
    """Make a self-signed CA certificate and its key."""
    key = _new_key(key_type)
    name = _name(common_name)
    cert = (
        _builder(name, name, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def _leaf(
    ca: Issued,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    sans: Sequence[x509.GeneralName],
    key_type: str,
    days: int,
) -> Issued:
    key = _new_key(key_type)
    builder = (
        _builder(subject, ca.cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_server_cert(
    ca: Issued, names: Sequence[str], *, key_type: str = "ec", days: int = 825
) -> Issued:
    """
    Issue a server certificate whose SANs are ``names`` (host names and IP
    addresses); its Common Name is the first name.
    """
    if not names:
        raise ValueError("a server certificate needs at least one name")
    sans = [_general_name(n) for n in names]
    return _leaf(ca, _name(names[0]), ExtendedKeyUsageOID.SERVER_AUTH, sans, key_type, days)


def issue_client_cert(
    ca: Issued,
    user: str,
    *,
    organization: str | None = None,
    key_type: str = "ec",
    days: int = 825,
) -> Issued:
    """Issue a client certificate with Common Name ``user``."""
    subject = _name(user, organization)
    return _leaf(ca, subject, ExtendedKeyUsageOID.CLIENT_AUTH, [], key_type, days)


def make_crl(
    ca: Issued, revoked: Iterable[x509.Certificate] = (), *, days: int = 30
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` that revokes ``revoked``."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _ONE_DAY)
        .next_update(now + days * _ONE_DAY)
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - _ONE_DAY)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PEM (PKCS#8) of ``key``, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write_key(path: str, key: PrivateKey, *, passphrase: bytes | None = None) -> None:
    """Write ``key`` to a new file of mode 0600; an existing file is an error."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem(key, passphrase))


def write_pem(
    path: str, *items: x509.Certificate | x509.CertificateRevocationList, mode: int = 0o644
) -> None:
    """Write certificates or CRLs, PEM, to a new file; an existing file is an error."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        for item in items:
            f.write(item.public_bytes(serialization.Encoding.PEM))
