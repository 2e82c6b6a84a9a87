"""
pg_hba.conf records: hba.c parse_hba_line, column by column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pgtls.core.hba.addresses import (
    AddressRule,
    AnyAddress,
    HostName,
    Network,
    NoAddress,
    SameHost,
    SameNet,
    cidr_mask,
    numeric_address,
)
from pgtls.core.hba.decisions import IPAddress
from pgtls.core.hba.errors import HbaError
from pgtls.core.hba.names import Name
from pgtls.core.hba.options import AuthOptions
from pgtls.core.hba.tokens import Field, Token, TokenizedLine

__all__ = [
    "AUTH_FAILED",
    "MATCHABLE_TYPES",
    "PASSWORD_METHODS",
    "HbaLine",
    "HbaLineParser",
]

_CONNECTION_TYPES = frozenset(
    {"local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"}
)
# Without GSSAPI encryption, hostnogssenc matches whatever host does.
MATCHABLE_TYPES = frozenset({"host", "hostssl", "hostnossl", "hostnogssenc"})
_METHODS = frozenset(
    {
        "trust",
        "reject",
        "md5",
        "scram-sha-256",
        "password",
        "gss",
        "sspi",
        "ident",
        "peer",
        "pam",
        "ldap",
        "radius",
        "cert",
        "bsd",
    }
)
PASSWORD_METHODS = frozenset({"md5", "scram-sha-256", "password"})
_SUPPORTED_METHODS = PASSWORD_METHODS | {"trust", "reject", "cert"}
AUTH_FAILED = {
    "trust": '"trust" authentication failed for user "{}"',
    "cert": 'certificate authentication failed for user "{}"',
    "md5": 'password authentication failed for user "{}"',
    "scram-sha-256": 'password authentication failed for user "{}"',
    "password": 'password authentication failed for user "{}"',
}


@dataclass(frozen=True, slots=True)
class HbaLine:
    """One parsed pg_hba.conf record."""

    connection_type: str
    databases: tuple[Name, ...]
    roles: tuple[Name, ...]
    address: AddressRule
    method: str
    usermap: str | None
    clientcert: str  # "off", "verify-ca" or "verify-full"
    clientname: str  # "CN" or "DN"
    path: str
    number: int
    raw: str

    def admits_transport(self, ssl: bool) -> bool:
        """Whether this line's type matches a TCP connection with or without SSL."""
        if self.connection_type not in MATCHABLE_TYPES:
            return False
        if self.connection_type == "hostssl":
            return ssl
        if self.connection_type == "hostnossl":
            return not ssl
        return True

    @property
    def matched(self) -> str:
        """PostgreSQL's log detail naming this line."""
        return f'Connection matched file "{self.path}" line {self.number}: "{self.raw}"'


