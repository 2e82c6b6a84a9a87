"""
Tests for pgtls.core.conninfo: libpq connection strings naming the upstream.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgtls.core.conninfo import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Upstream,
    format_conninfo,
    parse_conninfo,
)


@pytest.mark.parametrize(
    ("text", "upstream"),
    [
        ("", Upstream("/var/run/postgresql", 5432)),
        ("   ", Upstream("/var/run/postgresql", 5432)),
        ("host=/tmp", Upstream("/tmp", 5432)),
        ("host=localhost port=5433", Upstream("localhost", 5433)),
        ("host = localhost   port =5433", Upstream("localhost", 5433)),
        ("\thost=\tdb.example\n", Upstream("db.example", 5432)),
        ("port=6432", Upstream("/var/run/postgresql", 6432)),
        ("host='/run/my pg' port='5433'", Upstream("/run/my pg", 5433)),
        ("host='it\\'s' port=1", Upstream("it's", 1)),
        ("host='back\\\\slash'", Upstream("back\\slash", 5432)),
        ("host=a\\ b", Upstream("a b", 5432)),
        ("host=''", Upstream("/var/run/postgresql", 5432)),
        ("host=a host=b", Upstream("b", 5432)),
        ("port=' 5433 '", Upstream("/var/run/postgresql", 5433)),
        ("connect_timeout=10", Upstream("/var/run/postgresql", 5432, 10.0)),
        ("connect_timeout=0", Upstream("/var/run/postgresql", 5432, None)),
        ("connect_timeout=-1", Upstream("/var/run/postgresql", 5432, None)),
        ("hostaddr=127.0.0.1", Upstream("127.0.0.1", 5432, server_name="")),
        (
            "host=db.example hostaddr=::1 port=5433",
            Upstream("::1", 5433, server_name="db.example"),
        ),
        ("host=/tmp hostaddr=10.0.0.1", Upstream("10.0.0.1", 5432, server_name="/tmp")),
    ],
)
def test_keyword_value_form(text: str, upstream: Upstream) -> None:
    """libpq's keyword/value syntax: spaces around =, quotes, escapes, defaults, last wins."""
    assert parse_conninfo(text) == upstream


@pytest.mark.parametrize(
    ("text", "upstream"),
    [
        ("postgresql://", Upstream("/var/run/postgresql", 5432)),
        ("postgres://", Upstream("/var/run/postgresql", 5432)),
        ("postgresql://db.example", Upstream("db.example", 5432)),
        ("postgresql://db.example:5433", Upstream("db.example", 5433)),
        ("postgresql://db.example:5433/", Upstream("db.example", 5433)),
        ("postgresql://:5433", Upstream("/var/run/postgresql", 5433)),
        ("postgres://%2Fvar%2Frun%2Fpostgresql:5432", Upstream("/var/run/postgresql", 5432)),
        ("postgresql://%2Ftmp", Upstream("/tmp", 5432)),
        ("postgresql://[::1]:5433", Upstream("::1", 5433)),
        ("postgresql://[fe80::1%25eth0]", Upstream("fe80::1%eth0", 5432)),
        ("postgresql:///?host=/tmp&port=5433", Upstream("/tmp", 5433)),
        ("postgresql://h?connect_timeout=3", Upstream("h", 5432, 3.0)),
        ("postgresql://h?", Upstream("h", 5432)),
        ("postgresql://h?port=1&", Upstream("h", 1)),
        ("postgresql://@h", Upstream("h", 5432)),
    ],
)
def test_uri_form(text: str, upstream: Upstream) -> None:
    """libpq's URI form: host, port, bracketed IPv6, percent-encoding, query parameters."""
    assert parse_conninfo(text) == upstream


