"""
pg_hba.conf and pg_ident.conf: parse and match, as PostgreSQL 16 does.

load_rules() reads both files (and everything they include) once, and
either returns Rules or raises HbaErrors naming every bad line, as
PostgreSQL logs each one.
Rules.match() then decides each connection without any I/O: the Twisted
shell fills in the facts that need I/O (the verified client host name, from
resolve_client_hostname, and this machine's interfaces, from
pgtls.server._ifaddrs) and encodes a Refusal with wire.error_response().

pgtls only admits or refuses: trust and the password methods admit and
leave any password exchange to the upstream server, cert checks the client
certificate here, and the methods that need something pgtls does not have
(a role catalogue, an ident or LDAP server, a Unix socket, ...) are a load
error on any line that could match, never silently allowed.

Deliberate differences from PostgreSQL, each on the safe side:

- An IPv4 rule also matches an IPv4-mapped IPv6 client (``::ffff:a.b.c.d``),
  which is how a dual-stack listener sees IPv4 clients.
- pg_ident.conf errors are load errors (PostgreSQL logs them and starts
  without user maps).
- Regular expressions are PostgreSQL's advanced regular expressions
  translated to Python's ``re`` (ASCII classes, POSIX bracket classes,
  ``\\m \\M \\y \\Y``); a pattern that cannot be translated is a load error.
"""

from __future__ import annotations

from collections.abc import Sequence

from pgtls.core.hba.addresses import HostName, client_addresses
from pgtls.core.hba.decisions import (
    Admission,
    Authenticated,
    Client,
    ClientCert,
    Interface,
    Refusal,
    RefusalKind,
)
from pgtls.core.hba.errors import HbaError, HbaErrors
from pgtls.core.hba.ident import IdentLine, check_usermap, parse_ident_line
from pgtls.core.hba.lines import (
    AUTH_FAILED,
    MATCHABLE_TYPES,
    PASSWORD_METHODS,
    HbaLine,
    HbaLineParser,
)
from pgtls.core.hba.names import database_matches, role_matches
from pgtls.core.hba.tokens import Tokenizer

__all__ = ["Rules", "load_rules"]


class Rules:
    """
    The parsed pg_hba.conf and pg_ident.conf: made by load_rules().

    :ivar needs_hostname: whether some line names a host, so that
        ``Client.hostname`` must be looked up before match().
    :ivar warnings: ``FILE:LINE: message`` for lines that load but cannot
        match (hostssl with SSL off, hostgssenc) or skipped includes.
    """

    __slots__ = ("_client_ca_loaded", "_ident", "_lines", "_local", "needs_hostname", "warnings")

    def __init__(
        self,
        lines: Sequence[HbaLine],
        ident: Sequence[IdentLine],
        *,
        client_ca_loaded: bool,
        local_networks: Sequence[Interface],
        warnings: Sequence[str],
    ) -> None:
        self._lines = tuple(lines)
        self._ident = tuple(ident)
        self._client_ca_loaded = client_ca_loaded
        self._local = tuple(local_networks)
        self.needs_hostname: bool = any(
            isinstance(line.address, HostName) and line.connection_type in MATCHABLE_TYPES
            for line in self._lines
        )
        self.warnings: tuple[str, ...] = tuple(warnings)

    def __len__(self) -> int:
        """How many pg_hba.conf lines were loaded (includes expanded)."""
        return len(self._lines)

    def match(self, client: Client) -> Admission | Refusal:
        """
        Decide a connection as PostgreSQL's ClientAuthentication would,
        up to (not including) any password exchange.

        :param client: the connection's facts.
        :return: an Admission, or the Refusal to send.
        """
        line = self._first_match(client)
        if line is None:
            return _no_entry(client)
        refusal = self._check_clientcert(line, client)
        if refusal is not None:
            return refusal
        if line.method == "reject":
            return _rejected(client, line)
        identity = None
        if line.method == "cert" or line.clientcert == "verify-full":
            assert client.cert is not None  # _check_clientcert made sure
            failure = self._check_cert(line, client.user, client.cert)
            if failure is not None:
                return failure
            if line.method == "cert":
                identity = client.cert.dn
        return Admission(line.method, line.path, line.number, line.raw, identity)

    def _first_match(self, client: Client) -> HbaLine | None:
        candidates = client_addresses(client.address)
        for line in self._lines:
            if not line.admits_transport(client.ssl):
                continue
            if not line.address.matches(client, candidates, self._local):
                continue
            if database_matches(client, line.databases) and role_matches(client.user, line.roles):
                return line
        return None

    def _check_clientcert(self, line: HbaLine, client: Client) -> Refusal | None:
        """The checks that come before the method itself (auth.c ClientAuthentication)."""
        if line.clientcert == "off":
            return None
        if not self._client_ca_loaded:
            return Refusal(
                "F0000",
                "client certificates can only be checked if a root certificate store is available",
                line.matched,
                kind=RefusalKind.CLIENT_CA_MISSING,
            )
        if client.cert is None:
            return Refusal(
                "28000",
                "connection requires a valid client certificate",
                line.matched,
                kind=RefusalKind.CLIENT_CERT_REQUIRED,
            )
        return None

    def _check_cert(self, line: HbaLine, user: str, cert: ClientCert) -> Refusal | None:
        """auth.c CheckCertAuth: the certificate's CN (or DN) must map to ``user``."""
        name = cert.dn if line.clientname == "DN" else cert.cn
        if not name:
            reasons = [
                f'certificate authentication failed for user "{user}": client certificate'
                " contains no user name"
            ]
        else:
            reason = check_usermap(self._ident, line.usermap, user, name)
            if reason is None:
                return None
            reasons = [reason]
            if line.method != "cert":
                reasons.append(
                    "certificate validation (clientcert=verify-full) failed for user"
                    f' "{user}": {line.clientname} mismatch'
                )
        sqlstate = "28P01" if line.method in PASSWORD_METHODS else "28000"
        message = AUTH_FAILED[line.method].format(user)
        # cert authenticates the DN as soon as the certificate has a name,
        # before the user map is checked (auth.c CheckCertAuth).
        authenticated = None
        if line.method == "cert" and name:
            authenticated = Authenticated(cert.dn, line.method, line.path, line.number)
        return Refusal(
            sqlstate,
            message,
            "\n".join([*reasons, line.matched]),
            authenticated,
            kind=RefusalKind.CERT_AUTH_FAILED,
        )


