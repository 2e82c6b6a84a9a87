"""
pgtls.core.hba: pg_hba.conf / pg_ident.conf parsing and matching, as PostgreSQL 16
does them; plus the I/O helpers pgtls.server._ifaddrs and pgtls.core.hba._hostname.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgtls.core import hba
from pgtls.core.hba import (
    Admission,
    Authenticated,
    Client,
    ClientCert,
    HbaError,
    HbaErrors,
    HbaFile,
    Refusal,
    RefusalKind,
    Rules,
    load_rules,
)
from pgtls.core.hba.decisions import unmapped
from pgtls.server import _ifaddrs

ALICE = ClientCert(cn="alice", dn="CN=alice,O=Test")
BOB = ClientCert(cn="bob", dn="CN=bob,O=Test")
NETWORKS = (
    ipaddress.ip_interface("127.0.0.1/8"),
    ipaddress.ip_interface("192.0.2.2/24"),
    ipaddress.ip_interface("::1/128"),
    ipaddress.ip_interface("fd00::2/64"),
)


def write(directory: Path, name: str, text: str) -> str:
    """Write ``text`` to ``directory/name`` (making parents) and return the path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(
    tmp_path: Path,
    hba_text: str,
    ident_text: str | None = None,
    *,
    ssl_enabled: bool = True,
    client_ca_loaded: bool = True,
) -> Rules:
    """Load pg_hba.conf (and pg_ident.conf when given) from ``tmp_path``."""
    hba_path = write(tmp_path, "pg_hba.conf", hba_text)
    ident_path = str(tmp_path / "pg_ident.conf")
    if ident_text is not None:
        write(tmp_path, "pg_ident.conf", ident_text)
    return load_rules(
        hba_path,
        ident_path,
        ssl_enabled=ssl_enabled,
        client_ca_loaded=client_ca_loaded,
        local_networks=NETWORKS,
    )


def load_error(tmp_path: Path, hba_text: str, ident_text: str | None = None) -> HbaError:
    """The HbaError that loading these files raises."""
    with pytest.raises(HbaError) as caught:
        load(tmp_path, hba_text, ident_text)
    return caught.value


def client(address: str = "127.0.0.1", **fields: Any) -> Client:
    """A Client with defaults: plaintext, database "db", user "alice"."""
    fields.setdefault("ssl", False)
    fields.setdefault("database", "db")
    fields.setdefault("user", "alice")
    return Client(address=ipaddress.ip_address(address), **fields)


def admitted(decision: Admission | Refusal) -> Admission:
    """The decision, which must be an Admission."""
    assert isinstance(decision, Admission), decision
    return decision


def refused(decision: Admission | Refusal) -> Refusal:
    """The decision, which must be a Refusal."""
    assert isinstance(decision, Refusal), decision
    return decision


# ---------------------------------------------------------------------------
# Loading: files, includes, errors


def test_missing_hba_file_is_an_error(tmp_path: Path) -> None:
    """A missing pg_hba.conf fails with PostgreSQL's open error naming the file."""
    path = str(tmp_path / "pg_hba.conf")
    with pytest.raises(HbaError) as caught:
        load_rules(path, str(tmp_path / "pg_ident.conf"), ssl_enabled=True, client_ca_loaded=True)
    assert str(caught.value) == f'{path}: could not open file "{path}": No such file or directory'
    assert caught.value.path == path
    assert caught.value.line is None


def test_file_without_entries_is_an_error(tmp_path: Path) -> None:
    """Comments and blank lines only: PostgreSQL's "contains no entries"."""
    error = load_error(tmp_path, "# nothing here\n\n   \t\n")
    path = str(tmp_path / "pg_hba.conf")
    assert str(error) == f'{path}: configuration file "{path}" contains no entries'


def test_missing_ident_file_is_an_empty_map(tmp_path: Path) -> None:
    """Without pg_ident.conf, a map= line loads and simply maps nobody."""
    rules = load(tmp_path, "hostssl all all all cert map=m\n")
    refusal = refused(rules.match(client(ssl=True, cert=ALICE)))
    assert refusal.message == 'certificate authentication failed for user "alice"'
    assert refusal.log_detail is not None
    assert 'no match in usermap "m" for user "alice" authenticated as "alice"' in (
        refusal.log_detail
    )


def test_local_lines_load_but_never_match(tmp_path: Path) -> None:
    """Debian's default local lines (peer, samerole, +role) load; they match nothing."""
    rules = load(
        tmp_path,
        "local all postgres peer\nlocal samerole +admins ident map=x\nlocal all all md5\n",
    )
    assert refused(rules.match(client())).message.startswith("no pg_hba.conf entry")


def test_hostssl_without_ssl_warns(tmp_path: Path) -> None:
    """A hostssl line with ssl off loads with PostgreSQL's warning at file:line."""
    path = str(tmp_path / "pg_hba.conf")
    rules = load(tmp_path, "host all all all trust\nhostssl all all all trust\n", ssl_enabled=False)
    assert rules.warnings == (f"{path}:2: hostssl record cannot match because SSL is disabled",)
    assert load(tmp_path, "hostssl all all all trust\n", ssl_enabled=True).warnings == ()


def test_hostgssenc_warns(tmp_path: Path) -> None:
    """hostgssenc lines (any method) load with a warning: they never match."""
    rules = load(tmp_path, "hostgssenc all all all gss include_realm=0\n")
    assert rules.warnings == (
        f"{tmp_path / 'pg_hba.conf'}:1: hostgssenc record cannot match because GSSAPI"
        " is not supported by this build",
    )
    assert refused(rules.match(client())).sqlstate == "28000"


def test_continuation_lines_join_and_count(tmp_path: Path) -> None:
    """A trailing backslash joins lines; later line numbers still count physical lines."""
    text = "host all \\\n  all \\\n  127.0.0.1/32 trust\nbogus all all all trust\n"
    error = load_error(tmp_path, text)
    assert error.line == 4
    rules = load(tmp_path, "host all \\\n  all 127.0.0.1/32 \\\ntrust\n")
    admission = admitted(rules.match(client()))
    assert admission.line_number == 1
    assert admission.line_text == "host all   all 127.0.0.1/32 trust"


def test_crlf_line_endings(tmp_path: Path) -> None:
    """Windows line endings are stripped, also before a continuation backslash."""
    rules = load(tmp_path, "host all all \\\r\n127.0.0.1/32 trust\r\n")
    assert admitted(rules.match(client())).line_text == "host all all 127.0.0.1/32 trust"


def test_comments_and_quoting(tmp_path: Path) -> None:
    """# starts a comment outside quotes; quotes keep blanks, commas, # and "" literal."""
    rules = load(
        tmp_path,
        'host "my db","x#y" "a ""quoted"" user" all trust # a comment\n'
        "host all all all reject#comment right after\n",
    )
    assert admitted(rules.match(client(database="my db", user='a "quoted" user')))
    assert admitted(rules.match(client(database="x#y", user='a "quoted" user')))
    refusal = refused(rules.match(client(database="my", user='a "quoted" user')))
    assert refusal.message.startswith("pg_hba.conf rejects connection")
    assert refusal.log_detail == (
        f'Connection matched file "{tmp_path / "pg_hba.conf"}" line 2:'
        ' "host all all all reject#comment right after"'
    )


