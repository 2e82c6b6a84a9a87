"""
pg_hba.conf and pg_ident.conf: parse and match, as PostgreSQL 16 does.

rules.py loads both files (load_rules) and decides connections
(Rules.match).  It reads them through tokens.py (lines, tokens, includes),
lines.py (a pg_hba.conf record) and options.py (its name=value options),
with addresses.py, names.py, regex.py and cnumbers.py for the columns, and
ident.py (pg_ident.conf maps).  decisions.py holds what a decision is made
on and what it returns; errors.py the load errors.
"""

from pgtls.core.hba._hostname import resolve_client_hostname
from pgtls.core.hba.decisions import (
    Admission,
    Authenticated,
    Client,
    ClientCert,
    Refusal,
    RefusalKind,
)
from pgtls.core.hba.errors import HbaError, HbaErrors, HbaFile
from pgtls.core.hba.rules import Rules, load_rules

__all__ = [
    "Admission",
    "Authenticated",
    "Client",
    "ClientCert",
    "HbaError",
    "HbaErrors",
    "HbaFile",
    "Refusal",
    "RefusalKind",
    "Rules",
    "load_rules",
    "resolve_client_hostname",
]