def _encryption(client: Client) -> str:
    return "SSL encryption" if client.ssl else "no encryption"


def _no_entry(client: Client) -> Refusal:
    """The implicit reject at the end of the file."""
    host = str(client.address)
    if client.replication:
        message = (
            f'no pg_hba.conf entry for replication connection from host "{host}",'
            f' user "{client.user}", {_encryption(client)}'
        )
    else:
        message = (
            f'no pg_hba.conf entry for host "{host}", user "{client.user}",'
            f' database "{client.database}", {_encryption(client)}'
        )
    detail = None
    if client.hostname is not None:
        detail = f'Client IP address resolved to "{client.hostname}", forward lookup matches.'
    return Refusal("28000", message, detail, kind=RefusalKind.NO_HBA_ENTRY)


def _rejected(client: Client, line: HbaLine) -> Refusal:
    """An explicit ``reject`` line."""
    host = str(client.address)
    if client.replication:
        message = (
            f'pg_hba.conf rejects replication connection for host "{host}",'
            f' user "{client.user}", {_encryption(client)}'
        )
    else:
        message = (
            f'pg_hba.conf rejects connection for host "{host}", user "{client.user}",'
            f' database "{client.database}", {_encryption(client)}'
        )
    return Refusal("28000", message, line.matched, kind=RefusalKind.HBA_REJECT)


def load_rules(
    hba_path: str,
    ident_path: str,
    *,
    ssl_enabled: bool,
    client_ca_loaded: bool,
    local_networks: Sequence[Interface] = (),
) -> Rules:
    """
    Read and parse pg_hba.conf and pg_ident.conf, with their includes.

    :param hba_path: pg_hba.conf; it must exist and have at least one entry.
    :param ident_path: pg_ident.conf; a missing file is an empty one.
    :param ssl_enabled: whether SSL is on (hostssl lines warn otherwise).
    :param client_ca_loaded: whether a root certificate store is loaded
        (clientcert and cert refuse connections otherwise).
    :param local_networks: this machine's interfaces, for samehost/samenet.
    :raises HbaError: pg_hba.conf cannot be opened.
    :raises HbaErrors: for every bad line of both files (and a pg_ident.conf
        that exists but cannot be read); nothing is loaded.
    """
    tokenizer = Tokenizer()
    hba_lines = tokenizer.read(hba_path, 0, (hba_path, None))
    hba_errors, tokenizer.errors = tokenizer.errors, []
    rule_warnings: list[str] = []
    lines = []
    for line in hba_lines:
        try:
            lines.append(HbaLineParser(line, ssl_enabled, rule_warnings).parse())
        except HbaError as error:
            hba_errors.append(error)
    if not lines and not hba_errors:
        raise HbaError(hba_path, None, f'configuration file "{hba_path}" contains no entries')
    ident_errors: list[HbaError] = []
    try:
        ident_lines = tokenizer.read_if_exists(ident_path, 0, (ident_path, None)) or []
    except HbaError as error:  # pg_ident.conf exists but cannot be read
        ident_lines = []
        ident_errors.append(error)
    ident_errors += tokenizer.errors
    ident = []
    for line in ident_lines:
        try:
            ident.append(parse_ident_line(line))
        except HbaError as error:
            ident_errors.append(error)
    if hba_errors or ident_errors:
        raise HbaErrors(hba_errors, ident_errors)
    return Rules(
        lines,
        ident,
        client_ca_loaded=client_ca_loaded,
        local_networks=local_networks,
        warnings=[*tokenizer.warnings, *rule_warnings],
    )