def test_comma_lists_allow_blanks_after_commas(tmp_path: Path) -> None:
    """``a, b`` is one list; a blank before the comma ends the field instead."""
    rules = load(tmp_path, "host a, b alice all trust\n")
    assert admitted(rules.match(client(database="b")))
    error = load_error(tmp_path, "host a ,b alice all trust\n")
    assert "invalid IP address" not in error.reason
    # "a" is the database, ",b" the user, "alice" the address (a host name),
    # "all" the method.
    assert error.reason == 'invalid authentication method "all"'


def test_at_file_lists_names_relative_to_the_hba_file(tmp_path: Path) -> None:
    """@file reads names (several lines, comments, lists) next to pg_hba.conf."""
    write(tmp_path, "dbs.txt", 'sales, "hr dept"  # the two\nops\n')
    write(tmp_path, "sub/users", "alice bob\n")
    rules = load(tmp_path, "host @dbs.txt,extra @sub/users all trust\n")
    for database in ("sales", "hr dept", "ops", "extra"):
        assert admitted(rules.match(client(database=database, user="bob")))
    assert refused(rules.match(client(database="other")))
    assert refused(rules.match(client(database="ops", user="carol")))


def test_quoted_at_is_a_name(tmp_path: Path) -> None:
    """A quoted "@x" is a literal name, not a file."""
    rules = load(tmp_path, 'host "@x" all all trust\n')
    assert admitted(rules.match(client(database="@x")))


def test_at_file_missing_is_an_error(tmp_path: Path) -> None:
    """A missing @file is an error at the line naming it (PostgreSQL 16)."""
    error = load_error(tmp_path, "host all @nope all trust\n")
    missing = tmp_path / "nope"
    assert str(error) == (
        f'{tmp_path / "pg_hba.conf"}:1: could not open file "{missing}": No such file or directory'
    )


def test_empty_at_file_drops_the_field(tmp_path: Path) -> None:
    """An @file with no names removes the field, shifting the others (as PostgreSQL)."""
    write(tmp_path, "empty", "# nobody\n")
    error = load_error(tmp_path, "host @empty all 127.0.0.1/32 trust\n")
    assert error.reason == "end-of-line before authentication method"


def test_include_reads_lines_in_place(tmp_path: Path) -> None:
    """include inserts the file's lines where it stands; their file and line are their own."""
    sub = write(tmp_path, "conf/first.conf", "\nhost all bob all trust\n")
    rules = load(tmp_path, "include conf/first.conf\nhost all all all reject\n")
    admission = admitted(rules.match(client(user="bob")))
    assert (admission.file, admission.line_number) == (sub, 2)
    assert refused(rules.match(client(user="alice"))).message.startswith("pg_hba.conf rejects")


def test_include_error_names_the_included_file(tmp_path: Path) -> None:
    """An error inside an included file is reported at that file's line."""
    sub = write(tmp_path, "bad.conf", "host all all all trust\nhost all all all nope\n")
    error = load_error(tmp_path, "include bad.conf\n")
    assert str(error) == f'{sub}:2: invalid authentication method "nope"'


def test_include_missing_is_an_error(tmp_path: Path) -> None:
    """include of a missing file fails at the include line."""
    error = load_error(tmp_path, "host all all all trust\ninclude missing.conf\n")
    assert error.line == 2
    assert error.reason == (
        f'could not open file "{tmp_path / "missing.conf"}": No such file or directory'
    )


def test_include_if_exists_skips_a_missing_file(tmp_path: Path) -> None:
    """include_if_exists of a missing file is skipped with a warning; present, it is read."""
    rules = load(tmp_path, "include_if_exists gone.conf\nhost all all all trust\n")
    assert rules.warnings == (
        f"{tmp_path / 'pg_hba.conf'}:1: skipping missing authentication file"
        f' "{tmp_path / "gone.conf"}"',
    )
    write(tmp_path, "here.conf", "host all all all reject\n")
    rules = load(tmp_path, "include_if_exists here.conf\nhost all all all trust\n")
    assert refused(rules.match(client())).message.startswith("pg_hba.conf rejects")


def test_include_if_exists_still_fails_on_what_the_file_includes(tmp_path: Path) -> None:
    """Only the named file may be missing: a missing include inside it is an error."""
    inner = write(tmp_path, "here.conf", "host all all all trust\ninclude gone.conf\n")
    error = load_error(tmp_path, "include_if_exists here.conf\n")
    assert (error.path, error.line) == (inner, 2)
    assert error.reason.startswith('could not open file "')


def test_ident_file_includes(tmp_path: Path) -> None:
    """pg_ident.conf has the same include records as pg_hba.conf."""
    write(tmp_path, "maps/staff.conf", "staff alice bob\n")
    rules = load(tmp_path, "hostssl all all all cert map=staff\n", "include_dir maps\n")
    assert admitted(rules.match(client(ssl=True, cert=ALICE, user="bob")))


def test_include_dir_reads_conf_files_in_name_order(tmp_path: Path) -> None:
    """include_dir: *.conf only, sorted, no dot files, no directories."""
    write(tmp_path, "d/20-trust.conf", "host all all all trust\n")
    write(tmp_path, "d/10-reject-bob.conf", "host all bob all reject\n")
    write(tmp_path, "d/.00-hidden.conf", "host all all all reject\n")
    write(tmp_path, "d/05-notes.txt", "host all all all reject\n")
    write(tmp_path, "d/sub.conf/x.conf", "host all all all reject\n")
    rules = load(tmp_path, "include_dir d\n")
    assert refused(rules.match(client(user="bob"))).message.startswith("pg_hba.conf rejects")
    admission = admitted(rules.match(client(user="alice")))
    assert admission.file == str(tmp_path / "d" / "20-trust.conf")


def test_include_dir_errors(tmp_path: Path) -> None:
    """A blank or missing include_dir is an error at its line."""
    assert load_error(tmp_path, 'include_dir " "\n').reason == (
        'empty configuration directory name: " "'
    )
    assert load_error(tmp_path, "include_dir nodir\n").reason == (
        f'could not open configuration directory "{tmp_path / "nodir"}": No such file or directory'
    )


def test_include_loop_stops_at_the_nesting_limit(tmp_path: Path) -> None:
    """A file including itself fails with PostgreSQL's nesting-depth error."""
    error = load_error(tmp_path, "include pg_hba.conf\n")
    assert error.reason == (
        f'could not open file "{tmp_path / "pg_hba.conf"}": maximum nesting depth exceeded'
    )


def test_first_error_is_raised(tmp_path: Path) -> None:
    """With several bad lines, the first one in file order is the error's line."""
    error = load_error(tmp_path, "host all all all trust\nfoo\nhost all all all bar\n")
    assert (error.line, error.reason) == (2, 'invalid connection type "foo"')


