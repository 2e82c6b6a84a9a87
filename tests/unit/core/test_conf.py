"""
Tests for pgtls.core.conf: postgresql.conf read as PostgreSQL reads it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgtls.core.conf import (
    RESTART_ONLY,
    ConfigError,
    Settings,
    changed_settings,
    describe,
    load_settings,
    reloaded,
    restart_only_changes,
)
from pgtls.core.conninfo import Upstream


def _write(path: Path, text: str | bytes) -> Path:
    """Write a file (parents made), text as UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _load(tmp_path: Path, text: str | bytes, **overrides: str) -> Settings:
    """Load a data directory whose postgresql.conf is text."""
    _write(tmp_path / "postgresql.conf", text)
    return load_settings(str(tmp_path), overrides)


def _error(tmp_path: Path, text: str | bytes, **overrides: str) -> ConfigError:
    """Load text and return the ConfigError it must raise."""
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text, **overrides)
    return caught.value


def _syntax(path: Path, line: int, near: str) -> str:
    """PostgreSQL's syntax error message for path and line."""
    return f'syntax error in file "{path}" line {line}, {near}'


# --- defaults and the file itself


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty postgresql.conf gives the documented defaults, file names absolute."""
    loaded = _load(tmp_path, "")
    assert loaded == Settings(
        data_directory=str(tmp_path),
        ssl_cert_file=str(tmp_path / "server.crt"),
        ssl_key_file=str(tmp_path / "server.key"),
        ssl_ca_file=str(tmp_path / "root.crt"),
        ssl_crl_file=str(tmp_path / "root.crl"),
    )
    assert loaded.port == 5432
    assert loaded.authentication_timeout == 60.0
    assert loaded.ssl_min_protocol_version == "TLSv1.2"
    assert loaded.upstream == Upstream("/var/run/postgresql", 5432)
    assert loaded.clientcert == "required"
    assert loaded.explicit == frozenset()
    assert loaded.notices == ()


def test_missing_postgresql_conf_is_an_error(tmp_path: Path) -> None:
    """A data directory without postgresql.conf is refused, naming the file."""
    path = tmp_path / "postgresql.conf"
    with pytest.raises(ConfigError) as caught:
        load_settings(str(tmp_path))
    assert caught.value.path == str(path)
    assert caught.value.line is None
    assert caught.value.reason == (
        f'could not open configuration file "{path}": No such file or directory'
    )
    assert str(caught.value) == f"{path}: {caught.value.reason}"


def test_relative_data_directory_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative data directory is resolved against the working directory."""
    _write(tmp_path / "data" / "postgresql.conf", "ssl_cert_file = 'c.pem'\n")
    monkeypatch.chdir(tmp_path)
    loaded = load_settings("data")
    assert loaded.data_directory == str(tmp_path / "data")
    assert loaded.ssl_cert_file == str(tmp_path / "data" / "c.pem")


# --- line syntax


@pytest.mark.parametrize(
    "line",
    [
        "port = 5433",
        "port 5433",
        "port=5433",
        "PORT = 5433",
        "Port 5433",
        "port = '5433'",
        "port = 5433 # a comment",
        "port = 5433#comment",
        "\tport\t=\t5433\r",
        "port = 5433",  # last line without a newline
    ],
)
def test_line_forms(tmp_path: Path, line: str) -> None:
    """name = value, name value, any case, quotes, comments, tabs and CR all work."""
    assert _load(tmp_path, line).port == 5433


def test_comments_and_blank_lines_count_as_lines(tmp_path: Path) -> None:
    """Comment and blank lines are ignored but keep the line numbers right."""
    error = _error(tmp_path, "# comment\n\n   # indented comment\nport = x\n")
    assert error.line == 4


@pytest.mark.parametrize(
    ("quoted", "value"),
    [
        ("'a''b'", "a'b"),
        ("'a\\'b'", "a'b"),
        ("'back\\\\slash'", "back\\slash"),
        ("'\\b\\f\\n\\r\\t'", "\b\f\n\r\t"),
        ("'\\101'", "A"),
        ("'\\1012'", "A2"),
        ("'\\7'", "\x07"),
        ("'\\303\\251'", "é"),
        ("'\\q\\#'", "q#"),
        ("'# not a comment'", "# not a comment"),
        ("'x\\0y'", "x"),
        ("''", ""),
        ("'HIGH:!aNULL'", "HIGH:!aNULL"),
    ],
)
def test_quoted_string_escapes(tmp_path: Path, quoted: str, value: str) -> None:
    """Quoted values undo '' and backslash escapes as guc-file.l does; NUL ends the value."""
    assert _load(tmp_path, f"ssl_ciphers = {quoted}\n").ssl_ciphers == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("localhost", "localhost"),
        ("host.example.com", "host.example.com"),
        ("a-b:c/d_e", "a-b:c/d_e"),
        ("é", "é"),
    ],
)
def test_unquoted_strings(tmp_path: Path, text: str, value: str) -> None:
    """Identifiers and unquoted strings (letters, digits, _.:/- and bytes >= 0x80) are values."""
    assert _load(tmp_path, f"listen_addresses = {text}").listen_addresses == value


