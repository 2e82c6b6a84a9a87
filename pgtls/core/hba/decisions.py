"""
What pg_hba.conf decides on (Client, ClientCert) and what it decides
(Admission, Refusal, and the identity it Authenticated).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

__all__ = [
    "Admission",
    "Authenticated",
    "Client",
    "ClientCert",
    "IPAddress",
    "Interface",
    "Refusal",
    "RefusalKind",
    "unmapped",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def unmapped(address: IPAddress) -> IPAddress:
    """
    The client's address as pg_hba.conf sees it: an IPv4-mapped IPv6 address
    (a client of a dual-stack listener, or one a PROXY header names so) is
    the IPv4 address it maps.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class ClientCert:
    """
    A client certificate that passed TLS verification: its subject's Common
    Name (None when it has none) and its whole subject DN in RFC 2253 form
    (``CN=alice,O=Test``), as PostgreSQL's ``clientname=DN`` sees it.
    """

    cn: str | None
    dn: str


@dataclass(frozen=True, slots=True)
class Client:
    """
    What pg_hba.conf decides on.

    :ivar address: the client's IP address as accepted.
    :ivar ssl: whether the connection is TLS.
    :ivar database: the requested database.
    :ivar user: the requested user.
    :ivar replication: a physical replication connection (``replication``
        true), which only the ``replication`` database keyword matches.
    :ivar cert: the client certificate, present only if it passed TLS
        verification.
    :ivar hostname: the client's verified host name (resolve_client_hostname),
        filled only when Rules.needs_hostname.
    """

    address: IPAddress
    ssl: bool
    database: str
    user: str
    replication: bool = False
    cert: ClientCert | None = None
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class Authenticated:
    """
    An identity a pg_hba.conf line authenticated, which PostgreSQL 14 and
    later log with log_connections (auth.c set_authn_id): only the ``cert``
    method does so here (the certificate's subject DN, even when its CN is
    what maps to the user); trust authenticates no one, and the password
    methods are the upstream's to log.

    :ivar identity: the authenticated identity.
    :ivar method: the line's method.
    :ivar file: the file holding the line.
    :ivar line_number: its line number.
    """

    identity: str
    method: str
    file: str
    line_number: int


@dataclass(frozen=True, slots=True)
class Admission:
    """
    The connection may pass.

    :ivar method: the matched line's method (``trust``, ``md5``, ``cert``, ...).
    :ivar file: the file holding the matched line.
    :ivar line_number: its line number.
    :ivar line_text: the line as written (continuations joined).
    :ivar identity: the authenticated identity (the certificate's DN for
        ``cert``), for logging; None otherwise.
    """

    method: str
    file: str
    line_number: int
    line_text: str
    identity: str | None

    @property
    def authenticated(self) -> Authenticated | None:
        """The identity to log, with the line that authenticated it."""
        if self.identity is None:
            return None
        return Authenticated(self.identity, self.method, self.file, self.line_number)


class RefusalKind(enum.Enum):
    """
    Why pg_hba.conf refused, as a fact (the message says it in words, with
    the host, user and database).  The value is the ``reason`` label of the
    refusal metric.
    """

    NO_HBA_ENTRY = "no_hba_entry"  # no line matched: the implicit reject
    HBA_REJECT = "hba_reject"  # a reject line matched
    CLIENT_CERT_REQUIRED = "client_cert_required"  # clientcert, no certificate
    CLIENT_CA_MISSING = "client_ca_missing"  # clientcert or cert without root.crt
    CERT_AUTH_FAILED = "cert_auth_failed"  # the certificate's name does not map to the user


@dataclass(frozen=True, slots=True)
class Refusal:
    """
    The connection is refused with a FATAL ErrorResponse.

    :ivar sqlstate: PostgreSQL's SQLSTATE for this refusal.
    :ivar message: PostgreSQL's message, sent to the client.
    :ivar log_detail: why, for the server log only (never sent).
    :ivar authenticated: the identity the line authenticated before the
        refusal (``cert`` whose name does not map to the user), which
        PostgreSQL logs before it refuses.
    :ivar kind: why, as a fact for metrics (keyword only).
    """

    sqlstate: str
    message: str
    log_detail: str | None
    authenticated: Authenticated | None = None
    kind: RefusalKind = field(kw_only=True)