@pytest.mark.parametrize(
    "text",
    [
        "dbname=app",
        "host=/tmp user=alice",
        "application_name=x",
        "password=secret",
        "options='-c x=y'",
        "postgresql://alice@db.example",
        "postgresql://alice:pw@db.example",
        "postgresql://db.example/app",
        "postgresql://db.example?ssl=true",
        "postgresql://db.example?application_name=x",
    ],
)
def test_session_options_are_refused(text: str) -> None:
    """Options about the session are refused: pgtls relays the client's own startup packet."""
    with pytest.raises(ValueError, match=r"does not apply to pgtls\.upstream") as caught:
        parse_conninfo(text)
    message = str(caught.value)
    assert "relays each client's own startup packet" in message
    assert "only the keywords naming the server (host, hostaddr, port, connect_timeout)" in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host=a,b", 'multiple hosts are not supported by pgtls.upstream: host="a,b"'),
        ("hostaddr=1.1.1.1,2.2.2.2", "multiple hosts are not supported"),
        ("host=a port=1,2", 'multiple hosts are not supported by pgtls.upstream: port="1,2"'),
        ("postgresql://a,b", 'multiple hosts are not supported by pgtls.upstream: host="a,b"'),
        ("postgresql://a:1,b:2", "multiple hosts are not supported"),
    ],
)
def test_multiple_hosts_are_refused(text: str, message: str) -> None:
    """A host list, in either form, is refused with a message saying so."""
    with pytest.raises(ValueError, match="multiple hosts") as caught:
        parse_conninfo(text)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("host", 'missing "=" after "host" in connection info string'),
        ("host /tmp", 'missing "=" after "host" in connection info string'),
        ("host='/tmp", "unterminated quoted string in connection info string"),
        ("host='/tmp'x", 'missing "=" after "x" in connection info string'),
        ("bogus=1", 'invalid connection option "bogus"'),
        ("=1", 'invalid connection option ""'),
        ("port=x", 'invalid integer value "x" for connection option "port"'),
        ("port=5432x", 'invalid integer value "5432x" for connection option "port"'),
        ("port=0", 'invalid port number: "0"'),
        ("port=65536", 'invalid port number: "65536"'),
        (
            "port=99999999999999999999",
            'invalid integer value "99999999999999999999" for connection option "port"',
        ),
        (
            "connect_timeout=1.5",
            'invalid integer value "1.5" for connection option "connect_timeout"',
        ),
        ("hostaddr=db.example", 'could not parse network address "db.example"'),
        ("postgresql://h?bogus=1", 'invalid URI query parameter: "bogus"'),
        ("postgresql://h?port", 'missing key/value separator "=" in URI query parameter: "port"'),
        (
            "postgresql://h?port=1=2",
            'extra key/value separator "=" in URI query parameter: "port=1=2"',
        ),
        ("postgresql://%2", 'invalid percent-encoded token: "%2"'),
        ("postgresql://%zz", 'invalid percent-encoded token: "%zz"'),
        ("postgresql://a%00", 'forbidden value %00 in percent-encoded value: "a%00"'),
        (
            "postgresql://[::1",
            'end of string reached when looking for matching "]" in IPv6 host address in URI: '
            '"postgresql://[::1"',
        ),
        ("postgresql://[]", 'IPv6 host address may not be empty in URI: "postgresql://[]"'),
        (
            "postgresql://[::1]x",
            'unexpected character "x" at position 19 in URI (expected ":" or "/"): '
            '"postgresql://[::1]x"',
        ),
        ("postgresql://h:x", 'invalid integer value "x" for connection option "port"'),
    ],
)
def test_errors(text: str, message: str) -> None:
    """Malformed strings give libpq's messages as ValueError."""
    with pytest.raises(ValueError) as caught:
        parse_conninfo(text)
    assert str(caught.value) == message


def test_uri_prefix_is_case_sensitive() -> None:
    """Like libpq, only lower-case postgresql:// and postgres:// start a URI."""
    with pytest.raises(ValueError, match='missing "=" after "POSTGRESQL://h"'):
        parse_conninfo("POSTGRESQL://h")


def test_defaults() -> None:
    """The defaults are Debian's socket directory and PostgreSQL's port."""
    assert (DEFAULT_HOST, DEFAULT_PORT) == ("/var/run/postgresql", 5432)


def test_unix_socket_properties() -> None:
    """A host starting with / is a socket directory; the socket is DIR/.s.PGSQL.PORT."""
    upstream = parse_conninfo("host=/var/run/postgresql/ port=5433")
    assert upstream.is_unix
    assert upstream.unix_socket_path == "/var/run/postgresql/.s.PGSQL.5433"
    assert not parse_conninfo("host=localhost").is_unix


@pytest.mark.parametrize(
    ("upstream", "text"),
    [
        (Upstream("/var/run/postgresql", 5432), "host=/var/run/postgresql port=5432"),
        (Upstream("db.example", 6432, 10.0), "host=db.example port=6432 connect_timeout=10"),
        (Upstream("/run/my pg", 1), "host='/run/my pg' port=1"),
        (Upstream("it's\\", 1), "host='it\\'s\\\\' port=1"),
    ],
)
def test_format_conninfo(upstream: Upstream, text: str) -> None:
    """format_conninfo writes keyword/value text, quoting where libpq needs it."""
    assert format_conninfo(upstream) == text


@settings(max_examples=200, deadline=None)
@given(
    host=st.text(min_size=1, max_size=20).filter(lambda host: "," not in host and "\0" not in host),
    port=st.integers(1, 65535),
    timeout=st.one_of(st.none(), st.integers(1, 3600).map(float)),
)
def test_format_then_parse_round_trips(host: str, port: int, timeout: float | None) -> None:
    """Whatever the host name, parsing what format_conninfo wrote gives the same upstream."""
    upstream = Upstream(host, port, timeout)
    assert parse_conninfo(format_conninfo(upstream)) == upstream