def test_every_bad_line_is_reported(tmp_path: Path) -> None:
    """
    As PostgreSQL's load_hba logs each bad line and goes on: every error of
    both files, one ``FILE:LINE: reason`` line each, lines that do not
    tokenize (a missing include) first, pg_hba.conf before pg_ident.conf.
    """
    error = load_error(
        tmp_path,
        "host all all 1.2.3.4/99 trust\nhost all all all trust\ninclude nosuch.conf\n"
        "hostx all all all trust\n",
        "m alice bob\nm alice\nm /( bob\n",
    )
    assert isinstance(error, HbaErrors)
    hba_file, ident_file = tmp_path / "pg_hba.conf", tmp_path / "pg_ident.conf"
    assert [(e.path, e.line) for e in error.errors] == [
        (str(hba_file), 3),
        (str(hba_file), 1),
        (str(hba_file), 4),
        (str(ident_file), 2),
        (str(ident_file), 3),
    ]
    lines = str(error).split("\n")
    assert lines[:3] == [
        f'{hba_file}:3: could not open file "{tmp_path / "nosuch.conf"}": '
        "No such file or directory",
        f'{hba_file}:1: invalid CIDR mask in address "1.2.3.4/99"',
        f'{hba_file}:4: invalid connection type "hostx"',
    ]
    assert lines[3] == f"{ident_file}:2: missing entry at end of line"
    assert lines[4].startswith(f"{ident_file}:3: ")
    assert (len(error.hba_errors), len(error.ident_errors)) == (3, 2)
    assert (error.path, error.line) == (str(hba_file), 3)


def test_bad_lines_only_in_pg_ident(tmp_path: Path) -> None:
    """A good pg_hba.conf and a bad pg_ident.conf: the errors name pg_ident.conf only."""
    error = load_error(tmp_path, "host all all all trust\n", "m alice\nm /( bob\n")
    assert isinstance(error, HbaErrors)
    assert error.hba_errors == ()
    assert {e.path for e in error.ident_errors} == {str(tmp_path / "pg_ident.conf")}
    assert [e.line for e in error.errors] == [1, 2]


def test_errors_carry_their_source_file(tmp_path: Path) -> None:
    """Each error says, typed, which file is at fault, whatever file it names."""
    write(tmp_path, "maps.conf", "m /( bob\n")
    error = load_error(tmp_path, "hostx all all all trust\n", "include maps.conf\n")
    assert isinstance(error, HbaErrors)
    assert [e.source for e in error.errors] == [HbaFile.HBA, HbaFile.IDENT]
    assert error.ident_errors[0].path == str(tmp_path / "maps.conf")
    assert error.sources == (HbaFile.HBA, HbaFile.IDENT)
    only_ident = load_error(tmp_path, "host all all all trust\n", "m alice\n")
    assert only_ident.sources == (HbaFile.IDENT,)
    assert only_ident.source is HbaFile.IDENT
    (tmp_path / "pg_hba.conf").write_text("# nothing\n")
    with pytest.raises(HbaError) as empty:
        load_rules(
            str(tmp_path / "pg_hba.conf"),
            str(tmp_path / "pg_ident.conf"),
            ssl_enabled=True,
            client_ca_loaded=True,
        )
    assert empty.value.sources == (HbaFile.HBA,)


HBA_ERRORS = [
    ("hostx all all all trust", 'invalid connection type "hostx"'),
    ("host,hostssl all all all trust", "multiple values specified for connection type"),
    ("host", "end-of-line before database specification"),
    ("host all", "end-of-line before role specification"),
    ("host all all", "end-of-line before IP address specification"),
    ("host all all 10.0.0.0/8,::1/128 trust", "multiple values specified for host address"),
    ("host all all 10.0.0.0/33 trust", 'invalid CIDR mask in address "10.0.0.0/33"'),
    ("host all all ::1/129 trust", 'invalid CIDR mask in address "::1/129"'),
    ("host all all 10.0.0.0/x trust", 'invalid CIDR mask in address "10.0.0.0/x"'),
    ("host all all 10.0.0.0/ trust", 'invalid CIDR mask in address "10.0.0.0/"'),
    ("host all all 10.0.0.0/-1 trust", 'invalid CIDR mask in address "10.0.0.0/-1"'),
    (f"host all all ::1/{'1' * 5000} trust", f'invalid CIDR mask in address "::1/{"1" * 5000}"'),
    (
        "host all all db.example.com/24 trust",
        'specifying both host name and CIDR mask is invalid: "db.example.com/24"',
    ),
    ("host all all 10.0.0.0", "end-of-line before netmask specification"),
    (
        "host all all 10.0.0.0 255.0.0.0,255.255.0.0 trust",
        "multiple values specified for netmask",
    ),
    ("host all all 10.0.0.0 bogus trust", 'invalid IP mask "bogus": Name or service not known'),
    ("host all all 10.0.0.0 ffff:: trust", "IP address and mask do not match"),
    ("host all all 10.0.0.0/8", "end-of-line before authentication method"),
    ("host all all all trust,md5", "multiple values specified for authentication type"),
    ("host all all all foo", 'invalid authentication method "foo"'),
    ("host all all all peer", "peer authentication is only supported on local sockets"),
    ("local all all gss", "gssapi authentication is not supported on local sockets"),
    ("host all all all cert", "cert authentication is only supported on hostssl connections"),
    (
        "host all all all trust clientcert=verify-ca",
        'clientcert can only be configured for "hostssl" rows',
    ),
    (
        "hostnossl all all all trust clientname=DN",
        'clientname can only be configured for "hostssl" rows',
    ),
    ("hostssl all all all trust clientcert=1", 'invalid value for clientcert: "1"'),
    ("hostssl all all all trust clientcert=no-verify", 'invalid value for clientcert: "no-verify"'),
    ("hostssl all all all trust clientname=cn", 'invalid value for clientname: "cn"'),
    (
        "hostssl all all all cert clientcert=verify-ca",
        'clientcert only accepts "verify-full" when using "cert" authentication',
    ),
    ("host all all all trust foo", "authentication option not in name=value format: foo"),
    ("host all all all trust foo=bar", 'unrecognized authentication option name: "foo"'),
    (
        "host all all all md5 map=m",
        'authentication option "map" is only valid for authentication methods'
        " ident, peer, gssapi, sspi, and cert",
    ),
    (
        "local all all pam ldapserver=x",
        'authentication option "ldapserver" is only valid for authentication methods ldap',
    ),
    (
        "local all all ldap",
        'authentication method "ldap" requires argument "ldapbasedn", "ldapprefix",'
        ' or "ldapsuffix" to be set',
    ),
    (
        "local all all ldap ldapprefix=cn= ldapbasedn=dc=x",
        "cannot mix options for simple bind and search+bind modes",
    ),
    (
        "local all all ldap ldapbasedn=dc=x ldapsearchattribute=uid ldapsearchfilter=(a)",
        "cannot use ldapsearchattribute together with ldapsearchfilter",
    ),
    ("local all all ldap ldapbasedn=dc=x ldapport=ldap", 'invalid LDAP port number: "ldap"'),
    ("local all all ldap ldapurl=http://x/dc=y", "unsupported LDAP URL scheme: http"),
    (
        "local all all radius radiussecrets=s",
        'authentication method "radius" requires argument "radiusservers" to be set',
    ),
    (
        'local all all radius "radiusservers=a,b" "radiussecrets=x,y,z"',
        "the number of RADIUS secrets (3) must be 1 or the same as the number of"
        " RADIUS servers (2)",
    ),
    (
        "local all all radius radiusservers=a radiussecrets=s radiusports=x",
        'invalid RADIUS port number: "x"',
    ),
    # What pgtls cannot honour on a line that could match.
    ("host all all all ident", 'invalid authentication method "ident": not supported by pgtls'),
    (
        "host all all all ldap ldapbasedn=dc=x",
        'invalid authentication method "ldap": not supported by pgtls',
    ),
    (
        "hostnossl all all all radius radiusservers=a radiussecrets=s",
        'invalid authentication method "radius": not supported by pgtls',
    ),
    ("hostssl all all all pam", 'invalid authentication method "pam": not supported by pgtls'),
    ("host all all all gss", 'invalid authentication method "gss": not supported by pgtls'),
    ("host all all all sspi", 'invalid authentication method "sspi": not supported by pgtls'),
    ("hostnogssenc all all all bsd", 'invalid authentication method "bsd": not supported by pgtls'),
    ("host samerole all all trust", 'database keyword "samerole" is not supported by pgtls'),
    ("host db,samegroup all all md5", 'database keyword "samegroup" is not supported by pgtls'),
    (
        "host all alice,+admins all trust",
        'group membership check "+admins" is not supported by pgtls',
    ),
]


