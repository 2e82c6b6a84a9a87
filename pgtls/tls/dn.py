"""
Distinguished names as OpenSSL prints them, which is how PostgreSQL logs
them and matches ``clientname=DN`` in pg_hba.conf.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["rfc2253_name"]

# OpenSSL's short names for the subject attributes cryptography would print
# as dotted OIDs (or spell differently), so DNs read as PostgreSQL logs them.
_OPENSSL_ATTRIBUTE_NAMES = {
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.STREET_ADDRESS: "street",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GN",
    NameOID.TITLE: "title",
    NameOID.INITIALS: "initials",
    NameOID.GENERATION_QUALIFIER: "generationQualifier",
    NameOID.X500_UNIQUE_IDENTIFIER: "x500UniqueIdentifier",
    NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.POSTAL_ADDRESS: "postalAddress",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
    NameOID.JURISDICTION_COUNTRY_NAME: "jurisdictionC",
    NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME: "jurisdictionST",
    NameOID.JURISDICTION_LOCALITY_NAME: "jurisdictionL",
    NameOID.UNSTRUCTURED_NAME: "unstructuredName",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    NameOID.INN: "INN",
    NameOID.OGRN: "OGRN",
    NameOID.SNILS: "SNILS",
}


def rfc2253_name(name: x509.Name) -> str:
    """
    A name as OpenSSL's ``X509_NAME_print_ex(..., XN_FLAG_RFC2253)`` prints it,
    which is what PostgreSQL matches ``clientname=DN`` against: last RDN
    first, OpenSSL's short attribute names, RFC 2253 escapes, and control
    characters and non-ASCII UTF-8 bytes as ``\\XX``.

    Attribute types neither cryptography nor the table above names are
    printed as dotted OIDs with their string value (OpenSSL would give the
    value's DER in hex).
    """
    rdns = [
        "+".join(attr.rfc4514_string(_OPENSSL_ATTRIBUTE_NAMES) for attr in reversed(list(rdn)))
        for rdn in reversed(name.rdns)
    ]
    return "".join(_escape_like_openssl(char) for char in ",".join(rdns))


def _escape_like_openssl(char: str) -> str:
    code = ord(char)
    if code < 0x20 or code == 0x7F:
        return f"\\{code:02X}"
    if code > 0x7F:
        return "".join(f"\\{byte:02X}" for byte in char.encode("utf-8"))
    return char