@pytest.mark.parametrize(
    ("line", "near"),
    [
        ("port = 90 s", 'near token "s"'),
        ("authentication_timeout = 90 s", 'near token "s"'),
        ("authentication_timeout = 2.5s", 'near token "s"'),
        ("myext.a.b = 1", 'near token "myext.a.b"'),
        ("port =", "near end of line"),
        ("port", "near end of line"),
        ("= 5", 'near token "="'),
        ("5 = port", 'near token "5"'),
        ("port = 5 6", 'near token "6"'),
        ("port = = 5", 'near token "="'),
        ("ssl = 'on", 'near token "\'"'),
        ("ssl_ciphers = 'a\\'", 'near token "\'"'),
        ("listen_addresses = localhost.localdomain", 'near token "localhost.localdomain"'),
        ("listen_addresses = 10.0.0.1", 'near token ".0"'),
        ("include other.conf", 'near token "other.conf"'),
        ("port = 0X1F", 'near token "1F"'),
        ("port = 5;", 'near token ";"'),
    ],
)
def test_syntax_errors(tmp_path: Path, line: str, near: str) -> None:
    """Lines guc-file.l rejects give its message, at the file and line."""
    path = tmp_path / "postgresql.conf"
    error = _error(tmp_path, f"# first\n{line}\n")
    assert (error.path, error.line) == (str(path), 2)
    assert error.reason == _syntax(path, 2, near)
    assert str(error) == f"{path}:2: {error.reason}"


def test_one_bad_line_applies_nothing(tmp_path: Path) -> None:
    """A bad line anywhere makes the whole load fail: no partial settings."""
    error = _error(tmp_path, "ssl = on\nport = 5433\nbogus = 1\nmax_connections = 5\n")
    assert error.line == 3


def test_last_occurrence_wins(tmp_path: Path) -> None:
    """A setting given twice takes its last value."""
    assert _load(tmp_path, "port = 1\nport = 2\nPORT = 3\n").port == 3


def test_overridden_bad_duplicate_is_not_checked(tmp_path: Path) -> None:
    """An earlier duplicate is ignored, bad value and all, as PostgreSQL does."""
    assert _load(tmp_path, "ssl = bad\nssl = on\n").ssl is True


def test_bad_last_duplicate_is_reported_at_its_line(tmp_path: Path) -> None:
    """The value in force is validated, at the line it came from."""
    error = _error(tmp_path, "ssl = on\nssl = bad\n")
    assert error.line == 2
    assert error.reason == 'parameter "ssl" requires a Boolean value'


def test_syntax_error_is_reported_before_unknown_names(tmp_path: Path) -> None:
    """The file is parsed whole before names are checked, as in PostgreSQL."""
    error = _error(tmp_path, "bogus = 1\nport = 90 s\n")
    assert error.line == 2


# --- names


def test_unknown_plain_name(tmp_path: Path) -> None:
    """An unknown plain name is PostgreSQL's unrecognized-parameter error, as written."""
    error = _error(tmp_path, "port = 1\nShared_Buffers = 128MB\n")
    assert (error.line, error.reason) == (
        2,
        'unrecognized configuration parameter "Shared_Buffers"',
    )


def test_unknown_pgtls_name(tmp_path: Path) -> None:
    """A pgtls.* name that pgtls does not know is an error, not a placeholder."""
    error = _error(tmp_path, "pgtls.upstreams = 'host=/tmp'\n")
    assert error.reason == 'unrecognized configuration parameter "pgtls.upstreams"'


def test_other_dotted_names_are_ignored(tmp_path: Path) -> None:
    """Another extension's dotted names are accepted and ignored, whatever the value."""
    loaded = _load(tmp_path, "auto_explain.log_min_duration = 'whatever'\nport = 7\n")
    assert loaded.port == 7
    assert loaded.explicit == frozenset({"port"})


def test_dotted_names_are_case_insensitive(tmp_path: Path) -> None:
    """pgtls.* names fold case like plain names."""
    loaded = _load(tmp_path, "PGTLS.ClientCert = OPTIONAL\n")
    assert loaded.clientcert == "optional"
    assert loaded.explicit == frozenset({"pgtls.clientcert"})


def test_only_ascii_letters_fold(tmp_path: Path) -> None:
    """Names fold A-Z only: a Kelvin sign is not a k, as in guc_name_compare."""
    error = _error(tmp_path, "ssl_\u212aey_file = 'k.pem'\n")
    assert error.reason == 'unrecognized configuration parameter "ssl_\u212aey_file"'


# --- includes


def test_include_is_relative_to_including_file(tmp_path: Path) -> None:
    """include names are relative to the directory of the file that includes them."""
    _write(tmp_path / "conf" / "a.conf", "include 'sub/b.conf'\nport = 2\n")
    _write(tmp_path / "conf" / "sub" / "b.conf", "port = 1\nmax_connections = 9\n")
    loaded = _load(tmp_path, "include 'conf/a.conf'\nssl = on\n")
    assert (loaded.port, loaded.max_connections, loaded.ssl) == (2, 9, True)