@pytest.mark.parametrize(("line", "reason"), HBA_ERRORS)
def test_hba_line_errors(tmp_path: Path, line: str, reason: str) -> None:
    """Each malformed or unsupported line fails with its reason at FILE:LINE."""
    error = load_error(tmp_path, f"# header\n{line}\n")
    assert str(error) == f"{tmp_path / 'pg_hba.conf'}:2: {reason}"


@pytest.mark.parametrize(
    ("line", "reason_start"),
    [
        ('host "/(" all all trust', 'invalid regular expression "(": '),
        ("host all /a[b all trust", 'invalid regular expression "a[b": brackets [] not balanced'),
        (
            "host /[[:bogus:]] all all trust",
            'invalid regular expression "[[:bogus:]]": invalid character class',
        ),
        ('local "/a{2,1}" all trust', 'invalid regular expression "a{2,1}": invalid repetition'),
        ("local /a{2,1} all trust", 'invalid regular expression "a{2": braces {} not balanced'),
        ("local /a{256} all trust", 'invalid regular expression "a{256}": invalid repetition'),
    ],
)
def test_bad_regex_is_an_error(tmp_path: Path, line: str, reason_start: str) -> None:
    """A /regex that does not compile is PostgreSQL's invalid regular expression error."""
    error = load_error(tmp_path, line + "\n")
    assert error.line == 1
    assert error.reason.startswith(reason_start)


@pytest.mark.parametrize(
    ("ident", "reason"),
    [
        ("m", "missing entry at end of line"),
        ("m alice", "missing entry at end of line"),
        ("m,n alice bob", "multiple values in ident field"),
        ("m alice bob,carol", "multiple values in ident field"),
        ("m /( bob", 'invalid regular expression "(": '),
        ("m alice +admins", 'group membership check "+admins" is not supported by pgtls'),
    ],
)
def test_ident_line_errors(tmp_path: Path, ident: str, reason: str) -> None:
    """pg_ident.conf errors name pg_ident.conf and the line."""
    error = load_error(tmp_path, "hostssl all all all cert map=m\n", f"# maps\n{ident}\n")
    assert error.path == str(tmp_path / "pg_ident.conf")
    assert error.line == 2
    assert error.reason.startswith(reason)


LINE_PARTS = st.sampled_from(
    [
        "host",
        "hostssl",
        "hostnossl",
        "hostgssenc",
        "hostnogssenc",
        "local",
        "all",
        "sameuser",
        "samerole",
        "replication",
        "samehost",
        "samenet",
        "127.0.0.1/32",
        "::1/128",
        "10.0.0.0",
        "255.0.0.0",
        "1.2.3.4/99",
        "db.example.com",
        ".example.com",
        "trust",
        "reject",
        "md5",
        "cert",
        "ident",
        "ldap",
        "radius",
        "map=m",
        "clientcert=verify-ca",
        "clientcert=verify-full",
        "clientname=DN",
        "ldapbasedn=x",
        "radiusservers=a,b",
        "radiussecrets=s",
        "include",
        "include_if_exists",
        "include_dir",
        "@",
        "@x",
        "+r",
        "/^a",
        "/(",
        "/[[:alpha:]]",
        '"',
        '""',
        "#",
        ",",
        "=",
        "\\",
        "\\\n",
        "\r",
        "\0",
        "9" * 5000,
        "10.0.0." + "7" * 5000,
        "/" + "8" * 5000,
        "0x" + "f" * 5000,
    ]
)
LINES = st.one_of(
    st.lists(
        st.tuples(LINE_PARTS, st.sampled_from([" ", "\t", ",", ""])).map("".join), max_size=9
    ).map("".join),
    st.text(max_size=60),
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(LINES, min_size=1, max_size=3))
def test_any_text_gives_rules_or_hba_error(tmp_path: Path, lines: list[str]) -> None:
    """Whatever the lines, loading gives Rules or HbaError, and matching never raises."""
    write(tmp_path, "x", "alice\n")
    try:
        rules = load(tmp_path, "\n".join(lines) + "\n", "m /^(a)(.*)$ \\1\nm x all\n")
    except HbaError as error:
        assert str(error).startswith(str(tmp_path))
        return
    for address in ("127.0.0.1", "::ffff:10.1.2.3", "::1"):
        for ssl in (False, True):
            decision = rules.match(client(address, ssl=ssl, cert=ALICE if ssl else None))
            assert isinstance(decision, Admission | Refusal)


# ---------------------------------------------------------------------------
# Matching: connection types and addresses


@pytest.mark.parametrize(
    ("kind", "plain", "ssl"),
    [
        ("host", True, True),
        ("hostssl", False, True),
        ("hostnossl", True, False),
        ("hostnogssenc", True, True),
        ("hostgssenc", False, False),
    ],
)
def test_connection_types(tmp_path: Path, kind: str, plain: bool, ssl: bool) -> None:
    """Which line types match plaintext and SSL connections."""
    rules = load(tmp_path, f"{kind} all all all trust\n")
    assert isinstance(rules.match(client(ssl=False)), Admission) is plain
    assert isinstance(rules.match(client(ssl=True)), Admission) is ssl


