"""
libpq's verify-full host name check, on a certificate already verified.

PostgreSQL 15's pq_verify_peer_name_matches_certificate (fe-secure-common.c)
and its OpenSSL part: the subjectAltName entries of type dNSName and
iPAddress are compared with the ``host`` keyword; the Common Name is used
only when no entry has the host's own type (iPAddress for an address
literal, dNSName for a name).  A dNSName may be a wildcard
(``*.example.com``: one whole leftmost label); names compare without
regard to case; an iPAddress entry matches a host that is the same
address written in any form.  service_identity follows RFC 6125 instead
(no CN fallback, no IP address written in a dNSName), so it is not used.
"""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["peer_name_mismatch"]


def peer_name_mismatch(cert: x509.Certificate, host: str) -> str | None:
    """
    Check ``cert`` against the host name as libpq's verify-full does.

    :param cert: the server's certificate.
    :param host: the ``host`` keyword (a name or an IP address literal).
    :return: None when a name matches, else libpq's message, e.g.
        ``server certificate for "db1" does not match host name "db.internal"``.
    """
    names: list[str] = []
    host_is_ip = _is_ip(host)
    check_cn = True
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    except ValueError:
        # A malformed extension: OpenSSL would not have decoded it either.
        return "could not get server's host name from server certificate"
    if sans is not None:
        for entry in sans:
            if isinstance(entry, x509.DNSName):
                check_cn = check_cn and host_is_ip
                names.append(entry.value)
                if _dns_name_matches(entry.value, host):
                    return None
            elif isinstance(entry, x509.IPAddress) and not isinstance(
                entry.value, (ipaddress.IPv4Network, ipaddress.IPv6Network)
            ):
                check_cn = check_cn and not host_is_ip
                names.append(str(entry.value))
                if _ip_matches(entry.value, host):
                    return None
    if check_cn:
        for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = attribute.value
            common_name = value if isinstance(value, str) else value.decode("utf-8", "replace")
            names.append(common_name)
            if "\0" not in common_name and _dns_name_matches(common_name, host):
                return None
            break  # libpq reads the first Common Name only
    if not names:
        return "could not get server's host name from server certificate"
    others = len(names) - 1
    if others == 0:
        return f'server certificate for "{names[0]}" does not match host name "{host}"'
    plural = "name" if others == 1 else "names"
    return (
        f'server certificate for "{names[0]}" (and {others} other {plural}) '
        f'does not match host name "{host}"'
    )


def _dns_name_matches(name: str, host: str) -> bool:
    """A name, or a ``*.`` wildcard over one leftmost label, against the host (any case)."""
    if "\0" in name:
        return False  # libpq: "SSL certificate's name contains embedded null"
    if name.lower() == host.lower():
        return True
    # libpq's wildcard_certificate_match: "*." then the rest, which must
    # equal what follows the host's first dot; the host's first label must
    # not be empty.
    if len(name) < 3 or not name.startswith("*."):
        return False
    dot = host.find(".")
    if dot <= 0:
        return False
    return host[dot:].lower() == name[1:].lower()


def _is_ip(host: str) -> bool:
    """Whether the host is an IPv4 or IPv6 address literal (libpq's inet_pton test)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ip_matches(address: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str) -> bool:
    """An iPAddress entry against the host, when the host is an address literal."""
    try:
        return ipaddress.ip_address(host) == address
    except ValueError:
        return False