def test_include_takes_effect_in_place(tmp_path: Path) -> None:
    """An include is read where it stands: lines after it win, lines before it lose."""
    _write(tmp_path / "extra.conf", "port = 2\n")
    assert _load(tmp_path, "port = 1\ninclude 'extra.conf'\n").port == 2
    assert _load(tmp_path, "include 'extra.conf'\nport = 3\n").port == 3


def test_include_absolute(tmp_path: Path) -> None:
    """An absolute include name is used as it is."""
    extra = _write(tmp_path / "elsewhere" / "x.conf", "port = 4\n")
    assert _load(tmp_path / "data", f"include '{extra}'\n").port == 4


def test_include_missing_file(tmp_path: Path) -> None:
    """A missing include is an error charged to the include line."""
    path = tmp_path / "postgresql.conf"
    error = _error(tmp_path, "port = 1\ninclude 'nope.conf'\n")
    assert (error.path, error.line) == (str(path), 2)
    assert error.reason == (
        f'could not open configuration file "{tmp_path / "nope.conf"}": No such file or directory'
    )


def test_include_if_exists_missing_is_a_notice(tmp_path: Path) -> None:
    """include_if_exists skips a missing file and records PostgreSQL's log line."""
    loaded = _load(tmp_path, "include_if_exists 'nope.conf'\nport = 5\n")
    assert loaded.port == 5
    assert loaded.notices == (f'skipping missing configuration file "{tmp_path / "nope.conf"}"',)


def test_include_if_exists_present(tmp_path: Path) -> None:
    """include_if_exists reads a file that is there."""
    _write(tmp_path / "yes.conf", "port = 6\n")
    loaded = _load(tmp_path, "INCLUDE_IF_EXISTS = 'yes.conf'\n")
    assert (loaded.port, loaded.notices) == (6, ())


def test_include_dir_reads_conf_files_in_name_order(tmp_path: Path) -> None:
    """include_dir reads *.conf in name order, skipping dot files, other names and directories."""
    _write(tmp_path / "conf.d" / "20-b.conf", "port = 20\n")
    _write(tmp_path / "conf.d" / "10-a.conf", "port = 10\nmax_connections = 10\n")
    _write(tmp_path / "conf.d" / ".30-hidden.conf", "port = 30\n")
    _write(tmp_path / "conf.d" / "40-other.txt", "port = 40\n")
    _write(tmp_path / "conf.d" / "50-old.conf~", "port = 50\n")
    (tmp_path / "conf.d" / "60-dir.conf").mkdir()
    loaded = _load(tmp_path, "include_dir 'conf.d'\n")
    assert (loaded.port, loaded.max_connections) == (20, 10)


def test_include_dir_missing(tmp_path: Path) -> None:
    """A missing include_dir is an error charged to its line."""
    error = _error(tmp_path, "include_dir 'nope'\n")
    assert error.line == 1
    assert error.reason == (
        f'could not open configuration directory "{tmp_path / "nope"}": No such file or directory'
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("include ''", 'empty configuration file name: ""'),
        ("include_if_exists ' '", 'empty configuration file name: " "'),
        ("include_dir ''", 'empty configuration directory name: ""'),
    ],
)
def test_blank_include_names(tmp_path: Path, line: str, reason: str) -> None:
    """Blank include names are refused rather than reading the directory."""
    error = _error(tmp_path, line)
    assert (error.line, error.reason) == (1, reason)


def test_error_inside_included_file_names_that_file(tmp_path: Path) -> None:
    """Errors in an included file carry that file's path and line."""
    other = _write(tmp_path / "conf.d" / "a.conf", "\nbogus = 1\n")
    error = _error(tmp_path, "include_dir 'conf.d'\n")
    assert (error.path, error.line) == (str(other), 2)
    other.write_text("port 90 s\n")
    error = _error(tmp_path, "include_dir 'conf.d'\n")
    assert error.reason == _syntax(other, 1, 'near token "s"')


def test_include_cycle_stops_at_depth_limit(tmp_path: Path) -> None:
    """A file including itself is caught by PostgreSQL's nesting limit."""
    path = tmp_path / "postgresql.conf"
    error = _error(tmp_path, "include 'postgresql.conf'\n")
    assert (error.path, error.line) == (str(path), 1)
    assert error.reason == (
        'could not open configuration file "postgresql.conf": maximum nesting depth exceeded'
    )


def test_include_depth_ten_is_allowed_eleven_is_not(tmp_path: Path) -> None:
    """Ten nested includes below postgresql.conf are read; the eleventh is refused."""
    for level in range(1, 11):
        _write(tmp_path / f"l{level}.conf", f"include 'l{level + 1}.conf'\n")
    _write(tmp_path / "l11.conf", "port = 11\n")
    error = _error(tmp_path, "include 'l1.conf'\n")
    assert (error.path, error.line) == (str(tmp_path / "l10.conf"), 1)
    assert "maximum nesting depth exceeded" in error.reason
    _write(tmp_path / "l10.conf", "port = 10\n")
    assert _load(tmp_path, "include 'l1.conf'\n").port == 10


