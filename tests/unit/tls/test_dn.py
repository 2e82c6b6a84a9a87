"""
Tests for pgtls.tls.dn: distinguished names printed as OpenSSL prints them.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from pgtls.tls.dn import rfc2253_name


def name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (
            name((NameOID.ORGANIZATION_NAME, "Test"), (NameOID.COMMON_NAME, "alice")),
            "CN=alice,O=Test",
        ),
        (
            name(
                (NameOID.COUNTRY_NAME, "DE"),
                (NameOID.ORGANIZATION_NAME, 'Acme, Inc.+<x>;"q"\\'),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "#lead"),
                (NameOID.COMMON_NAME, " Jöhn€ "),
                (NameOID.EMAIL_ADDRESS, "j@example.com"),
            ),
            "emailAddress=j@example.com,CN=\\ J\\C3\\B6hn\\E2\\82\\AC\\ ,OU=\\#lead,"
            'O=Acme\\, Inc.\\+\\<x\\>\\;\\"q\\"\\\\,C=DE',
        ),
        (
            x509.Name(
                [
                    x509.RelativeDistinguishedName(
                        [
                            x509.NameAttribute(NameOID.COMMON_NAME, "bob"),
                            x509.NameAttribute(NameOID.USER_ID, "u1"),
                        ]
                    ),
                    x509.RelativeDistinguishedName(
                        [x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example")]
                    ),
                ]
            ),
            "DC=example,UID=u1+CN=bob",
        ),
        (
            name(
                (NameOID.STREET_ADDRESS, "Main St"),
                (NameOID.SERIAL_NUMBER, "42"),
                (NameOID.GIVEN_NAME, "J"),
                (NameOID.COMMON_NAME, "tab\there"),
            ),
            "CN=tab\\09here,GN=J,serialNumber=42,street=Main St",
        ),
    ],
)
def test_dn_is_printed_as_openssl_rfc2253(subject: x509.Name, expected: str) -> None:
    """
    DNs read as `openssl x509 -nameopt RFC2253` prints them (the expected
    strings come from that command): last RDN first, OpenSSL short names,
    RFC 2253 escapes, control and non-ASCII bytes as \\XX.
    """
    assert rfc2253_name(subject) == expected