@settings(max_examples=200, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=40),
        st.lists(
            st.sampled_from(
                [*"hostadrp_=' \\/:%@[],?&12", "postgresql://", "host=", "port=", "%2F", "%0"]
            ),
            max_size=12,
        ).map("".join),
    )
)
def test_any_text_gives_upstream_or_value_error(text: str) -> None:
    """Any string gives an Upstream or a ValueError, never another exception."""
    try:
        upstream = parse_conninfo(text)
    except ValueError as error:
        assert str(error)
    else:
        assert 1 <= upstream.port <= 65535
        assert upstream.host


# -- TLS keywords -------------------------------------------------------------


def test_tls_defaults_are_libpqs() -> None:
    """No TLS keyword: prefer, SNI on, postgres negotiation, TLSv1.2 at least."""
    upstream = parse_conninfo("host=db.example")
    assert upstream.sslmode == "prefer"
    assert upstream.sslsni
    assert upstream.sslnegotiation == "postgres"
    assert upstream.ssl_min_protocol_version == "TLSv1.2"
    assert upstream.ssl_max_protocol_version == ""
    assert upstream.uses_tls and not upstream.requires_tls


def test_tls_keywords_are_read() -> None:
    """Every TLS keyword libpq has for a client connection."""
    upstream = parse_conninfo(
        "host=db.example sslmode=verify-full sslrootcert=ca.crt sslcert=c.crt sslkey=c.key "
        "sslpassword=pw sslcrl=r.crl sslsni=0 sslnegotiation=direct "
        "ssl_min_protocol_version=tlsv1.3 ssl_max_protocol_version=TLSv1.3"
    )
    assert (upstream.sslmode, upstream.sslrootcert, upstream.sslcert, upstream.sslkey) == (
        "verify-full",
        "ca.crt",
        "c.crt",
        "c.key",
    )
    assert (upstream.sslpassword, upstream.sslcrl, upstream.sslsni) == ("pw", "r.crl", False)
    assert upstream.sslnegotiation == "direct"
    assert upstream.ssl_min_protocol_version == upstream.ssl_max_protocol_version == "TLSv1.3"
    assert "pw" not in repr(upstream)
    assert "pw" not in format_conninfo(upstream)


def test_unix_socket_never_uses_tls() -> None:
    """A Unix socket upstream: TLS is never tried, whatever the sslmode (libpq)."""
    upstream = parse_conninfo("host=/run/pg sslmode=require")
    assert not upstream.uses_tls and not upstream.requires_tls


def test_sslrootcert_system_means_verify_full() -> None:
    """libpq 16+: sslrootcert=system defaults sslmode to verify-full and refuses less."""
    assert parse_conninfo("host=db sslrootcert=system").sslmode == "verify-full"
    with pytest.raises(ValueError, match=r'weak sslmode "require" may not be used with sslroot'):
        parse_conninfo("host=db sslrootcert=system sslmode=require")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sslmode=on", 'invalid sslmode value: "on"'),
        ("sslnegotiation=tls", 'invalid sslnegotiation value: "tls"'),
        (
            "sslnegotiation=direct",
            'weak sslmode "prefer" may not be used with sslnegotiation=direct',
        ),
        ("sslsni=on", 'invalid sslsni value: "on"'),
        ("ssl_min_protocol_version=TLSv2", 'invalid ssl_min_protocol_version value: "TLSv2"'),
        ("ssl_max_protocol_version=SSLv3", 'invalid ssl_max_protocol_version value: "SSLv3"'),
        (
            "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
            "invalid SSL protocol version range",
        ),
        (
            "hostaddr=10.0.0.1 sslmode=verify-full",
            "host name must be specified for a verified SSL connection",
        ),
    ],
)
def test_bad_tls_values(text: str, message: str) -> None:
    """Values libpq refuses, with its messages."""
    with pytest.raises(ValueError) as caught:
        parse_conninfo(text)
    assert message in str(caught.value)


def test_relative_files_are_resolved_against_a_directory() -> None:
    """Relative file names are relative to the data directory; system is not a file."""
    from pgtls.core.conninfo import resolve_files

    upstream = resolve_files(
        parse_conninfo("host=db sslrootcert=system sslcert=c.crt sslkey=/k sslcrl=../r.crl"),
        "/srv/pgtls",
    )
    assert upstream.sslrootcert == "system"
    assert (upstream.sslcert, upstream.sslkey, upstream.sslcrl) == (
        "/srv/pgtls/c.crt",
        "/k",
        "/srv/r.crl",
    )


def test_format_shows_tls_keywords() -> None:
    """pgtls check shows the keywords that differ from libpq's defaults."""
    upstream = parse_conninfo("host=db hostaddr=10.0.0.1 sslmode=verify-full sslrootcert=system")
    assert format_conninfo(upstream) == (
        "host=db hostaddr=10.0.0.1 port=5432 sslmode=verify-full sslrootcert=system"
    )