# --- booleans


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("on", True),
        ("ON", True),
        ("off", False),
        ("of", False),
        ("OF", False),
        ("true", True),
        ("TRU", True),
        ("t", True),
        ("false", False),
        ("f", False),
        ("fa", False),
        ("yes", True),
        ("y", True),
        ("Ye", True),
        ("no", False),
        ("n", False),
        ("1", True),
        ("0", False),
    ],
)
def test_boolean_accepted(tmp_path: Path, text: str, value: bool) -> None:
    """PostgreSQL 15's parse_bool spellings are accepted, in any case."""
    assert _load(tmp_path, f"ssl = '{text}'").ssl is value


@pytest.mark.parametrize(
    "text", ["o", "2", "", "truee", "onn", "offf", "yess", "nope", "00", "01", " on", "on ", "-1"]
)
def test_boolean_rejected(tmp_path: Path, text: str) -> None:
    """Anything else is PostgreSQL's Boolean error, at the line."""
    error = _error(tmp_path, f"\nlog_connections = '{text}'")
    assert (error.line, error.reason) == (
        2,
        'parameter "log_connections" requires a Boolean value',
    )


def test_boolean_settings(tmp_path: Path) -> None:
    """Every Boolean setting is typed."""
    loaded = _load(
        tmp_path,
        "ssl = on\nssl_prefer_server_ciphers = off\nlog_connections = yes\n"
        "log_disconnections = true\n",
    )
    assert loaded.ssl is True
    assert loaded.ssl_prefer_server_ciphers is False
    assert loaded.log_connections is True
    assert loaded.log_disconnections is True


# --- integers and units


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5433", 5433),
        ("+5433", 5433),
        ("0x1F90", 8080),
        ("'0X1f90'", 8080),
        ("010", 8),
        ("5432.4", 5432),
        ("'5432.5'", 5432),
        ("'5433.5'", 5434),
        ("1.5e3", 1500),
        ("' 5433 '", 5433),
    ],
)
def test_integer_forms(tmp_path: Path, text: str, value: int) -> None:
    """Integers as C reads them: hex, octal, reals rounded half to even, blanks around."""
    assert _load(tmp_path, f"port = {text}").port == value


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("port = 0", '0 is outside the valid range for parameter "port" (1 .. 65535)'),
        ("port = 65536", '65536 is outside the valid range for parameter "port" (1 .. 65535)'),
        ("port = -1", '-1 is outside the valid range for parameter "port" (1 .. 65535)'),
        (
            "max_connections = 262144",
            '262144 is outside the valid range for parameter "max_connections" (1 .. 262143)',
        ),
        (
            "max_connections = 0",
            '0 is outside the valid range for parameter "max_connections" (1 .. 262143)',
        ),
        ("port = abc", 'invalid value for parameter "port": "abc"'),
        ("port = 08", 'invalid value for parameter "port": "08"'),
        ("port = 5432kB", 'invalid value for parameter "port": "5432kB"'),
        ("port = '5432 s'", 'invalid value for parameter "port": "5432 s"'),
        ("port = .", 'invalid value for parameter "port": "."'),
        (
            "port = 6000000000",
            'invalid value for parameter "port": "6000000000" (Value exceeds integer range.)',
        ),
        (
            "port = 99999999999999999999999",
            'invalid value for parameter "port": "99999999999999999999999" '
            "(Value exceeds integer range.)",
        ),
    ],
)
def test_integer_errors(tmp_path: Path, line: str, reason: str) -> None:
    """Out-of-range and malformed integers give PostgreSQL's messages."""
    error = _error(tmp_path, line)
    assert (error.line, error.reason) == (1, reason)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("'90 s'", 90.0),
        ("1min", 60.0),
        ("'10 min'", 600.0),
        ("1500ms", 2.0),
        ("2500ms", 2.0),
        ("'1.5'", 2.0),
        ("'0.9 min'", 54.0),
        ("600000ms", 600.0),
        ("1000000us", 1.0),
        ("'1.0005 s'", 1.0),
    ],
)
def test_authentication_timeout_units(tmp_path: Path, text: str, seconds: float) -> None:
    """Time units convert to seconds and round half to even, as parse_int does."""
    assert _load(tmp_path, f"authentication_timeout = {text}").authentication_timeout == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "500ms",
            '0 s is outside the valid range for parameter "authentication_timeout" (1 .. 600)',
        ),
        (
            "1h",
            '3600 s is outside the valid range for parameter "authentication_timeout" (1 .. 600)',
        ),
        (
            "1d",
            '86400 s is outside the valid range for parameter "authentication_timeout" (1 .. 600)',
        ),
        (
            "601",
            '601 s is outside the valid range for parameter "authentication_timeout" (1 .. 600)',
        ),
        (
            "'1 fortnight'",
            'invalid value for parameter "authentication_timeout": "1 fortnight" '
            '(Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".)',
        ),
        (
            "1Min",
            'invalid value for parameter "authentication_timeout": "1Min" '
            '(Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".)',
        ),
        (
            "1mins",
            'invalid value for parameter "authentication_timeout": "1mins" '
            '(Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".)',
        ),
    ],
)
def test_authentication_timeout_errors(tmp_path: Path, text: str, reason: str) -> None:
    """Units are case-sensitive; the range is 1 .. 600 seconds after rounding."""
    error = _error(tmp_path, f"authentication_timeout = {text}")
    assert error.reason == reason


