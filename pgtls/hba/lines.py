"""
pg_hba.conf lines: hba.c parse_hba_line and parse_hba_auth_opt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pgtls.hba.addresses import (
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
from pgtls.hba.cnumbers import atoi
from pgtls.hba.decisions import IPAddress
from pgtls.hba.errors import HbaError
from pgtls.hba.names import Name
from pgtls.hba.tokens import Field, Token, TokenizedLine

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
_LDAP_OPTIONS = frozenset(
    {
        "ldapurl",
        "ldaptls",
        "ldapscheme",
        "ldapserver",
        "ldapport",
        "ldapbinddn",
        "ldapbindpasswd",
        "ldapsearchattribute",
        "ldapsearchfilter",
        "ldapbasedn",
        "ldapprefix",
        "ldapsuffix",
    }
)
_RADIUS_OPTIONS = ("radiusservers", "radiusports", "radiussecrets", "radiusidentifiers")
_RADIUS_LIST_NAMES = {
    "radiusservers": "server",
    "radiusports": "port",
    "radiussecrets": "secret",
    "radiusidentifiers": "identifiers",
}
# option name -> (methods it is valid for, how PostgreSQL lists them)
_OPTION_METHODS: dict[str, tuple[frozenset[str], str]] = {
    "map": (
        frozenset({"ident", "peer", "gss", "sspi", "cert"}),
        "ident, peer, gssapi, sspi, and cert",
    ),
    "pamservice": (frozenset({"pam"}), "pam"),
    "pam_use_hostname": (frozenset({"pam"}), "pam"),
    "krb_realm": (frozenset({"gss", "sspi"}), "gssapi and sspi"),
    "include_realm": (frozenset({"gss", "sspi"}), "gssapi and sspi"),
    "compat_realm": (frozenset({"sspi"}), "sspi"),
    "upn_username": (frozenset({"sspi"}), "sspi"),
    **{name: (frozenset({"ldap"}), "ldap") for name in _LDAP_OPTIONS},
    **{name: (frozenset({"radius"}), "radius") for name in _RADIUS_OPTIONS},
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
    """hba.c parse_hba_line and parse_hba_auth_opt for one tokenized line."""

    def __init__(self, line: TokenizedLine, ssl_enabled: bool, warnings: list[str]) -> None:
        self._line = line
        self._ssl_enabled = ssl_enabled
        self._warnings = warnings
        self._next = 0
        self._method = ""
        self._connection_type = ""
        self._usermap: str | None = None
        self._clientcert = "off"
        self._clientname = "CN"
        self._options: dict[str, str] = {}

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
        self._parse_options()
        self._check_mandatory_options()
        if self._method == "cert":
            self._clientcert = "verify-full"
        if self._connection_type in MATCHABLE_TYPES:
            self._check_supported(databases, roles)
        return HbaLine(
            connection_type=self._connection_type,
            databases=databases,
            roles=roles,
            address=address,
            method=self._method,
            usermap=self._usermap,
            clientcert=self._clientcert,
            clientname=self._clientname,
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

    def _parse_options(self) -> None:
        while self._next < len(self._line.fields):
            for token in self._field(""):
                name, equals, value = token.text.partition("=")
                if not equals:
                    raise self._error(
                        f"authentication option not in name=value format: {token.text}"
                    )
                self._parse_option(name, value)

    def _parse_option(self, name: str, value: str) -> None:
        if name in ("clientcert", "clientname"):
            self._parse_certificate_option(name, value)
            return
        if name not in _OPTION_METHODS:
            raise self._error(f'unrecognized authentication option name: "{name}"')
        methods, listed = _OPTION_METHODS[name]
        if self._method not in methods:
            raise self._error(
                f'authentication option "{name}" is only valid for authentication methods {listed}'
            )
        if name == "map":
            self._usermap = value
        elif name == "ldapport" and atoi(value) == 0:
            raise self._error(f'invalid LDAP port number: "{value}"')
        elif name == "ldapurl":
            self._parse_ldap_url(value)
        elif name in _RADIUS_OPTIONS:
            self._parse_radius_list(name, value)
        self._options[name] = value

    def _parse_certificate_option(self, name: str, value: str) -> None:
        if self._connection_type != "hostssl":
            raise self._error(f'{name} can only be configured for "hostssl" rows')
        if name == "clientname":
            if value not in ("CN", "DN"):
                raise self._error(f'invalid value for clientname: "{value}"')
            self._clientname = value
        elif value == "verify-full":
            self._clientcert = value
        elif value == "verify-ca":
            if self._method == "cert":
                raise self._error(
                    'clientcert only accepts "verify-full" when using "cert" authentication'
                )
            self._clientcert = value
        else:
            raise self._error(f'invalid value for clientcert: "{value}"')

    def _parse_ldap_url(self, url: str) -> None:
        """The parts of an ldapurl that the mode checks need (no DNS, no LDAP library)."""
        scheme, colon, rest = url.partition(":")
        if not colon or not rest.startswith("//"):
            raise self._error(f'could not parse LDAP URL "{url}": Bad parameter to an ldap routine')
        if scheme not in ("ldap", "ldaps"):
            raise self._error(f"unsupported LDAP URL scheme: {scheme}")
        _host, _slash, path = rest[2:].partition("/")
        base_dn, _mark, query = path.partition("?")
        attributes, _mark, query = query.partition("?")
        _scope, _mark, query = query.partition("?")
        search_filter = query.partition("?")[0]
        if base_dn:
            self._options["ldapbasedn"] = base_dn
        if attributes:
            self._options["ldapsearchattribute"] = attributes.split(",")[0]
        if search_filter:
            self._options["ldapsearchfilter"] = search_filter

    def _parse_radius_list(self, name: str, value: str) -> None:
        """A comma list of RADIUS values: no empty element."""
        items = _split_list(value)
        if items is None:
            raise self._error(f'could not parse RADIUS {_RADIUS_LIST_NAMES[name]} list "{value}"')
        if name == "radiusports" and any(atoi(item) == 0 for item in items):
            raise self._error(f'invalid RADIUS port number: "{value}"')

    def _check_mandatory_options(self) -> None:
        if self._method == "ldap":
            self._check_ldap_options()
        elif self._method == "radius":
            self._check_radius_options()

    def _check_ldap_options(self) -> None:
        options = self._options
        search = ("ldapbasedn", "ldapbinddn", "ldapbindpasswd", "ldapsearchattribute")
        if "ldapprefix" in options or "ldapsuffix" in options:
            if any(name in options for name in (*search, "ldapsearchfilter")):
                raise self._error("cannot mix options for simple bind and search+bind modes")
        elif "ldapbasedn" not in options:
            raise self._error(
                'authentication method "ldap" requires argument "ldapbasedn", "ldapprefix",'
                ' or "ldapsuffix" to be set'
            )
        if "ldapsearchattribute" in options and "ldapsearchfilter" in options:
            raise self._error("cannot use ldapsearchattribute together with ldapsearchfilter")

    def _check_radius_options(self) -> None:
        counts: dict[str, int] = {}
        for name in _RADIUS_OPTIONS:
            items = _split_list(self._options[name]) if name in self._options else []
            counts[name] = len(items or [])
        for name in ("radiusservers", "radiussecrets"):
            if name not in self._options:
                raise self._error(
                    f'authentication method "radius" requires argument "{name}" to be set'
                )
        if counts["radiusservers"] == 0:
            raise self._error("list of RADIUS servers cannot be empty")
        if counts["radiussecrets"] == 0:
            raise self._error("list of RADIUS secrets cannot be empty")
        servers = counts["radiusservers"]
        for name, label, allow_none in (
            ("radiussecrets", "secrets", False),
            ("radiusports", "ports", True),
            ("radiusidentifiers", "identifiers", True),
        ):
            count = counts[name]
            if count not in (1, servers) and not (allow_none and count == 0):
                raise self._error(
                    f"the number of RADIUS {label} ({count}) must be 1 or the same as the"
                    f" number of RADIUS servers ({servers})"
                )

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


def _split_list(value: str) -> list[str] | None:
    """A comma list of (optionally double-quoted) items; None if an item is empty."""
    if not value.strip():
        return []
    items = [item.strip() for item in value.split(",")]
    items = [item[1:-1] if len(item) > 1 and item[0] == item[-1] == '"' else item for item in items]
    return None if any(not item for item in items) else items
