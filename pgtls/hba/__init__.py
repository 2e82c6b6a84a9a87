"""pg_hba.conf and pg_ident.conf: parse and match, as PostgreSQL 16 does."""

from pgtls.hba.rules import (
    Admission,
    Authenticated,
    Client,
    ClientCert,
    HbaError,
    HbaErrors,
    Refusal,
    Rules,
    load_rules,
    resolve_client_hostname,
)

__all__ = [
    "Admission",
    "Authenticated",
    "Client",
    "ClientCert",
    "HbaError",
    "HbaErrors",
    "Refusal",
    "Rules",
    "load_rules",
    "resolve_client_hostname",
]