# --- enums, strings, files, upstream


@pytest.mark.parametrize(
    ("text", "value"),
    [("TLSv1", "TLSv1"), ("tlsv1.1", "TLSv1.1"), ("'TLSV1.2'", "TLSv1.2"), ("TLSv1.3", "TLSv1.3")],
)
def test_protocol_versions(tmp_path: Path, text: str, value: str) -> None:
    """TLS versions match case-insensitively and are stored as PostgreSQL spells them."""
    loaded = _load(
        tmp_path, f"ssl_min_protocol_version = {text}\nssl_max_protocol_version = {text}\n"
    )
    assert (loaded.ssl_min_protocol_version, loaded.ssl_max_protocol_version) == (value, value)


def test_max_protocol_version_may_be_empty(tmp_path: Path) -> None:
    """ssl_max_protocol_version = '' means no maximum; the minimum has no such value."""
    assert _load(tmp_path, "ssl_max_protocol_version = ''").ssl_max_protocol_version == ""
    error = _error(tmp_path, "ssl_min_protocol_version = ''")
    assert error.reason == (
        'invalid value for parameter "ssl_min_protocol_version": "" '
        "(Available values: TLSv1, TLSv1.1, TLSv1.2, TLSv1.3.)"
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            "ssl_min_protocol_version = 'SSLv3'",
            'invalid value for parameter "ssl_min_protocol_version": "SSLv3" '
            "(Available values: TLSv1, TLSv1.1, TLSv1.2, TLSv1.3.)",
        ),
        (
            "pgtls.clientcert = maybe",
            'invalid value for parameter "pgtls.clientcert": "maybe" '
            "(Available values: required, optional.)",
        ),
    ],
)
def test_enum_errors(tmp_path: Path, line: str, reason: str) -> None:
    """A value outside an enum lists the available values, as PostgreSQL's HINT does."""
    assert _error(tmp_path, line).reason == reason


def test_clientcert(tmp_path: Path) -> None:
    """pgtls.clientcert takes required or optional."""
    assert _load(tmp_path, "pgtls.clientcert = optional").clientcert == "optional"
    assert _load(tmp_path, "pgtls.clientcert = 'Required'").clientcert == "required"


def test_metrics_listen(tmp_path: Path) -> None:
    """pgtls.metrics_listen is off ('') by default and keeps an endpoint string as written."""
    assert _load(tmp_path, "").metrics_listen == ""
    loaded = _load(tmp_path, "pgtls.metrics_listen = 'tcp:9187:interface=127.0.0.1'")
    assert loaded.metrics_listen == "tcp:9187:interface=127.0.0.1"


def test_so_reuseport(tmp_path: Path) -> None:
    """pgtls.so_reuseport is off by default and takes PostgreSQL's Booleans."""
    assert _load(tmp_path, "").so_reuseport is False
    assert _load(tmp_path, "pgtls.so_reuseport = on").so_reuseport is True
    assert _load(tmp_path, "pgtls.so_reuseport = 'yes'").so_reuseport is True
    with pytest.raises(ConfigError, match="requires a Boolean value"):
        _load(tmp_path, "pgtls.so_reuseport = sometimes")


def test_smart_shutdown_timeout(tmp_path: Path) -> None:
    """pgtls.smart_shutdown_timeout: 30 s by default, seconds with PostgreSQL's units, 0 allowed."""
    assert _load(tmp_path, "").smart_shutdown_timeout == 30.0
    assert _load(tmp_path, "pgtls.smart_shutdown_timeout = 45").smart_shutdown_timeout == 45.0
    assert _load(tmp_path, "pgtls.smart_shutdown_timeout = '2min'").smart_shutdown_timeout == 120.0
    assert _load(tmp_path, "pgtls.smart_shutdown_timeout = 0").smart_shutdown_timeout == 0.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "-1",
            '-1 s is outside the valid range for parameter "pgtls.smart_shutdown_timeout" '
            "(0 .. 2147483)",
        ),
        (
            "'30 parsecs'",
            'invalid value for parameter "pgtls.smart_shutdown_timeout": "30 parsecs" '
            '(Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".)',
        ),
    ],
)
def test_bad_smart_shutdown_timeout(tmp_path: Path, text: str, message: str) -> None:
    """A negative or badly spelt limit is a start-up error with PostgreSQL's message."""
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, f"pgtls.smart_shutdown_timeout = {text}")
    assert raised.value.reason == message


