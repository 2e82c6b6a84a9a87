"""Tests for pgtls.admin.initdir: the files of a new data directory and client certificates."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from OpenSSL import crypto

from pgtls.admin import initdir
from pgtls.admin.initdir import InitError, InitOptions, NewFile
from pgtls.core import conf, hba
from pgtls.core.conninfo import Upstream
from pgtls.tls import certs

NAMES = ("db.example.com", "localhost", "127.0.0.1", "::1")
DATA_FILES = (
    "postgresql.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "ca.crt",
    "ca.key",
    "server.crt",
    "server.key",
)


def _init(directory: Path, **kwargs: object) -> initdir.InitResult:
    options = InitOptions(**{"hostnames": NAMES, **kwargs})  # type: ignore[arg-type]
    return initdir.init_data_directory(str(directory), options)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _key_matches(key_path: Path, cert: x509.Certificate) -> bool:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return key.public_key() == cert.public_key()


def _active_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _openssl_verifies(ca: x509.Certificate, cert: x509.Certificate) -> bool:
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(ca))
    context = crypto.X509StoreContext(store, crypto.X509.from_cryptography(cert))
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError:
        return False
    return True


# --------------------------------------------------------------------------
# init: files and modes


def test_init_writes_every_file_with_its_mode(tmp_path: Path) -> None:
    """Keys and configuration files are 0600, certificates 0644; nothing else is written."""
    directory = tmp_path / "data"
    result = _init(directory)
    assert sorted(os.listdir(directory)) == sorted(DATA_FILES)
    assert sorted(result.written) == sorted(str(directory / name) for name in DATA_FILES)
    for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf", "ca.key", "server.key"):
        assert _mode(directory / name) == 0o600, name
    for name in ("ca.crt", "server.crt"):
        assert _mode(directory / name) == 0o644, name


def test_init_creates_missing_directory_and_parents_0700(tmp_path: Path) -> None:
    """A missing data directory is created, parents included, with mode 0700."""
    directory = tmp_path / "a" / "b" / "data"
    _init(directory)
    assert _mode(directory) == 0o700
    assert (directory / "postgresql.conf").is_file()


def test_init_modes_do_not_depend_on_umask(tmp_path: Path) -> None:
    """A restrictive or lax umask changes neither the directory's nor the keys' modes."""
    old = os.umask(0o000)
    try:
        _init(tmp_path / "lax")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "lax") == 0o700
    assert _mode(tmp_path / "lax" / "server.key") == 0o600
    assert _mode(tmp_path / "lax" / "ca.crt") == 0o644


def test_init_into_existing_empty_directory(tmp_path: Path) -> None:
    """An existing empty directory is used as it is."""
    _init(tmp_path)
    assert (tmp_path / "server.key").is_file()


def test_init_refuses_a_path_that_is_a_file(tmp_path: Path) -> None:
    """DIR naming a regular file is an error that names it."""
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(InitError, match="is not a directory"):
        _init(path)


@pytest.mark.parametrize("existing", DATA_FILES)
def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path: Path, existing: str) -> None:
    """Any file init would write that exists already stops it: named, and nothing written."""
    (tmp_path / existing).write_text("precious")
    with pytest.raises(InitError) as info:
        _init(tmp_path)
    assert str(tmp_path / existing) in str(info.value)
    assert "\n" not in str(info.value)
    assert os.listdir(tmp_path) == [existing]
    assert (tmp_path / existing).read_text() == "precious"


def test_init_refuses_existing_root_crt_with_client_ca(tmp_path: Path) -> None:
    """--client-ca does not overwrite an existing root.crt either."""
    (tmp_path / "root.crt").write_text("old CA")
    with pytest.raises(InitError, match=re.escape("root.crt already exists")):
        _init(tmp_path, client_ca=True)
    assert os.listdir(tmp_path) == ["root.crt"]


def test_failed_init_removes_the_directory_it_created(tmp_path: Path) -> None:
    """When init created DIR and then fails, DIR is removed again."""
    directory = tmp_path / "data"
    with pytest.raises(InitError):
        _init(directory, hostnames=("bad name",))
    assert not directory.exists()


def test_write_new_files_is_all_or_nothing(tmp_path: Path) -> None:
    """A file found existing midway removes the files this call already created."""
    (tmp_path / "b").write_text("old")
    files = [
        NewFile(str(tmp_path / "a"), b"a", 0o600),
        NewFile(str(tmp_path / "b"), b"b", 0o600),
        NewFile(str(tmp_path / "c"), b"c", 0o600),
    ]
    with pytest.raises(InitError, match=re.escape(f"{tmp_path / 'b'} already exists")):
        initdir.write_new_files(files)
    assert sorted(os.listdir(tmp_path)) == ["b"]
    assert (tmp_path / "b").read_text() == "old"


def test_write_new_files_does_not_follow_a_dangling_symlink(tmp_path: Path) -> None:
    """A symlink in the way counts as an existing file, even one pointing nowhere."""
    (tmp_path / "server.key").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InitError, match="already exists"):
        initdir.write_new_files([NewFile(str(tmp_path / "server.key"), b"k", 0o600)])
    assert not (tmp_path / "elsewhere").exists()


# --------------------------------------------------------------------------
# init: certificates


def test_server_certificate_verifies_for_every_name(tmp_path: Path) -> None:
    """server.crt chains to ca.crt and is valid for each DNS name and IP address given."""
    _init(tmp_path)
    ca, server = _cert(tmp_path / "ca.crt"), _cert(tmp_path / "server.crt")
    for name in NAMES:
        try:
            subject: DNSName | IPAddress = IPAddress(ipaddress.ip_address(name))
        except ValueError:
            subject = DNSName(name)
        verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(subject)
        chain = verifier.verify(server, [])
        assert chain[-1] == ca


def test_server_certificate_sans_are_the_names(tmp_path: Path) -> None:
    """The SAN extension holds exactly the names given, DNS and IP typed as they are."""
    _init(tmp_path)
    sans = _cert(tmp_path / "server.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert sans.value.get_values_for_type(x509.DNSName) == ["db.example.com", "localhost"]
    assert sans.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_server_certificate_does_not_verify_for_other_names(tmp_path: Path) -> None:
    """A name not given is not covered: verify-full would refuse it."""
    _init(tmp_path)
    ca, server = _cert(tmp_path / "ca.crt"), _cert(tmp_path / "server.crt")
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(DNSName("other.test"))
    with pytest.raises(Exception, match="validation failed"):
        verifier.verify(server, [])


def test_server_crt_holds_the_server_certificate_only(tmp_path: Path) -> None:
    """server.crt is one PEM certificate, the server's, with no CA after it."""
    _init(tmp_path)
    pems = x509.load_pem_x509_certificates((tmp_path / "server.crt").read_bytes())
    assert len(pems) == 1
    assert pems[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_keys_match_their_certificates(tmp_path: Path) -> None:
    """server.key is server.crt's key, ca.key is ca.crt's, unencrypted."""
    _init(tmp_path)
    assert _key_matches(tmp_path / "server.key", _cert(tmp_path / "server.crt"))
    assert _key_matches(tmp_path / "ca.key", _cert(tmp_path / "ca.crt"))


def test_ca_is_a_ca_named_after_the_host(tmp_path: Path) -> None:
    """ca.crt is a self-signed CA whose name tells it from other machines' CAs."""
    _init(tmp_path)
    ca = _cert(tmp_path / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.subject == ca.issuer
    common_name = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "pgtls local CA for db.example.com"


def test_each_init_makes_a_new_ca(tmp_path: Path) -> None:
    """Two data directories never share a CA key."""
    _init(tmp_path / "one")
    _init(tmp_path / "two")
    assert (tmp_path / "one" / "ca.key").read_bytes() != (tmp_path / "two" / "ca.key").read_bytes()


def test_client_ca_writes_root_crt_as_ca_crt(tmp_path: Path) -> None:
    """--client-ca adds root.crt, the CA certificate itself, mode 0644."""
    result = _init(tmp_path, client_ca=True)
    assert (tmp_path / "root.crt").read_bytes() == (tmp_path / "ca.crt").read_bytes()
    assert _mode(tmp_path / "root.crt") == 0o644
    assert str(tmp_path / "root.crt") in result.written


def test_no_root_crt_without_client_ca(tmp_path: Path) -> None:
    """Without --client-ca there is no root.crt, so pgtls asks no client for a certificate."""
    _init(tmp_path)
    assert not (tmp_path / "root.crt").exists()


# --------------------------------------------------------------------------
# host names


def test_default_hostnames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default names: the machine's name, its FQDN, localhost, 127.0.0.1, ::1."""
    monkeypatch.setattr(socket, "gethostname", lambda: "db1")
    monkeypatch.setattr(socket, "getfqdn", lambda: "db1.example.com")
    assert initdir.default_hostnames() == (
        "db1",
        "db1.example.com",
        "localhost",
        "127.0.0.1",
        "::1",
    )


def test_default_hostnames_without_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """An FQDN equal to the name, or a machine called localhost, is listed once."""
    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")
    monkeypatch.setattr(socket, "getfqdn", lambda: "LOCALHOST")
    assert initdir.default_hostnames() == ("localhost", "127.0.0.1", "::1")


def test_default_hostnames_skip_a_name_no_certificate_carries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A machine name that is no DNS name is left out rather than failing init."""
    monkeypatch.setattr(socket, "gethostname", lambda: "my box")
    monkeypatch.setattr(socket, "getfqdn", lambda: "my box")
    assert initdir.default_hostnames() == ("localhost", "127.0.0.1", "::1")


def test_init_without_hostnames_uses_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no names given the certificate covers the default names and psql uses localhost."""
    monkeypatch.setattr(socket, "gethostname", lambda: "db1")
    monkeypatch.setattr(socket, "getfqdn", lambda: "db1.example.com")
    result = initdir.init_data_directory(str(tmp_path), InitOptions())
    sans = _cert(tmp_path / "server.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert sans.value.get_values_for_type(x509.DNSName) == ["db1", "db1.example.com", "localhost"]
    assert result.hostnames == ("db1", "db1.example.com", "localhost", "127.0.0.1", "::1")
    assert 'psql "host=localhost ' in result.psql


@pytest.mark.parametrize(
    "name", ["bad name", "ex ample.com", "-lead.example", "a..b", "ünï.example", "fe80::1%eth0", ""]
)
def test_bad_hostnames_are_refused(tmp_path: Path, name: str) -> None:
    """A name a certificate cannot carry is an error that quotes it; nothing is written."""
    with pytest.raises(InitError, match="host name"):
        _init(tmp_path, hostnames=(name,))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["*.example.com", "db_1.internal", "10.0.0.1", "2001:db8::1"])
def test_good_hostnames_are_accepted(tmp_path: Path, name: str) -> None:
    """Wildcards, underscores and IP addresses of both families go into the certificate."""
    result = _init(tmp_path, hostnames=(name,))
    assert result.hostnames == (name,)


def test_psql_host_skips_a_wildcard(tmp_path: Path) -> None:
    """The psql line names the first given host name that is not a wildcard."""
    result = _init(tmp_path, hostnames=("*.example.com", "db.example.com"))
    assert "host=db.example.com " in result.psql


# --------------------------------------------------------------------------
# postgresql.conf

_CONF_LINE = re.compile(
    r"(?P<name>[a-z_]+(?:\.[a-z_]+)?) = "
    r"(?P<value>on|off|\d+(?:us|ms|s|min|h|d)?|'(?:[^'\\]|''|\\.)*')"
)


def _uncommented_settings(text: str) -> str:
    """``text`` with every commented ``#name = value`` line made active."""
    return "".join(
        (line[1:] if re.match(r"#[a-z]", line) else line) + "\n" for line in text.splitlines()
    )


def _unquote(value: str) -> str:
    """A postgresql.conf quoted string's value (the escapes conf_quote uses)."""
    return re.sub(r"''|\\(.)", lambda m: m.group(1) or "'", value[1:-1])


def test_conf_has_ssl_on_active() -> None:
    """ssl = on is an active line, whatever the options."""
    text = initdir.postgresql_conf_text(InitOptions())
    assert "ssl = on" in _active_lines(text)


def test_conf_defaults_are_commented() -> None:
    """With default options ssl is the only active setting; every other is a comment."""
    text = initdir.postgresql_conf_text(InitOptions())
    assert _active_lines(text) == ["ssl = on"]


def test_conf_shows_every_setting_once() -> None:
    """Each setting pgtls reads appears exactly once, active or commented, with a comment above."""
    text = initdir.postgresql_conf_text(InitOptions(upstream="host=/tmp"))
    lines = text.splitlines()
    assert set(initdir.SETTING_NAMES) >= {
        "listen_addresses",
        "port",
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
        "max_connections",
        "authentication_timeout",
        "log_connections",
        "log_disconnections",
        "pgtls.upstream",
        "pgtls.clientcert",
    }
    for name in initdir.SETTING_NAMES:
        found = [i for i, line in enumerate(lines) if re.match(rf"#?{re.escape(name)} = ", line)]
        assert len(found) == 1, name
        assert lines[found[0] - 1].startswith("# "), name


def test_conf_non_default_options_are_active() -> None:
    """Port, listen addresses and upstream given are active lines, quoted as needed."""
    text = initdir.postgresql_conf_text(
        InitOptions(port=6432, listen_addresses="*", upstream="host=/run/pg port=5433")
    )
    assert _active_lines(text) == [
        "listen_addresses = '*'",
        "port = 6432",
        "ssl = on",
        "pgtls.upstream = 'host=/run/pg port=5433'",
    ]


def test_conf_upstream_is_commented_default_when_not_given() -> None:
    """Without --upstream the default upstream is shown commented."""
    text = initdir.postgresql_conf_text(InitOptions())
    assert "#pgtls.upstream = 'host=/var/run/postgresql port=5432'" in text.splitlines()


def test_conf_quote_escapes_quotes_and_backslashes() -> None:
    """A value with ' and \\ is written so that PostgreSQL reads the same value back."""
    assert initdir.conf_quote("a'b\\c") == "'a''b\\\\c'"
    assert initdir.conf_quote("") == "''"


def test_conf_active_and_commented_lines_have_postgresql_syntax() -> None:
    """Every setting line, active or commented, is `name = value` with a valid value token."""
    text = initdir.postgresql_conf_text(
        InitOptions(port=6432, listen_addresses="*", upstream="host='/a b\\\\c\\'d'")
    )
    values = {}
    for line in text.splitlines():
        setting = line[1:] if line.startswith("#") and not line.startswith("# ") else line
        if setting and not setting.startswith("#"):
            match = _CONF_LINE.fullmatch(setting)
            assert match, line
            values[match["name"]] = match["value"]
    assert _unquote(values["pgtls.upstream"]) == "host='/a b\\\\c\\'d'"


def test_upstream_with_a_control_character_is_refused(tmp_path: Path) -> None:
    """A newline in --upstream would end the setting's line: refused."""
    with pytest.raises(InitError, match="control characters"):
        _init(tmp_path, upstream="host=/tmp\nssl = off")
    assert os.listdir(tmp_path) == []


def test_load_settings_reads_the_generated_conf(tmp_path: Path) -> None:
    """pgtls's own postgresql.conf parser loads what init wrote, with the options given."""
    upstream = "host='/run/a b' port=5433 connect_timeout=3"
    _init(tmp_path, port=6432, listen_addresses="127.0.0.1,::1", upstream=upstream)
    settings = conf.load_settings(str(tmp_path))
    assert settings.ssl is True
    assert settings.port == 6432
    assert settings.listen_addresses == "127.0.0.1,::1"
    assert settings.upstream == Upstream("/run/a b", 5433, 3.0)
    assert settings.ssl_cert_file == str(tmp_path / "server.crt")
    assert settings.ssl_key_file == str(tmp_path / "server.key")
    assert settings.explicit == {"ssl", "port", "listen_addresses", "pgtls.upstream"}


def test_commented_examples_are_the_defaults(tmp_path: Path) -> None:
    """Uncommenting every example setting changes nothing: each shows pgtls's default."""
    text = initdir.postgresql_conf_text(InitOptions())
    path = tmp_path / "postgresql.conf"
    path.write_text(text)
    as_written = conf.load_settings(str(tmp_path))
    path.write_text(_uncommented_settings(text))
    uncommented = conf.load_settings(str(tmp_path))
    assert uncommented.explicit == set(initdir.SETTING_NAMES)
    assert dataclasses.replace(uncommented, explicit=frozenset()) == dataclasses.replace(
        as_written, explicit=frozenset()
    )


@pytest.mark.parametrize("upstream", ["user=postgres", "host=/tmp port=http", "host='/tmp"])
def test_bad_upstream_is_refused(tmp_path: Path, upstream: str) -> None:
    """--upstream must be a connection string pgtls.upstream accepts; nothing is written."""
    with pytest.raises(InitError, match="upstream connection string: "):
        _init(tmp_path, upstream=upstream)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("listen", ["0.0.0.0:5432", "", "a b", "*,bad host"])
def test_bad_listen_addresses_are_refused(tmp_path: Path, listen: str) -> None:
    """listen_addresses must be '*', host names or IP addresses, comma-separated."""
    with pytest.raises(InitError):
        _init(tmp_path, listen_addresses=listen)


def test_listen_addresses_list_is_normalized(tmp_path: Path) -> None:
    """Spaces after the commas of a listen list are dropped."""
    _init(tmp_path, listen_addresses="127.0.0.1, ::1,db.example.com")
    text = (tmp_path / "postgresql.conf").read_text()
    assert "listen_addresses = '127.0.0.1,::1,db.example.com'" in text.splitlines()


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_bad_port_is_refused(tmp_path: Path, port: int) -> None:
    """A port outside 1..65535 is an error."""
    with pytest.raises(InitError, match="port"):
        _init(tmp_path, port=port)


# --------------------------------------------------------------------------
# pg_hba.conf, pg_ident.conf


def test_hba_admits_ssl_from_everywhere_with_scram() -> None:
    """The active rules are hostssl for all IPv4 and IPv6 addresses, scram-sha-256."""
    rules = [line.split() for line in _active_lines(initdir.pg_hba_conf_text())]
    assert rules == [
        ["hostssl", "all", "all", "0.0.0.0/0", "scram-sha-256"],
        ["hostssl", "all", "all", "::/0", "scram-sha-256"],
    ]


def test_hba_explains_password_methods_and_shows_cert_examples() -> None:
    """The comments say the upstream checks passwords and show cert and clientcert lines."""
    text = initdir.pg_hba_conf_text()
    assert "upstream" in text
    assert "#hostssl  all  all  0.0.0.0/0  cert" in text
    assert "clientcert=verify-full" in text
    assert "map=certmap" in text


def test_ident_has_only_comments_and_examples() -> None:
    """pg_ident.conf maps nothing yet, and shows a commented certmap example."""
    text = initdir.pg_ident_conf_text()
    assert _active_lines(text) == []
    assert "#certmap  /^(.*)@example\\.com$  \\1" in text.splitlines()


def _uncommented_examples(text: str) -> str:
    """``text`` with its commented example rules made active."""
    lines = text.splitlines()
    return "".join(
        (line[1:] if re.match(r"#(hostssl|host|certmap) ", line) else line) + "\n" for line in lines
    )


def test_hba_files_load_and_decide(tmp_path: Path) -> None:
    """pgtls's own parser loads the files init wrote: SSL admitted from anywhere,
    plaintext refused with PostgreSQL's no-entry message."""
    _init(tmp_path)
    rules = hba.load_rules(
        str(tmp_path / "pg_hba.conf"),
        str(tmp_path / "pg_ident.conf"),
        ssl_enabled=True,
        client_ca_loaded=False,
    )
    assert rules.warnings == ()
    for address in ("127.0.0.1", "::1", "203.0.113.9", "2001:db8::9"):
        ip = ipaddress.ip_address(address)
        admitted = rules.match(hba.Client(ip, True, "postgres", "alice"))
        assert isinstance(admitted, hba.Admission)
        assert admitted.method == "scram-sha-256"
        refused = rules.match(hba.Client(ip, False, "postgres", "alice"))
        assert isinstance(refused, hba.Refusal)
        assert refused.message.startswith("no pg_hba.conf entry for host")


def test_hba_and_ident_examples_are_valid(tmp_path: Path) -> None:
    """Every commented example rule and map, made active, loads without error or warning."""
    (tmp_path / "pg_hba.conf").write_text(_uncommented_examples(initdir.pg_hba_conf_text()))
    (tmp_path / "pg_ident.conf").write_text(_uncommented_examples(initdir.pg_ident_conf_text()))
    assert _active_lines((tmp_path / "pg_ident.conf").read_text())
    rules = hba.load_rules(
        str(tmp_path / "pg_hba.conf"),
        str(tmp_path / "pg_ident.conf"),
        ssl_enabled=True,
        client_ca_loaded=True,
    )
    assert rules.warnings == ()
    cert = hba.ClientCert("alice", "CN=alice")
    client = hba.Client(ipaddress.ip_address("192.0.2.1"), True, "postgres", "alice", cert=cert)
    admitted = rules.match(client)
    assert isinstance(admitted, hba.Admission)
    assert admitted.method == "cert"


def test_files_written_are_the_texts(tmp_path: Path) -> None:
    """The files on disk are exactly the texts the pure functions build."""
    options = InitOptions(hostnames=NAMES, upstream="host=/tmp", port=6000)
    initdir.init_data_directory(str(tmp_path), options)
    assert (tmp_path / "postgresql.conf").read_text() == initdir.postgresql_conf_text(options)
    assert (tmp_path / "pg_hba.conf").read_text() == initdir.pg_hba_conf_text()
    assert (tmp_path / "pg_ident.conf").read_text() == initdir.pg_ident_conf_text()


# --------------------------------------------------------------------------
# psql line and summary


def test_psql_line_for_verify_full(tmp_path: Path) -> None:
    """The psql line names the first host, the port and the absolute ca.crt, verify-full."""
    result = _init(tmp_path / "d", port=6432)
    assert result.psql == (
        'psql "host=db.example.com port=6432 user=postgres dbname=postgres'
        f' sslmode=verify-full sslrootcert={tmp_path / "d" / "ca.crt"}"'
    )


def test_psql_line_path_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative DIR gives an absolute sslrootcert, usable from any directory."""
    monkeypatch.chdir(tmp_path)
    result = _init(Path("rel"))
    assert f"sslrootcert={tmp_path / 'rel' / 'ca.crt'}" in result.psql


def test_psql_command_quotes_for_libpq_and_shell() -> None:
    """Spaces are quoted for libpq inside double quotes; shell-special characters
    switch to single quotes for the shell."""
    assert initdir.psql_command([("host", "h"), ("sslrootcert", "/a b/ca.crt")]) == (
        "psql \"host=h sslrootcert='/a b/ca.crt'\""
    )
    assert initdir.psql_command([("sslrootcert", "/$HOME/it's")]) == (
        "psql 'sslrootcert='\"'\"'/$HOME/it\\'\"'\"'s'\"'\"''"
    )


def test_summary_names_files_and_next_steps(tmp_path: Path) -> None:
    """The summary lists the names certified, how to start pgtls and the psql line."""
    result = _init(tmp_path)
    text = initdir.init_summary(result)
    assert "db.example.com, localhost, 127.0.0.1, ::1" in text
    assert f"  twistd --nodaemon --pidfile= pgtls -D {tmp_path}\n" in text
    assert result.psql in text
    assert "(the default)" in text
    assert "client-cert" not in text


def test_summary_warns_when_pgtls_would_not_listen_on_the_name(tmp_path: Path) -> None:
    """A non-local host name with the default listen_addresses gets a note."""
    text = initdir.init_summary(_init(tmp_path / "a"))
    assert "listens on localhost only" in text
    text = initdir.init_summary(_init(tmp_path / "b", listen_addresses="*"))
    assert "listens on localhost only" not in text


def test_summary_with_client_ca_mentions_client_cert(tmp_path: Path) -> None:
    """With --client-ca the summary says how to issue client certificates."""
    text = initdir.init_summary(_init(tmp_path, client_ca=True))
    assert f"pgtls client-cert {tmp_path} USER" in text
    assert "root.crt" in text


# --------------------------------------------------------------------------
# client certificates


def test_client_cert_is_signed_by_the_ca_with_cn_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NAME.crt verifies against ca.crt (OpenSSL), has CN=NAME and clientAuth; key 0600."""
    _init(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    result = initdir.issue_client(str(tmp_path / "d"), "alice")
    cert_path, key_path = tmp_path / "alice.crt", tmp_path / "alice.key"
    assert (result.cert_path, result.key_path) == (str(cert_path), str(key_path))
    cert = _cert(cert_path)
    assert _openssl_verifies(_cert(tmp_path / "d" / "ca.crt"), cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    assert _key_matches(key_path, cert)
    assert _mode(key_path) == 0o600


def test_client_cert_does_not_verify_against_another_ca(tmp_path: Path) -> None:
    """The client certificate is signed by this directory's CA, not some other one."""
    _init(tmp_path / "d")
    result = initdir.issue_client(str(tmp_path / "d"), "bob", str(tmp_path / "bob"))
    other = certs.make_ca()
    assert not _openssl_verifies(other.cert, _cert(Path(result.cert_path)))


def test_client_cert_out_prefix(tmp_path: Path) -> None:
    """--out PREFIX writes PREFIX.crt and PREFIX.key, creating a missing parent 0700."""
    _init(tmp_path / "d")
    prefix = tmp_path / "home" / ".postgresql" / "postgresql"
    result = initdir.issue_client(str(tmp_path / "d"), "alice", str(prefix))
    assert result.cert_path == f"{prefix}.crt"
    assert result.key_path == f"{prefix}.key"
    assert _mode(prefix.parent) == 0o700
    assert _mode(Path(result.key_path)) == 0o600


@pytest.mark.parametrize("trailing", ["", "/"])
def test_client_cert_out_directory(tmp_path: Path, trailing: str) -> None:
    """--out naming a directory (existing, or ending with /) writes DIR/NAME.crt and .key."""
    _init(tmp_path / "d")
    out = tmp_path / "certs"
    if not trailing:
        out.mkdir()
    result = initdir.issue_client(str(tmp_path / "d"), "carol", str(out) + trailing)
    assert result.cert_path == str(out / "carol.crt")
    assert result.key_path == str(out / "carol.key")


def test_client_cert_refuses_to_overwrite(tmp_path: Path) -> None:
    """An existing NAME.key stops client-cert, naming it, and no NAME.crt is left behind."""
    _init(tmp_path / "d")
    (tmp_path / "alice.key").write_text("old")
    with pytest.raises(InitError, match=re.escape(f"{tmp_path / 'alice.key'} already exists")):
        initdir.issue_client(str(tmp_path / "d"), "alice", str(tmp_path / "alice"))
    assert not (tmp_path / "alice.crt").exists()
    assert (tmp_path / "alice.key").read_text() == "old"


def test_client_cert_needs_the_ca(tmp_path: Path) -> None:
    """A directory without ca.crt is an error naming the missing file."""
    with pytest.raises(InitError, match=re.escape(f"{tmp_path / 'ca.crt'}: No such file")):
        initdir.issue_client(str(tmp_path), "alice", str(tmp_path / "alice"))


def test_client_cert_refuses_a_key_of_another_ca(tmp_path: Path) -> None:
    """ca.key that is not ca.crt's key is an error, not a certificate nobody can verify."""
    _init(tmp_path / "one")
    _init(tmp_path / "two")
    (tmp_path / "one" / "ca.key").unlink()
    (tmp_path / "one" / "ca.key").write_bytes((tmp_path / "two" / "ca.key").read_bytes())
    with pytest.raises(InitError, match="is not the key of"):
        initdir.issue_client(str(tmp_path / "one"), "alice", str(tmp_path / "alice"))


def test_client_cert_refuses_an_encrypted_ca_key(tmp_path: Path) -> None:
    """An encrypted ca.key is reported as such."""
    ca = certs.make_ca()
    certs.write_pem(str(tmp_path / "ca.crt"), ca.cert)
    certs.write_key(str(tmp_path / "ca.key"), ca.key, passphrase=b"secret")
    with pytest.raises(InitError, match="encrypted"):
        initdir.issue_client(str(tmp_path), "alice", str(tmp_path / "alice"))


def test_client_cert_refuses_garbage_ca(tmp_path: Path) -> None:
    """A ca.crt that is no PEM certificate is an error naming it."""
    (tmp_path / "ca.crt").write_text("not a certificate")
    with pytest.raises(InitError, match=re.escape("ca.crt: not a PEM certificate")):
        initdir.issue_client(str(tmp_path), "alice", str(tmp_path / "alice"))


@pytest.mark.parametrize("user", ["", "x" * 65, "a\nb"])
def test_client_cert_refuses_bad_user_names(tmp_path: Path, user: str) -> None:
    """Empty, over-long (CN max 64) and control-character user names are refused."""
    _init(tmp_path / "d")
    with pytest.raises(InitError, match="user name"):
        initdir.issue_client(str(tmp_path / "d"), user, str(tmp_path / "out"))


def test_client_cert_user_that_is_no_file_name_needs_out(tmp_path: Path) -> None:
    """A user name with a slash cannot be the default file name; with --out it is fine."""
    _init(tmp_path / "d")
    with pytest.raises(InitError, match="--out"):
        initdir.issue_client(str(tmp_path / "d"), "a/b")
    result = initdir.issue_client(str(tmp_path / "d"), "a/b", str(tmp_path / "ab"))
    cn = _cert(Path(result.cert_path)).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn[0].value == "a/b"


def test_client_cert_summary(tmp_path: Path) -> None:
    """The summary gives the sslcert/sslkey parameters and a whole psql example."""
    _init(tmp_path / "d", client_ca=True)
    result = initdir.issue_client(str(tmp_path / "d"), "alice", str(tmp_path / "alice"))
    text = initdir.client_cert_summary(result)
    assert f"  sslcert={tmp_path / 'alice.crt'} sslkey={tmp_path / 'alice.key'}\n" in text
    assert "user=alice " in text
    assert f"sslrootcert={tmp_path / 'd' / 'ca.crt'}" in text
    assert "no root.crt" not in text


def test_client_cert_summary_notes_missing_root_crt(tmp_path: Path) -> None:
    """Without root.crt the summary says pgtls will not ask for the certificate."""
    _init(tmp_path / "d")
    result = initdir.issue_client(str(tmp_path / "d"), "alice", str(tmp_path / "alice"))
    assert "no root.crt" in initdir.client_cert_summary(result)


def test_client_cert_example_uses_the_data_directorys_port(tmp_path: Path) -> None:
    """The psql example of `pgtls client-cert` connects to the port pgtls serves."""
    directory = tmp_path / "data"
    initdir.init_data_directory(str(directory), InitOptions(hostnames=("localhost",), port=6499))
    result = initdir.issue_client(str(directory), "alice", str(tmp_path / "alice"))
    assert result.port == 6499
    assert "host=localhost port=6499 user=alice" in initdir.client_cert_summary(result)