class HbaLineParser:
    """hba.c parse_hba_line for one tokenized line (its options: options.AuthOptions)."""

    def __init__(self, line: TokenizedLine, ssl_enabled: bool, warnings: list[str]) -> None:
        self._line = line
        self._ssl_enabled = ssl_enabled
        self._warnings = warnings
        self._next = 0
        self._method = ""
        self._connection_type = ""

    def parse(self) -> HbaLine:
        """
        The parsed line.

        :raises HbaError: PostgreSQL's error for the line, or pgtls's when
            the line could match but needs what pgtls does not have.
        """
        self._connection_type = self._parse_connection_type()
        databases = self._names("end-of-line before database specification")
        roles = self._names("end-of-line before role specification")
        address = NoAddress() if self._connection_type == "local" else self._parse_address()
        self._method = self._parse_method()
        options = self._parse_options()
        options.check_mandatory()
        # cert implies clientcert=verify-full (hba.c parse_hba_line).
        clientcert = "verify-full" if self._method == "cert" else options.clientcert
        if self._connection_type in MATCHABLE_TYPES:
            self._check_supported(databases, roles)
        return HbaLine(
            connection_type=self._connection_type,
            databases=databases,
            roles=roles,
            address=address,
            method=self._method,
            usermap=options.usermap,
            clientcert=clientcert,
            clientname=options.clientname,
            path=self._line.path,
            number=self._line.number,
            raw=self._line.raw,
        )

    def _error(self, reason: str) -> HbaError:
        return HbaError(self._line.path, self._line.number, reason)

    def _field(self, missing: str) -> Field:
        """The next field, or the error ``missing`` at end of line."""
        if self._next >= len(self._line.fields):
            raise self._error(missing)
        field = self._line.fields[self._next]
        self._next += 1
        return field

    def _single(self, missing: str, multiple: str) -> Token:
        """The next field, which must hold one token."""
        field = self._field(missing)
        if len(field) > 1:
            raise self._error(multiple)
        return field[0]

    def _parse_connection_type(self) -> str:
        kind = self._single("", "multiple values specified for connection type").text
        if kind not in _CONNECTION_TYPES:
            raise self._error(f'invalid connection type "{kind}"')
        where = f"{self._line.path}:{self._line.number}"
        if kind == "hostssl" and not self._ssl_enabled:
            self._warnings.append(f"{where}: hostssl record cannot match because SSL is disabled")
        if kind == "hostgssenc":
            self._warnings.append(
                f"{where}: hostgssenc record cannot match because GSSAPI is not supported"
                " by this build"
            )
        return kind

    def _names(self, missing: str) -> tuple[Name, ...]:
        field = self._field(missing)
        return tuple(Name.compile(t, self._line.path, self._line.number) for t in field)

    def _parse_address(self) -> AddressRule:
        token = self._single(
            "end-of-line before IP address specification",
            "multiple values specified for host address",
        )
        if token.is_keyword("all"):
            return AnyAddress()
        if token.is_keyword("samehost"):
            return SameHost()
        if token.is_keyword("samenet"):
            return SameNet()
        text, slash, bits = token.text.partition("/")
        address = numeric_address(text)
        if address is None:
            if slash:
                raise self._error(
                    f'specifying both host name and CIDR mask is invalid: "{token.text}"'
                )
            return HostName(text)
        if slash:
            mask = cidr_mask(bits, address.version)
            if mask is None:
                raise self._error(f'invalid CIDR mask in address "{token.text}"')
        else:
            mask = self._parse_mask(address)
        return Network(address.version, int(address), mask)

    def _parse_mask(self, address: IPAddress) -> int:
        """The separate netmask column."""
        token = self._single(
            "end-of-line before netmask specification", "multiple values specified for netmask"
        )
        mask = numeric_address(token.text)
        if mask is None:
            raise self._error(f'invalid IP mask "{token.text}": Name or service not known')
        if mask.version != address.version:
            raise self._error("IP address and mask do not match")
        return int(mask)

    def _parse_method(self) -> str:
        method = self._single(
            "end-of-line before authentication method",
            "multiple values specified for authentication type",
        ).text
        if method not in _METHODS:
            raise self._error(f'invalid authentication method "{method}"')
        local = self._connection_type == "local"
        if local and method == "ident":
            method = "peer"  # PostgreSQL's backward compatibility
        if local and method == "gss":
            raise self._error("gssapi authentication is not supported on local sockets")
        if not local and method == "peer":
            raise self._error("peer authentication is only supported on local sockets")
        if self._connection_type != "hostssl" and method == "cert":
            raise self._error("cert authentication is only supported on hostssl connections")
        return method

    def _parse_options(self) -> AuthOptions:
        """The remaining fields: ``name=value`` authentication options."""
        options = AuthOptions(self._method, self._connection_type, self._error)
        while self._next < len(self._line.fields):
            for token in self._field(""):
                name, equals, value = token.text.partition("=")
                if not equals:
                    raise self._error(
                        f"authentication option not in name=value format: {token.text}"
                    )
                options.parse(name, value)
        return options

    def _check_supported(self, databases: Sequence[Name], roles: Sequence[Name]) -> None:
        """pgtls's own limits on a line that could match a connection."""
        for name in databases:
            for keyword in ("samerole", "samegroup"):
                if name.token.is_keyword(keyword):
                    raise self._error(f'database keyword "{keyword}" is not supported by pgtls')
        for name in roles:
            if name.is_member_check:
                raise self._error(
                    f'group membership check "{name.token.text}" is not supported by pgtls'
                )
        if self._method not in _SUPPORTED_METHODS:
            raise self._error(
                f'invalid authentication method "{self._method}": not supported by pgtls'
            )