def test_smart_shutdown_timeout_is_reloadable(tmp_path: Path) -> None:
    """A reload applies a new limit (it is read when the shutdown starts), shown as SHOW would."""
    old = _load(tmp_path, "")
    new = _load(tmp_path, "pgtls.smart_shutdown_timeout = 0")
    assert "pgtls.smart_shutdown_timeout" not in RESTART_ONLY
    assert changed_settings(old, new) == [("pgtls.smart_shutdown_timeout", "0")]
    assert reloaded(old, new).smart_shutdown_timeout == 0.0
    assert dict(describe(new))["pgtls.smart_shutdown_timeout"] == "0"
    assert dict(describe(old))["pgtls.smart_shutdown_timeout"] == "30s"


def test_string_settings(tmp_path: Path) -> None:
    """String settings keep their text."""
    loaded = _load(
        tmp_path,
        "listen_addresses = '127.0.0.1, ::1'\nssl_ciphers = 'HIGH:!aNULL'\n"
        "ssl_ecdh_curve = secp384r1\n"
        "ssl_passphrase_command = '/usr/bin/systemd-ask-password \"%p\"'\n",
    )
    assert loaded.listen_addresses == "127.0.0.1, ::1"
    assert loaded.ssl_ciphers == "HIGH:!aNULL"
    assert loaded.ssl_ecdh_curve == "secp384r1"
    assert loaded.ssl_passphrase_command == '/usr/bin/systemd-ask-password "%p"'


def test_file_names_are_made_absolute(tmp_path: Path) -> None:
    """Relative file names resolve against the data directory; absolute and '' stay."""
    loaded = _load(
        tmp_path,
        "ssl_cert_file = 'certs/../server.pem'\nssl_key_file = '/etc/ssl/k.pem'\n"
        "ssl_ca_file = ''\nssl_crl_file = crl/root.crl\n",
    )
    assert loaded.ssl_cert_file == str(tmp_path / "server.pem")
    assert loaded.ssl_key_file == "/etc/ssl/k.pem"
    assert loaded.ssl_ca_file == ""
    assert loaded.ssl_crl_file == str(tmp_path / "crl" / "root.crl")


def test_file_names_in_included_files_are_relative_to_data_directory(tmp_path: Path) -> None:
    """A file setting from an included file is still relative to the data directory."""
    _write(tmp_path / "conf.d" / "ssl.conf", "ssl_cert_file = 'c.pem'\n")
    loaded = _load(tmp_path, "include_dir 'conf.d'\n")
    assert loaded.ssl_cert_file == str(tmp_path / "c.pem")


def test_upstream(tmp_path: Path) -> None:
    """pgtls.upstream is a libpq connection string, parsed at load."""
    loaded = _load(tmp_path, "pgtls.upstream = 'host=db.example port=6432 connect_timeout=5'")
    assert loaded.upstream == Upstream("db.example", 6432, 5.0)
    loaded = _load(tmp_path, "pgtls.upstream = 'postgresql://%2Ftmp:5433'")
    assert loaded.upstream == Upstream("/tmp", 5433)


def test_bad_upstream_names_file_and_line(tmp_path: Path) -> None:
    """A bad connection string is a ConfigError at its line, saying what is wrong."""
    error = _error(tmp_path, "port = 1\npgtls.upstream = 'host=/tmp dbname=app'\n")
    assert error.line == 2
    assert error.reason.startswith(
        'invalid value for parameter "pgtls.upstream": "host=/tmp dbname=app" '
        '(connection option "dbname" does not apply'
    )


def test_proxy_protocol_networks(tmp_path: Path) -> None:
    """pgtls.proxy_protocol_networks: addresses and CIDR networks, IPv4 or IPv6; none by default."""
    assert _load(tmp_path, "").proxy_protocol_networks == ()
    loaded = _load(
        tmp_path, "pgtls.proxy_protocol_networks = ' 10.0.0.0/8 ,192.0.2.7, ::1,fd00::/8'"
    )
    assert loaded.proxy_protocol_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert dict(describe(loaded))["pgtls.proxy_protocol_networks"] == (
        "10.0.0.0/8,192.0.2.7/32,::1/128,fd00::/8"
    )
    assert "pgtls.proxy_protocol_networks" not in RESTART_ONLY


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("10.0.0.5/8", "10.0.0.5/8 has host bits set"),
        ("lb.example", "'lb.example' does not appear to be an IPv4 or IPv6 network"),
        ("10.0.0.1,,10.0.0.2", "'' does not appear to be an IPv4 or IPv6 network"),
    ],
)
def test_bad_proxy_protocol_networks(tmp_path: Path, value: str, why: str) -> None:
    """A bad item is a ConfigError naming the value and the item (host bits set: a typo)."""
    error = _error(tmp_path, f"pgtls.proxy_protocol_networks = '{value}'\n")
    assert error.line == 1
    assert error.reason == (
        f'invalid value for parameter "pgtls.proxy_protocol_networks": "{value}" ({why})'
    )


def test_proxy_protocol_networks_reload(tmp_path: Path) -> None:
    """A reload applies a new network list (it is read as each connection is accepted)."""
    old = _load(tmp_path, "")
    new = _load(tmp_path, "pgtls.proxy_protocol_networks = '127.0.0.2'\n")
    assert changed_settings(old, new) == [("pgtls.proxy_protocol_networks", "127.0.0.2")]
    assert reloaded(old, new).proxy_protocol_networks == (ipaddress.ip_network("127.0.0.2/32"),)


