"""
The ``name=value`` authentication options of a pg_hba.conf line (hba.c
parse_hba_auth_opt and the checks parse_hba_line makes once a line is
read): the ones pgtls uses (map, clientcert, clientname) and the ones it
only checks, so a line PostgreSQL refuses is refused here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pgtls.core.hba.cnumbers import atoi
from pgtls.core.hba.errors import HbaError

__all__ = ["AuthOptions"]

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


@dataclass(slots=True)
class AuthOptions:
    """
    The options of one line, collected in order.

    :ivar method: the line's authentication method.
    :ivar connection_type: the line's connection type.
    :ivar error: makes the HbaError for a reason, charged to the line.
    :ivar usermap: ``map=``, or None.
    :ivar clientcert: ``off``, ``verify-ca`` or ``verify-full``.
    :ivar clientname: ``CN`` or ``DN``.
    :ivar values: every option by name (and the parts of an ldapurl).
    """

    method: str
    connection_type: str
    error: Callable[[str], HbaError]
    usermap: str | None = None
    clientcert: str = "off"
    clientname: str = "CN"
    values: dict[str, str] = field(default_factory=dict)

    def parse(self, name: str, value: str) -> None:
        """
        One ``name=value`` option.

        :raises HbaError: PostgreSQL's error for an unknown, misplaced or
            malformed option.
        """
        if name in ("clientcert", "clientname"):
            self._parse_certificate_option(name, value)
            return
        if name not in _OPTION_METHODS:
            raise self.error(f'unrecognized authentication option name: "{name}"')
        methods, listed = _OPTION_METHODS[name]
        if self.method not in methods:
            raise self.error(
                f'authentication option "{name}" is only valid for authentication methods {listed}'
            )
        if name == "map":
            self.usermap = value
        elif name == "ldapport" and atoi(value) == 0:
            raise self.error(f'invalid LDAP port number: "{value}"')
        elif name == "ldapurl":
            self._parse_ldap_url(value)
        elif name in _RADIUS_OPTIONS:
            self._parse_radius_list(name, value)
        self.values[name] = value

    def _parse_certificate_option(self, name: str, value: str) -> None:
        if self.connection_type != "hostssl":
            raise self.error(f'{name} can only be configured for "hostssl" rows')
        if name == "clientname":
            if value not in ("CN", "DN"):
                raise self.error(f'invalid value for clientname: "{value}"')
            self.clientname = value
        elif value == "verify-full":
            self.clientcert = value
        elif value == "verify-ca":
            if self.method == "cert":
                raise self.error(
                    'clientcert only accepts "verify-full" when using "cert" authentication'
                )
            self.clientcert = value
        else:
            raise self.error(f'invalid value for clientcert: "{value}"')

    def _parse_ldap_url(self, url: str) -> None:
        """The parts of an ldapurl that the mode checks need (no DNS, no LDAP library)."""
        scheme, colon, rest = url.partition(":")
        if not colon or not rest.startswith("//"):
            raise self.error(f'could not parse LDAP URL "{url}": Bad parameter to an ldap routine')
        if scheme not in ("ldap", "ldaps"):
            raise self.error(f"unsupported LDAP URL scheme: {scheme}")
        _host, _slash, path = rest[2:].partition("/")
        base_dn, _mark, query = path.partition("?")
        attributes, _mark, query = query.partition("?")
        _scope, _mark, query = query.partition("?")
        search_filter = query.partition("?")[0]
        if base_dn:
            self.values["ldapbasedn"] = base_dn
        if attributes:
            self.values["ldapsearchattribute"] = attributes.split(",")[0]
        if search_filter:
            self.values["ldapsearchfilter"] = search_filter

    def _parse_radius_list(self, name: str, value: str) -> None:
        """A comma list of RADIUS values: no empty element."""
        items = _split_list(value)
        if items is None:
            raise self.error(f'could not parse RADIUS {_RADIUS_LIST_NAMES[name]} list "{value}"')
        if name == "radiusports" and any(atoi(item) == 0 for item in items):
            raise self.error(f'invalid RADIUS port number: "{value}"')

    def check_mandatory(self) -> None:
        """
        The options the method needs once the line is read.

        :raises HbaError: a mandatory option is missing or options conflict.
        """
        if self.method == "ldap":
            self._check_ldap_options()
        elif self.method == "radius":
            self._check_radius_options()

    def _check_ldap_options(self) -> None:
        options = self.values
        search = ("ldapbasedn", "ldapbinddn", "ldapbindpasswd", "ldapsearchattribute")
        if "ldapprefix" in options or "ldapsuffix" in options:
            if any(name in options for name in (*search, "ldapsearchfilter")):
                raise self.error("cannot mix options for simple bind and search+bind modes")
        elif "ldapbasedn" not in options:
            raise self.error(
                'authentication method "ldap" requires argument "ldapbasedn", "ldapprefix",'
                ' or "ldapsuffix" to be set'
            )
        if "ldapsearchattribute" in options and "ldapsearchfilter" in options:
            raise self.error("cannot use ldapsearchattribute together with ldapsearchfilter")

    def _check_radius_options(self) -> None:
        counts: dict[str, int] = {}
        for name in _RADIUS_OPTIONS:
            items = _split_list(self.values[name]) if name in self.values else []
            counts[name] = len(items or [])
        for name in ("radiusservers", "radiussecrets"):
            if name not in self.values:
                raise self.error(
                    f'authentication method "radius" requires argument "{name}" to be set'
                )
        if counts["radiusservers"] == 0:
            raise self.error("list of RADIUS servers cannot be empty")
        if counts["radiussecrets"] == 0:
            raise self.error("list of RADIUS secrets cannot be empty")
        servers = counts["radiusservers"]
        for name, label, allow_none in (
            ("radiussecrets", "secrets", False),
            ("radiusports", "ports", True),
            ("radiusidentifiers", "identifiers", True),
        ):
            count = counts[name]
            if count not in (1, servers) and not (allow_none and count == 0):
                raise self.error(
                    f"the number of RADIUS {label} ({count}) must be 1 or the same as the"
                    f" number of RADIUS servers ({servers})"
                )


def _split_list(value: str) -> list[str] | None:
    """A comma list of (optionally double-quoted) items; None if an item is empty."""
    if not value.strip():
        return []
    items = [item.strip() for item in value.split(",")]
    items = [item[1:-1] if len(item) > 1 and item[0] == item[-1] == '"' else item for item in items]
    return None if any(not item for item in items) else items
