"""
Tests for pgtls.tls.peername: libpq's verify-full host name rules.
"""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from pgtls.tls import certs
from pgtls.tls.peername import peer_name_mismatch

CA = certs.make_ca("peer name CA")


def cert(cn: str | None, sans: list[x509.GeneralName] | None) -> x509.Certificate:
    """A certificate with the given Common Name and subjectAltName entries."""
    key = CA.key
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(CA.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(CA.cert.not_valid_before_utc)
        .not_valid_after(CA.cert.not_valid_after_utc)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def dns(name: str) -> x509.GeneralName:
    return x509.DNSName(name)


def ip(address: str) -> x509.GeneralName:
    return x509.IPAddress(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("certificate", "host"),
    [
        (cert("ignored", [dns("db.example")]), "db.example"),
        (cert(None, [dns("DB.Example")]), "db.example"),  # case-insensitive
        (cert(None, [dns("*.example")]), "db.example"),  # wildcard, one label
        (cert(None, [dns("a"), dns("db.example")]), "db.example"),
        (cert("db.example", None), "db.example"),  # CN without SANs
        (cert("db.example", [ip("10.0.0.1")]), "db.example"),  # no dNSName: CN counts
        (cert(None, [ip("10.0.0.1")]), "10.0.0.1"),
        (cert(None, [ip("::1")]), "0:0::1"),  # the same address, any form
        (cert(None, [dns("10.0.0.1")]), "10.0.0.1"),  # an address written as a name
        (cert("10.0.0.1", [dns("db.example")]), "10.0.0.1"),  # no iPAddress: CN counts
    ],
)
def test_matches(certificate: x509.Certificate, host: str) -> None:
    """Names libpq accepts for verify-full."""
    assert peer_name_mismatch(certificate, host) is None


@pytest.mark.parametrize(
    ("certificate", "host", "message"),
    [
        (
            cert("db1", [dns("db1")]),
            "db.internal",
            'server certificate for "db1" does not match host name "db.internal"',
        ),
        (
            cert("db.example", [dns("other")]),
            "db.example",
            'server certificate for "other" does not match host name "db.example"',
        ),
        (
            cert(None, [dns("a"), dns("b")]),
            "c",
            'server certificate for "a" (and 1 other name) does not match host name "c"',
        ),
        (
            cert(None, [dns("a"), dns("b"), ip("10.0.0.1")]),
            "c",
            'server certificate for "a" (and 2 other names) does not match host name "c"',
        ),
        (
            cert(None, [dns("*.example")]),
            "a.b.example",
            'server certificate for "*.example" does not match host name "a.b.example"',
        ),
        (
            cert(None, [dns("*.example")]),
            "example",
            'server certificate for "*.example" does not match host name "example"',
        ),
        (
            cert("10.0.0.1", [ip("10.0.0.2")]),
            "10.0.0.1",
            'server certificate for "10.0.0.2" does not match host name "10.0.0.1"',
        ),
        (cert(None, None), "db", "could not get server's host name from server certificate"),
    ],
)
def test_mismatches(certificate: x509.Certificate, host: str, message: str) -> None:
    """libpq's messages: the first name, how many others, the host."""
    assert peer_name_mismatch(certificate, host) == message