def test_explicit_and_raw_values(tmp_path: Path) -> None:
    """explicit names what the file set; raw_values keeps the text as written."""
    loaded = _load(tmp_path, "SSL = On\nauthentication_timeout = 2min\nother.x = 1\n")
    assert loaded.explicit == frozenset({"ssl", "authentication_timeout"})
    assert loaded.raw_values == (("authentication_timeout", "2min"), ("ssl", "On"))


# --- encodings


def test_non_utf8_bytes_in_comments_are_fine(tmp_path: Path) -> None:
    """Any byte may appear in a comment, as in PostgreSQL."""
    assert _load(tmp_path, b"# caf\xe9\nport = 1\n").port == 1


def test_non_utf8_bytes_in_a_value_are_refused(tmp_path: Path) -> None:
    """A value that is not UTF-8 is refused with PostgreSQL's encoding message."""
    error = _error(tmp_path, b"ssl_ciphers = 'caf\xe9'\n")
    assert error.reason == 'invalid byte sequence for encoding "UTF8": 0xe9'


def test_non_utf8_name_is_printable_in_the_error(tmp_path: Path) -> None:
    """An unknown name made of stray bytes still gives a printable message."""
    error = _error(tmp_path, b"caf\xe9 = 1\n")
    assert str(error).endswith('unrecognized configuration parameter "caf\\xe9"')
    str(error).encode("utf-8")


# --- overrides


def test_override_wins_over_file(tmp_path: Path) -> None:
    """A command-line setting beats the file, and counts as explicit."""
    loaded = _load(tmp_path, "port = 1\nssl = on\n", port="2", log_connections="on")
    assert (loaded.port, loaded.ssl, loaded.log_connections) == (2, True, True)
    assert loaded.explicit == frozenset({"port", "ssl", "log_connections"})
    assert dict(loaded.raw_values)["port"] == "2"


def test_override_names(tmp_path: Path) -> None:
    """Override names fold case and take dashes for underscores, like postgres -c."""
    loaded = _load(tmp_path, "", **{"SSL-CA-FILE": "ca.pem", "pgtls.clientcert": "optional"})
    assert loaded.ssl_ca_file == str(tmp_path / "ca.pem")
    assert loaded.clientcert == "optional"


def test_override_values_are_not_lexed(tmp_path: Path) -> None:
    """An override's value is taken as is: quotes are part of it."""
    assert _load(tmp_path, "", ssl_ciphers="'a b'").ssl_ciphers == "'a b'"
    error = _error(tmp_path, "", port="'5433'")
    assert error.reason == 'invalid value for parameter "port": "\'5433\'"'


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("port", "x", 'invalid value for parameter "port": "x"'),
        ("ssl", "maybe", 'parameter "ssl" requires a Boolean value'),
        ("bogus", "1", 'unrecognized configuration parameter "bogus"'),
        ("include", "x.conf", 'unrecognized configuration parameter "include"'),
        ("pgtls.bogus", "1", 'unrecognized configuration parameter "pgtls.bogus"'),
        (
            "other..x",
            "1",
            'invalid configuration parameter name "other..x" (Custom parameter names must be '
            "two or more simple identifiers separated by dots.)",
        ),
    ],
)
def test_override_errors(tmp_path: Path, name: str, value: str, reason: str) -> None:
    """A bad override is a ConfigError at "command line", with no line."""
    error = _error(tmp_path, "", **{name: value})
    assert (error.path, error.line, error.reason) == ("command line", None, reason)
    assert str(error) == f"command line: {reason}"


def test_override_of_other_extension_is_ignored(tmp_path: Path) -> None:
    """A dotted override for another extension is accepted and ignored."""
    assert _load(tmp_path, "", **{"other.x": "1"}).explicit == frozenset()


def test_overrides_are_checked_before_the_file(tmp_path: Path) -> None:
    """As postgres does with -c, a bad override is reported even without postgresql.conf."""
    with pytest.raises(ConfigError) as caught:
        load_settings(str(tmp_path), {"port": "x"})
    assert caught.value.path == "command line"


def test_bad_file_value_is_reported_even_when_overridden(tmp_path: Path) -> None:
    """The file's value is still validated when an override replaces it, as in PostgreSQL."""
    error = _error(tmp_path, "port = x\n", port="5433")
    assert (error.line, error.reason) == (1, 'invalid value for parameter "port": "x"')


# --- reload helpers


def test_restart_only_names() -> None:
    """Everything but the timeout and the log switches needs a restart."""
    assert {
        "listen_addresses",
        "port",
        "max_connections",
        "ssl",
        "ssl_cert_file",
        "ssl_key_file",
        "ssl_ca_file",
        "ssl_crl_file",
        "ssl_ciphers",
        "ssl_prefer_server_ciphers",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "ssl_ecdh_curve",
        "ssl_passphrase_command",
        "pgtls.upstream",
        "pgtls.clientcert",
        "pgtls.metrics_listen",
        "pgtls.so_reuseport",
        "pgtls.fast_path",
    } == RESTART_ONLY


