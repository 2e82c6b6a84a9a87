"""
pg_hba.conf and pg_ident.conf: parse and match.

TO BE COMPLETED by the hba helper.  ClientCert is the contract tlsctx and
frontdoor code against.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientCert"]


@dataclass(frozen=True, slots=True)
class ClientCert:
    """
    A client certificate that passed TLS verification: its subject's Common
    Name (None when it has none) and its whole subject DN in RFC 2253 form
    (``CN=alice,O=Test``), as PostgreSQL's ``clientname=DN`` sees it.
    """

    cn: str | None
    dn: str