@pytest.mark.parametrize(
    ("address", "client_address", "matches"),
    [
        ("127.0.0.1/32", "127.0.0.1", True),
        ("127.0.0.1/32", "127.0.0.2", False),
        ("10.0.0.0/8", "10.255.1.1", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("10.1.2.3/8", "10.9.9.9", True),
        ("0.0.0.0/0", "203.0.113.9", True),
        ("0.0.0.0/+0", "203.0.113.9", True),
        ("0/0", "203.0.113.9", True),
        (f"10.0.0.{'0' * 5000}1/32", "10.0.0.1", True),
        ("10.0.0.0 255.0.0.0", "10.1.1.1", True),
        ("10.0.0.0 255.0.0.0", "172.16.0.1", False),
        ("10.0.0.1 255.0.255.255", "10.7.0.1", True),
        ("10.0.0.1 255.0.255.255", "10.7.0.2", False),
        ("127.1/32", "127.0.0.1", True),
        ("0x7f.0.0.1/32", "127.0.0.1", True),
        ("010.0.0.1/32", "8.0.0.1", True),
        ("127.0.0.1/32", "::ffff:127.0.0.1", True),
        ("10.0.0.0 255.0.0.0", "::ffff:10.2.3.4", True),
        ("::ffff:0:0/96", "::ffff:192.0.2.1", True),
        ("::1/128", "::1", True),
        ("fe80::1%eth0/128", "fe80::1", True),
        ("2001:db8::/32", "2001:db8:1::5", True),
        ("2001:db8:: ffff:ffff::", "2001:db9::1", False),
        ("::1/128", "127.0.0.1", False),
        ("127.0.0.1/32", "::1", False),
        ("0.0.0.0/0", "2001:db8::1", False),
        ("::/0", "127.0.0.1", False),
        ("all", "2001:db8::1", True),
        ("all", "198.51.100.7", True),
    ],
)
def test_address_matching(tmp_path: Path, address: str, client_address: str, matches: bool) -> None:
    """CIDR, address plus mask, legacy IPv4 forms, IPv6, IPv4-mapped clients, all."""
    rules = load(tmp_path, f"host all all {address} trust\n")
    assert isinstance(rules.match(client(client_address)), Admission) is matches


@pytest.mark.parametrize(
    ("address", "client_address", "matches"),
    [
        ("samehost", "192.0.2.2", True),
        ("samehost", "192.0.2.3", False),
        ("samehost", "::ffff:192.0.2.2", True),
        ("samehost", "fd00::2", True),
        ("samehost", "fd00::3", False),
        ("samenet", "192.0.2.200", True),
        ("samenet", "127.9.9.9", True),
        ("samenet", "198.51.100.1", False),
        ("samenet", "::ffff:192.0.2.9", True),
        ("samenet", "fd00::abcd", True),
        ("samenet", "fd01::1", False),
    ],
)
def test_samehost_and_samenet(
    tmp_path: Path, address: str, client_address: str, matches: bool
) -> None:
    """samehost is an interface address; samenet is inside an interface's network."""
    rules = load(tmp_path, f"host all all {address} trust\n")
    assert isinstance(rules.match(client(client_address)), Admission) is matches


def test_quoted_address_keyword_is_a_host_name(tmp_path: Path) -> None:
    """A quoted "all" in the address column is a host name, not the keyword."""
    rules = load(tmp_path, 'host all all "all" trust\n')
    assert rules.needs_hostname
    assert refused(rules.match(client()))
    assert admitted(rules.match(client(hostname="ALL")))


@pytest.mark.parametrize(
    ("pattern", "hostname", "matches"),
    [
        ("db.example.com", "db.example.com", True),
        ("db.example.com", "DB.Example.COM", True),
        ("db.example.com", "web.example.com", False),
        (".example.com", "a.b.example.com", True),
        (".example.com", "example.com", False),
        (".example.com", "badexample.com", False),
        ("db.example.com", None, False),
    ],
)
def test_host_names(tmp_path: Path, pattern: str, hostname: str | None, matches: bool) -> None:
    """Host names compare case-insensitively with the verified name; .suffix matches the end."""
    rules = load(tmp_path, f"host all all {pattern} trust\n")
    assert rules.needs_hostname
    assert isinstance(rules.match(client(hostname=hostname)), Admission) is matches


def test_needs_hostname_only_for_lines_that_can_match(tmp_path: Path) -> None:
    """Numeric, keyword and never-matching (hostgssenc) lines need no look-up."""
    rules = load(
        tmp_path,
        "host all all 10.0.0.0/8 trust\nhost all all samenet trust\n"
        "hostgssenc all all db.example.com trust\n",
    )
    assert not rules.needs_hostname


# ---------------------------------------------------------------------------
# Matching: databases and users


@pytest.mark.parametrize(
    ("databases", "database", "user", "matches"),
    [
        ("all", "anything", "alice", True),
        ("sameuser", "alice", "alice", True),
        ("sameuser", "bob", "alice", False),
        ('"sameuser"', "sameuser", "alice", True),
        ('"all"', "anything", "alice", False),
        ('"all"', "all", "alice", True),
        ("replication", "replication", "alice", False),
        ('"replication"', "replication", "alice", True),
        ("a,b", "b", "alice", True),
        ('"a,b"', "a,b", "alice", True),
        ('"a,b"', "a", "alice", False),
        ("Sales", "sales", "alice", False),
        ("/^test_[0-9]+$", "test_12", "alice", True),
        ("/^test_[0-9]+$", "test_x", "alice", False),
        ("/^test_[0-9]+$", "test_12\n", "alice", False),
        ("/foo", "barfoobar", "alice", True),
        ('"/^x"', "xyz", "alice", True),
        ("/^[[:digit:]]+$", "2024", "alice", True),
        ("/^[[:digit:]]+$", "20a4", "alice", False),
        ("/^\\w+$", "caf\u00e9", "alice", False),
        ("/\\mdb\\M", "my db here", "alice", True),
        ("/\\mdb\\M", "mydb", "alice", False),
        ("/***=a.b", "a.b", "alice", True),
        ("/***=a.b", "axb", "alice", False),
        ("/[a&&b]", "&", "alice", True),
    ],
)
def test_database_column(
    tmp_path: Path, databases: str, database: str, user: str, matches: bool
) -> None:
    """Database keywords, quoting, lists and ARE regexes."""
    rules = load(tmp_path, f"host {databases} all all trust\n")
    decision = rules.match(client(database=database, user=user))
    assert isinstance(decision, Admission) is matches


@pytest.mark.parametrize(
    ("databases", "matches"),
    [("replication", True), ("all", False), ("/.*", False), ("sameuser", False)],
)
def test_physical_replication_matches_only_the_keyword(
    tmp_path: Path, databases: str, matches: bool
) -> None:
    """A physical replication connection matches only the replication keyword."""
    rules = load(tmp_path, f"host {databases} all all trust\n")
    decision = rules.match(client(database="alice", replication=True))
    assert isinstance(decision, Admission) is matches


@pytest.mark.parametrize(
    ("users", "user", "matches"),
    [
        ("all", "anyone", True),
        ("alice,bob", "bob", True),
        ("alice,bob", "carol", False),
        ("Alice", "alice", False),
        ('"+admins"', "+admins", True),
        ('"all"', "anyone", False),
        ("sameuser", "sameuser", True),
        ("/^app_", "app_web", True),
        ("/^app_", "webapp_", False),
        ("/(?i)^ADMIN$", "admin", True),
    ],
)
def test_user_column(tmp_path: Path, users: str, user: str, matches: bool) -> None:
    """User keywords, quoting, lists and regexes."""
    rules = load(tmp_path, f"host all {users} all trust\n")
    assert isinstance(rules.match(client(user=user)), Admission) is matches


def test_first_match_wins(tmp_path: Path) -> None:
    """The first matching line decides, even a reject before a trust."""
    rules = load(
        tmp_path,
        "host all bob all reject\nhost all all 127.0.0.1/32 trust\nhost all all all md5\n",
    )
    assert refused(rules.match(client(user="bob"))).sqlstate == "28000"
    assert admitted(rules.match(client(user="alice"))).method == "trust"
    admission = admitted(rules.match(client("10.0.0.1", user="alice")))
    assert (admission.method, admission.line_number) == ("md5", 3)
    assert admission.line_text == "host all all all md5"
    assert admission.file == str(tmp_path / "pg_hba.conf")


# ---------------------------------------------------------------------------
# Methods and refusals


@pytest.mark.parametrize("method", ["trust", "md5", "scram-sha-256", "password"])
def test_admitting_methods(tmp_path: Path, method: str) -> None:
    """trust and the password methods admit; the upstream does any password exchange."""
    rules = load(tmp_path, f"host all all all {method}\n")
    assert admitted(rules.match(client())) == Admission(
        method, str(tmp_path / "pg_hba.conf"), 1, f"host all all all {method}", None
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {},
            'no pg_hba.conf entry for host "10.9.8.7", user "alice", database "db", no encryption',
        ),
        (
            {"ssl": True},
            'no pg_hba.conf entry for host "10.9.8.7", user "alice", database "db", SSL encryption',
        ),
        (
            {"replication": True},
            'no pg_hba.conf entry for replication connection from host "10.9.8.7",'
            ' user "alice", no encryption',
        ),
    ],
)
def test_no_entry(tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    """No matching line: PostgreSQL's implicit-reject FATAL, 28000."""
    rules = load(tmp_path, "host all all 127.0.0.1/32 trust\n")
    assert rules.match(client("10.9.8.7", **fields)) == Refusal(
        "28000", message, None, kind=RefusalKind.NO_HBA_ENTRY
    )


def test_no_entry_logs_the_host_name(tmp_path: Path) -> None:
    """When a host name was looked up, the log detail says what it resolved to."""
    rules = load(tmp_path, "host all all db.example.com trust\n")
    refusal = refused(rules.match(client("10.9.8.7", hostname="web.example.com")))
    assert refusal.log_detail == (
        'Client IP address resolved to "web.example.com", forward lookup matches.'
    )


def test_ipv6_host_in_messages(tmp_path: Path) -> None:
    """The host in a refusal is the numeric client address."""
    rules = load(tmp_path, "host all all 127.0.0.1/32 trust\n")
    assert refused(rules.match(client("2001:db8::1", ssl=True))).message == (
        'no pg_hba.conf entry for host "2001:db8::1", user "alice", database "db", SSL encryption'
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {},
            'pg_hba.conf rejects connection for host "127.0.0.1", user "alice", database "db",'
            " no encryption",
        ),
        (
            {"ssl": True},
            'pg_hba.conf rejects connection for host "127.0.0.1", user "alice", database "db",'
            " SSL encryption",
        ),
        (
            {"replication": True, "database": "replication"},
            'pg_hba.conf rejects replication connection for host "127.0.0.1", user "alice",'
            " SSL encryption",
        ),
    ],
)
def test_reject(tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    """An explicit reject line: PostgreSQL's FATAL, 28000, the line in the log detail."""
    rules = load(tmp_path, "host all,replication all all reject\n")
    if fields.get("replication"):
        fields["ssl"] = True
    refusal = refused(rules.match(client(**fields)))
    assert (refusal.sqlstate, refusal.message) == ("28000", message)
    assert refusal.log_detail == (
        f'Connection matched file "{tmp_path / "pg_hba.conf"}" line 1:'
        ' "host all,replication all all reject"'
    )


@pytest.mark.parametrize(
    ("hba_text", "fields", "client_ca_loaded", "kind"),
    [
        ("host all bob all trust\n", {}, True, RefusalKind.NO_HBA_ENTRY),
        ("host all all all reject\n", {}, True, RefusalKind.HBA_REJECT),
        ("hostssl all all all cert\n", {"ssl": True}, True, RefusalKind.CLIENT_CERT_REQUIRED),
        (
            "hostssl all all all cert\n",
            {"ssl": True, "cert": ALICE},
            False,
            RefusalKind.CLIENT_CA_MISSING,
        ),
        (
            "hostssl all all all cert\n",
            {"ssl": True, "cert": BOB},
            True,
            RefusalKind.CERT_AUTH_FAILED,
        ),
        (
            "hostssl all all all md5 clientcert=verify-full\n",
            {"ssl": True, "cert": BOB},
            True,
            RefusalKind.CERT_AUTH_FAILED,
        ),
    ],
)
def test_refusal_kinds(
    tmp_path: Path,
    hba_text: str,
    fields: dict[str, Any],
    client_ca_loaded: bool,
    kind: RefusalKind,
) -> None:
    """Each way of refusing says which it is as a typed kind, whatever the message's words."""
    hba_path = write(tmp_path, "pg_hba.conf", hba_text)
    rules = load_rules(
        hba_path,
        str(tmp_path / "pg_ident.conf"),
        ssl_enabled=True,
        client_ca_loaded=client_ca_loaded,
        local_networks=NETWORKS,
    )
    assert refused(rules.match(client(**fields))).kind is kind


# ---------------------------------------------------------------------------
# cert and clientcert


def test_cert_admits_matching_cn_with_dn_identity(tmp_path: Path) -> None:
    """cert without map: the CN must equal the user; the identity is the DN."""
    rules = load(tmp_path, "hostssl all all all cert\n")
    admission = admitted(rules.match(client(ssl=True, cert=ALICE)))
    assert (admission.method, admission.identity) == ("cert", "CN=alice,O=Test")


def test_cert_authenticates_the_dn_at_its_line(tmp_path: Path) -> None:
    """cert: the DN is authenticated by the matching line (file and number), typed."""
    rules = load(
        tmp_path, "hostssl all all all trust clientcert=verify-full\nhostssl all all all cert\n"
    )
    plain = admitted(rules.match(client(ssl=True, cert=ALICE, database="other")))
    assert plain.authenticated is None  # verify-full with trust: set_authn_id is not called
    rules = load(tmp_path, "host all bob all trust\nhostssl all all all cert\n")
    assert admitted(rules.match(client(ssl=True, cert=ALICE))).authenticated == Authenticated(
        identity="CN=alice,O=Test",
        method="cert",
        file=str(tmp_path / "pg_hba.conf"),
        line_number=2,
    )
    assert admitted(rules.match(client(ssl=True, cert=BOB, user="bob"))).authenticated is None


def test_cert_authenticates_before_the_map_refuses(tmp_path: Path) -> None:
    """cert: a CN that does not map is refused, but its DN was authenticated first (logged)."""
    rules = load(tmp_path, "hostssl all all all cert\n")
    refusal = refused(rules.match(client(ssl=True, cert=BOB)))
    assert refusal.authenticated == Authenticated(
        "CN=bob,O=Test", "cert", str(tmp_path / "pg_hba.conf"), 1
    )
    # No name to map: refused before anything is authenticated.
    nameless = refused(rules.match(client(ssl=True, cert=ClientCert(None, "O=Test"))))
    assert nameless.authenticated is None
    # verify-full with another method authenticates nothing, even on a mismatch.
    rules = load(tmp_path, "hostssl all all all trust clientcert=verify-full\n")
    assert refused(rules.match(client(ssl=True, cert=BOB))).authenticated is None
    # A refusal that is not the method's (no entry, reject) authenticates no one.
    assert refused(rules.match(client(ssl=False))).authenticated is None


def test_cert_refuses_another_cn(tmp_path: Path) -> None:
    """cert: a CN that is not the user is PostgreSQL's certificate failure, reason logged."""
    rules = load(tmp_path, "hostssl all all all cert\n")
    refusal = refused(rules.match(client(ssl=True, cert=BOB)))
    assert (refusal.sqlstate, refusal.message) == (
        "28000",
        'certificate authentication failed for user "alice"',
    )
    assert refusal.log_detail == (
        "provided user name (alice) and authenticated user name (bob) do not match\n"
        f'Connection matched file "{tmp_path / "pg_hba.conf"}" line 1: "hostssl all all all cert"'
    )


def test_cert_without_cn(tmp_path: Path) -> None:
    """cert: a certificate without CN has no user name."""
    rules = load(tmp_path, "hostssl all all all cert\n")
    refusal = refused(rules.match(client(ssl=True, cert=ClientCert(None, "O=Test"))))
    assert refusal.message == 'certificate authentication failed for user "alice"'
    assert refusal.log_detail is not None
    assert refusal.log_detail.startswith(
        'certificate authentication failed for user "alice": client certificate contains'
        " no user name"
    )


def test_cert_requires_a_certificate(tmp_path: Path) -> None:
    """cert without a (verified) client certificate: PostgreSQL's 28000 refusal."""
    rules = load(tmp_path, "hostssl all all all cert\n")
    refusal = refused(rules.match(client(ssl=True)))
    assert (refusal.sqlstate, refusal.message) == (
        "28000",
        "connection requires a valid client certificate",
    )


def test_cert_requires_a_root_store(tmp_path: Path) -> None:
    """cert or clientcert without a loaded CA: PostgreSQL's F0000 refusal."""
    for line in ("hostssl all all all cert", "hostssl all all all md5 clientcert=verify-ca"):
        rules = load(tmp_path, line + "\n", client_ca_loaded=False)
        refusal = refused(rules.match(client(ssl=True, cert=ALICE)))
        assert (refusal.sqlstate, refusal.message) == (
            "F0000",
            "client certificates can only be checked if a root certificate store is available",
        )


def test_cert_with_plain_map(tmp_path: Path) -> None:
    """map=: a plain pg_ident.conf entry lets a CN act as another user; others are refused."""
    rules = load(
        tmp_path,
        "hostssl all all all cert map=staff\n",
        "other alice carol\nstaff alice bob\nstaff alice alice\n",
    )
    assert admitted(rules.match(client(ssl=True, cert=ALICE, user="bob")))
    assert admitted(rules.match(client(ssl=True, cert=ALICE, user="alice")))
    refusal = refused(rules.match(client(ssl=True, cert=ALICE, user="carol")))
    assert refusal.log_detail is not None
    assert refusal.log_detail.startswith(
        'no match in usermap "staff" for user "carol" authenticated as "alice"'
    )


def test_cert_map_keywords_and_regexes(tmp_path: Path) -> None:
    """PG-USERNAME may be all or a /regex; SYSTEM-USERNAME a /regex with \\1."""
    rules = load(
        tmp_path,
        "hostssl all all all cert map=m\n",
        "m root all\nm alice /^app_\n"
        "m /^(.*)@example\\.com$ \\1\nm /^(.*)@example\\.com$ x_\\1_y\n",
    )
    root = ClientCert("root", "CN=root")
    assert admitted(rules.match(client(ssl=True, cert=root, user="anyone")))
    assert admitted(rules.match(client(ssl=True, cert=ALICE, user="app_web")))
    refused(rules.match(client(ssl=True, cert=ALICE, user="web")))
    mailed = ClientCert("bob@example.com", "CN=bob@example.com")
    assert admitted(rules.match(client(ssl=True, cert=mailed, user="bob")))
    assert admitted(rules.match(client(ssl=True, cert=mailed, user="x_bob_y")))
    refused(rules.match(client(ssl=True, cert=mailed, user="bob@example.com")))


def test_cert_map_substitution_is_literal(tmp_path: Path) -> None:
    """A name made by \\1 is compared literally, never as the keyword all."""
    rules = load(tmp_path, "hostssl all all all cert map=m\n", "m /^(.*)$ \\1\n")
    everyone = ClientCert("all", "CN=all")
    assert refused(rules.match(client(ssl=True, cert=everyone, user="alice")))
    assert admitted(rules.match(client(ssl=True, cert=everyone, user="all")))


def test_cert_map_backreference_without_group(tmp_path: Path) -> None:
    """\\1 with a regex that has no group stops the map with PostgreSQL's reason."""
    rules = load(tmp_path, "hostssl all all all cert map=m\n", "m /^alice$ \\1\nm alice alice\n")
    refusal = refused(rules.match(client(ssl=True, cert=ALICE)))
    assert refusal.log_detail is not None
    assert refusal.log_detail.startswith(
        'regular expression "^alice$" has no subexpressions as requested by backreference in "\\1"'
    )


def test_clientname_dn_with_regex_map(tmp_path: Path) -> None:
    """clientname=DN maps the RFC 2253 subject DN instead of the CN."""
    rules = load(
        tmp_path,
        "hostssl all all all cert clientname=DN map=dn\n",
        'dn "/^CN=([^,]+),O=Test$" \\1\n',
    )
    assert admitted(rules.match(client(ssl=True, cert=ALICE))).identity == "CN=alice,O=Test"
    other = ClientCert("alice", "CN=alice,O=Other")
    assert refused(rules.match(client(ssl=True, cert=other)))


def test_clientname_dn_without_map_needs_the_whole_dn(tmp_path: Path) -> None:
    """clientname=DN without map: the user must be the whole DN."""
    rules = load(tmp_path, "hostssl all all all cert clientname=DN\n")
    assert refused(rules.match(client(ssl=True, cert=ALICE)))
    assert admitted(rules.match(client(ssl=True, cert=ALICE, user="CN=alice,O=Test")))


def test_clientcert_verify_ca(tmp_path: Path) -> None:
    """verify-ca: any verified certificate will do; none is refused."""
    rules = load(tmp_path, "hostssl all all all scram-sha-256 clientcert=verify-ca\n")
    assert admitted(rules.match(client(ssl=True, cert=BOB))).method == "scram-sha-256"
    refusal = refused(rules.match(client(ssl=True)))
    assert (refusal.sqlstate, refusal.message) == (
        "28000",
        "connection requires a valid client certificate",
    )


@pytest.mark.parametrize(
    ("method", "sqlstate", "message"),
    [
        ("trust", "28000", '"trust" authentication failed for user "alice"'),
        ("md5", "28P01", 'password authentication failed for user "alice"'),
        ("scram-sha-256", "28P01", 'password authentication failed for user "alice"'),
        ("password", "28P01", 'password authentication failed for user "alice"'),
    ],
)
def test_clientcert_verify_full(tmp_path: Path, method: str, sqlstate: str, message: str) -> None:
    """verify-full: the CN must map to the user; a mismatch fails as the method does."""
    rules = load(tmp_path, f"hostssl all all all {method} clientcert=verify-full\n")
    admission = admitted(rules.match(client(ssl=True, cert=ALICE)))
    assert (admission.method, admission.identity) == (method, None)
    refusal = refused(rules.match(client(ssl=True, cert=BOB)))
    assert (refusal.sqlstate, refusal.message) == (sqlstate, message)
    assert refusal.log_detail is not None
    assert refusal.log_detail.split("\n")[:2] == [
        "provided user name (alice) and authenticated user name (bob) do not match",
        'certificate validation (clientcert=verify-full) failed for user "alice": CN mismatch',
    ]
    assert refused(rules.match(client(ssl=True))).message == (
        "connection requires a valid client certificate"
    )


def test_clientcert_verify_full_dn(tmp_path: Path) -> None:
    """verify-full with clientname=DN compares the DN; a mismatch logs DN mismatch."""
    rules = load(tmp_path, "hostssl all all all trust clientcert=verify-full clientname=DN\n")
    assert admitted(rules.match(client(ssl=True, cert=ALICE, user="CN=alice,O=Test")))
    refusal = refused(rules.match(client(ssl=True, cert=BOB, user="CN=alice,O=Test")))
    assert refusal.log_detail is not None
    assert "DN mismatch" in refusal.log_detail


def test_clientcert_is_checked_before_reject(tmp_path: Path) -> None:
    """As in auth.c, a reject line with clientcert asks for the certificate first."""
    rules = load(tmp_path, "hostssl all all all reject clientcert=verify-ca\n")
    assert refused(rules.match(client(ssl=True))).message == (
        "connection requires a valid client certificate"
    )
    assert refused(rules.match(client(ssl=True, cert=ALICE))).message.startswith(
        "pg_hba.conf rejects connection"
    )


# ---------------------------------------------------------------------------
# pgtls.server._ifaddrs and pgtls.core.hba._hostname


def test_local_networks_include_loopback() -> None:
    """This machine's interfaces, with netmasks, include IPv4 loopback."""
    networks = _ifaddrs.local_networks()
    assert ipaddress.ip_interface("127.0.0.1/8") in networks
    assert all(isinstance(n, ipaddress.IPv4Interface | ipaddress.IPv6Interface) for n in networks)


def test_local_networks_fall_back_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """When getifaddrs fails, the loopback interfaces are the answer."""

    def fail() -> list[_ifaddrs.Interface]:
        raise OSError(12, "no memory")

    monkeypatch.setattr(_ifaddrs, "_getifaddrs", fail)
    assert _ifaddrs.local_networks() == list(_ifaddrs.LOOPBACK)


def test_prefix_length() -> None:
    """Contiguous netmasks give their prefix length; others none."""
    assert _ifaddrs._prefix_length(0xFFFFFF00, 32) == 24
    assert _ifaddrs._prefix_length(0, 32) == 0
    assert _ifaddrs._prefix_length(0xFF00FF00, 32) is None


class FakeResolver:
    """socket.getnameinfo / getaddrinfo stand-ins with fixed answers."""

    def __init__(self, names: dict[str, str], addresses: dict[str, list[str]]) -> None:
        self.names = names
        self.addresses = addresses
        self.asked: list[str] = []

    def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
        assert flags == socket.NI_NAMEREQD
        self.asked.append(sockaddr[0])
        if sockaddr[0] not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.names[sockaddr[0]], "0"

    def getaddrinfo(self, host: str, port: None) -> list[tuple[Any, ...]]:
        if host not in self.addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        result = []
        for address in self.addresses[host]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            result.append((family, socket.SOCK_STREAM, 6, "", (address, 0)))
        return result


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> FakeResolver:
    """Answer look-ups from a fixed table instead of DNS."""
    fake = FakeResolver(
        names={"192.0.2.7": "db.example.com", "192.0.2.8": "liar.example.com", "2001:db8::7": "v6"},
        addresses={
            "db.example.com": ["2001:db8::1", "192.0.2.7"],
            "liar.example.com": ["192.0.2.99"],
            "v6": ["2001:db8::7"],
        },
    )
    monkeypatch.setattr(socket, "getnameinfo", fake.getnameinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


def test_hostname_forward_lookup_must_match(resolver: FakeResolver) -> None:
    """The reverse name counts only if its forward look-up gives the address back."""
    assert hba.resolve_client_hostname(ipaddress.ip_address("192.0.2.7")) == "db.example.com"
    assert hba.resolve_client_hostname(ipaddress.ip_address("2001:db8::7")) == "v6"
    assert hba.resolve_client_hostname(ipaddress.ip_address("192.0.2.8")) is None
    assert hba.resolve_client_hostname(ipaddress.ip_address("192.0.2.9")) is None


def test_hostname_of_mapped_address_uses_ipv4(resolver: FakeResolver) -> None:
    """An IPv4-mapped client is looked up as its IPv4 address."""
    assert hba.resolve_client_hostname(ipaddress.ip_address("::ffff:192.0.2.7")) == (
        "db.example.com"
    )
    assert resolver.asked == ["192.0.2.7"]


def test_rules_path_names_are_normalised(tmp_path: Path) -> None:
    """Included file names are joined to the including file's directory and normalised."""
    write(tmp_path, "a/b.conf", "host all all all trust\n")
    write(tmp_path, "c/pg_hba.conf", "include ../a/./b.conf\n")
    rules = load_rules(
        str(tmp_path / "c" / "pg_hba.conf"),
        str(tmp_path / "none"),
        ssl_enabled=True,
        client_ca_loaded=True,
    )
    assert admitted(rules.match(client())).file == os.path.join(str(tmp_path), "a", "b.conf")


def test_an_ipv4_mapped_address_is_the_ipv4_address_it_maps() -> None:
    """unmapped(): ::ffff:a.b.c.d is a.b.c.d; any other address is itself."""
    assert unmapped(ipaddress.ip_address("::ffff:192.0.2.7")) == ipaddress.ip_address("192.0.2.7")
    for other in ("192.0.2.7", "2001:db8::7", "::1"):
        assert unmapped(ipaddress.ip_address(other)) == ipaddress.ip_address(other)