def test_restart_only_changes(tmp_path: Path) -> None:
    """restart_only_changes names each changed restart-only setting by its PostgreSQL name."""
    old = _load(tmp_path, "ssl = off\nport = 1\nauthentication_timeout = 10\n")
    new = _load(
        tmp_path,
        "ssl = on\nport = 1\nauthentication_timeout = 20\n"
        "pgtls.upstream = 'host=/tmp'\npgtls.clientcert = optional\nssl_ca_file = ''\n",
    )
    assert restart_only_changes(old, new) == [
        "ssl",
        "ssl_ca_file",
        "pgtls.upstream",
        "pgtls.clientcert",
    ]
    assert restart_only_changes(old, old) == []


def test_restart_only_changes_compares_values_not_text(tmp_path: Path) -> None:
    """Writing the same value differently is not a change."""
    old = _load(tmp_path, "ssl = on\nport = 5432\n")
    new = _load(tmp_path, "ssl = 'yes'\nport = 0x1538\n")
    assert restart_only_changes(old, new) == []


def test_changed_settings(tmp_path: Path) -> None:
    """changed_settings lists reloadable changes with the new text as written."""
    old = _load(tmp_path, "authentication_timeout = 10\nlog_connections = on\nssl = off\n")
    new = _load(tmp_path, "authentication_timeout = '1 min'\nssl = on\n")
    assert changed_settings(old, new) == [
        ("authentication_timeout", "1 min"),
        ("log_connections", "off"),
    ]
    assert changed_settings(new, new) == []


def test_describe(tmp_path: Path) -> None:
    """describe lists every setting with its effective value as text."""
    loaded = _load(tmp_path, "ssl = on\npgtls.upstream = 'port=5433'\n")
    shown = dict(describe(loaded))
    assert next(iter(shown)) == "data_directory"
    assert set(shown) == RESTART_ONLY | {
        "data_directory",
        "authentication_timeout",
        "log_connections",
        "log_disconnections",
        "pgtls.smart_shutdown_timeout",
        "pgtls.proxy_protocol_networks",
    }
    assert shown["data_directory"] == str(tmp_path)
    assert shown["ssl"] == "on"
    assert shown["port"] == "5432"
    assert shown["authentication_timeout"] == "1min"
    assert shown["ssl_cert_file"] == str(tmp_path / "server.crt")
    assert shown["pgtls.upstream"] == "host=/var/run/postgresql port=5433"
    assert shown["pgtls.clientcert"] == "required"


@pytest.mark.parametrize(("seconds", "text"), [(60.0, "1min"), (90.0, "90s"), (600.0, "10min")])
def test_describe_timeout(tmp_path: Path, seconds: float, text: str) -> None:
    """The timeout is shown in the greatest unit that divides it."""
    loaded = replace(_load(tmp_path, ""), authentication_timeout=seconds)
    assert dict(describe(loaded))["authentication_timeout"] == text


# --- property


# Pieces that make lines the lexer and the setting parsers have to think about.
_LINE_PIECES = st.sampled_from(
    [*"abcpstlorx_.=#'\\ \t\r0123456789+-:/xXeE,;\x00\u212a", "é", "ssl", "port", "include", "min"]
)


@settings(max_examples=200, deadline=None)
@given(
    line=st.one_of(
        st.lists(_LINE_PIECES, max_size=12).map("".join),
        st.text(max_size=30).map(lambda line: line.replace("\n", "")),
        st.binary(max_size=30).map(lambda line: line.replace(b"\n", b"")),
    )
)
def test_any_line_gives_settings_or_config_error(
    tmp_path_factory: pytest.TempPathFactory, line: str | bytes
) -> None:
    """Whatever one line holds, loading gives Settings or a ConfigError, never another exception."""
    directory = tmp_path_factory.mktemp("fuzz", numbered=True)
    try:
        loaded = _load(directory, line)
    except ConfigError as error:
        assert error.line in (1, None)
        assert str(error).startswith(f"{error.path}:")
        str(error).encode("utf-8")
    else:
        assert isinstance(loaded, Settings)


def test_reloaded_takes_only_reloadable_settings() -> None:
    """A reload applies the new reloadable values and keeps every restart-only one."""
    from pgtls.core.conf import reloaded

    old = Settings("/data")
    new = Settings("/data", ssl=True, port=7000, log_connections=True, authentication_timeout=5.0)
    result = reloaded(old, new)
    assert (result.ssl, result.port) == (False, 5432)
    assert (result.log_connections, result.authentication_timeout) == (True, 5.0)


def test_fast_path(tmp_path: Path) -> None:
    """pgtls.fast_path is on by default, a boolean, restart-only."""
    assert _load(tmp_path, "").fast_path is True
    assert _load(tmp_path, "pgtls.fast_path = off").fast_path is False
    assert "pgtls.fast_path" in RESTART_ONLY
