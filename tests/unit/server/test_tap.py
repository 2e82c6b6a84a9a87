"""
Tests for pgtls.server.tap: the ``twistd pgtls`` options, makeService, the
listening service (on a MemoryReactor: no real port is opened) and the
SIGHUP reload.
"""

from __future__ import annotations

import errno
import re
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from services import (
    ALICE,
    CLIENT,
    texts,
    write_datadir,
)
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from zope.interface import implementer

from pgtls.core import conf, wire
from pgtls.core.conf import Settings
from pgtls.relay.frontdoor import FrontDoorFactory
from pgtls.relay.reactor import is_direct
from pgtls.server.listening import ListenService, listen_descriptions
from pgtls.server.loader import StartupError, load_server_config
from pgtls.server.sdnotify import NotifyService
from pgtls.server.shutdown import ShutdownService
from pgtls.server.startprobe import StartProbeService
from pgtls.server.tap import Options, ReloadService, makeService
from pgtls.tls import certs


def parse(args: Sequence[str]) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


# -- Options -----------------------------------------------------------------


def test_data_directory_option(datadir: Path) -> None:
    """-D names the data directory; nothing is overridden by default."""
    options = parse(["-D", str(datadir)])
    assert options["pgdata"] == str(datadir)
    assert options["overrides"] == {}


def test_help_names_every_reloadable_setting() -> None:
    """``twistd pgtls --help`` names the settings SIGHUP applies, as conf.py has them."""
    sighup = " ".join(str(Options()).split()).split("SIGHUP re-reads ")[1].split(";")[0]
    named = set(re.findall(r"[a-z_.]+", sighup)) & set(conf._BY_NAME)
    assert named == set(conf._BY_NAME) - conf.RESTART_ONLY


def test_help_keeps_paragraphs_and_examples_on_their_own_lines() -> None:
    """
    ``twistd pgtls --help`` (the Options' str) lists the options, then the
    description as written: its paragraphs apart and each example on a line
    of its own, each a foreground start that leaves no twistd.pid.
    """
    text = str(Options())
    lines = text.splitlines()
    assert "  -D, --pgdata=" in text
    examples = lines[lines.index("Examples:") + 1 :]
    assert examples == [
        "  twistd --nodaemon --pidfile= pgtls -D /var/lib/pgtls",
        "  twistd --nodaemon --pidfile= pgtls -D ./demo -p 6432 -c log_connections=on",
    ]
    assert "\n\nThe data directory holds postgresql.conf" in text
    assert max(map(len, lines)) <= 80


def test_relative_data_directory_is_made_absolute(
    datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative -D is taken from the current directory, before twistd changes it."""
    monkeypatch.chdir(datadir.parent)
    assert parse(["-D", datadir.name])["pgdata"] == str(datadir)


def test_pgdata_environment(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without -D, $PGDATA names the data directory; -D wins over it."""
    monkeypatch.setenv("PGDATA", str(datadir))
    assert parse([])["pgdata"] == str(datadir)
    assert parse(["-D", "/elsewhere"])["pgdata"] == "/elsewhere"


@pytest.mark.parametrize("pgdata", [None, ""])
def test_no_data_directory_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, pgdata: str | None
) -> None:
    """Neither -D nor $PGDATA (or an empty one): one pgtls line that says what to do."""
    if pgdata is None:
        monkeypatch.delenv("PGDATA", raising=False)
    else:
        monkeypatch.setenv("PGDATA", pgdata)
    assert one_line_exit(lambda: parse([])) == (
        "pgtls: no data directory: give -D DIR or set PGDATA (see twistd pgtls --help)"
    )


def test_port_and_listen_addresses_are_overrides(datadir: Path) -> None:
    """-p and -h override port and listen_addresses as text, like -c would."""
    options = parse(["-D", str(datadir), "-p", "6432", "-h", "127.0.0.1,::1"])
    assert options["overrides"] == {"port": "6432", "listen_addresses": "127.0.0.1,::1"}


def test_c_is_repeatable(datadir: Path) -> None:
    """-c NAME=VALUE repeats; a value may hold '=' and spaces; the last of a name wins."""
    options = parse(
        [
            "-D",
            str(datadir),
            "-c",
            "log_connections=on",
            "-c",
            "pgtls.upstream=host=/tmp port=5433",
            "--set",
            "log_connections=off",
            "-c",
            "authentication_timeout=",
        ]
    )
    assert options["overrides"] == {
        "log_connections": "off",
        "pgtls.upstream": "host=/tmp port=5433",
        "authentication_timeout": "",
    }


@pytest.mark.parametrize("assignment", ["log_connections", "=on", " =on"])
def test_bad_c_is_a_usage_error(datadir: Path, assignment: str) -> None:
    """-c without NAME=VALUE is one pgtls line naming what was given."""
    assert one_line_exit(lambda: parse(["-D", str(datadir), "-c", assignment])) == (
        f"pgtls: -c takes NAME=VALUE, not {assignment!r} (see twistd pgtls --help)"
    )


@pytest.mark.parametrize("option", ["-x", "--bogus"])
def test_unknown_option_is_one_line(datadir: Path, option: str) -> None:
    """An option pgtls does not know: one pgtls line with Twisted's reason and a hint."""
    assert one_line_exit(lambda: parse(["-D", str(datadir), option])) == (
        f"pgtls: option {option} not recognized (see twistd pgtls --help)"
    )


# -- listen_addresses --------------------------------------------------------


def test_star_is_the_ipv6_wildcard_or_else_the_ipv4_one() -> None:
    """'*': one group, the IPv6 wildcard first (quoted for the endpoint parser), then IPv4."""
    assert listen_descriptions("*", 5432) == [
        ["tcp6:5432:interface=\\:\\:", "tcp:5432:interface=0.0.0.0"]
    ]


def test_numeric_addresses() -> None:
    """Numeric addresses give one endpoint each: tcp for IPv4, tcp6 (quoted) for IPv6."""
    assert listen_descriptions("127.0.0.1", 6432) == [["tcp:6432:interface=127.0.0.1"]]
    assert listen_descriptions("::1", 6432) == [["tcp6:6432:interface=\\:\\:1"]]
    assert listen_descriptions(" 127.0.0.1 , ::1 ", 6432) == [
        ["tcp:6432:interface=127.0.0.1"],
        ["tcp6:6432:interface=\\:\\:1"],
    ]


def test_localhost_gives_each_of_its_addresses_once() -> None:
    """A host name listens on every address it resolves to, each once, even if named twice."""
    addresses = {
        info[4][0]
        for info in socket.getaddrinfo(
            "localhost", 5432, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    }
    groups = listen_descriptions("localhost,127.0.0.1,localhost", 5432)
    descriptions = [description for group in groups for description in group]
    assert all(len(group) == 1 for group in groups)
    assert len(descriptions) == len(set(descriptions)) == len(addresses)
    assert "tcp:5432:interface=127.0.0.1" in descriptions


def test_empty_listen_addresses() -> None:
    """'' (and stray commas): no endpoint at all."""
    assert listen_descriptions("", 5432) == []
    assert listen_descriptions(" , ,", 5432) == []


def test_unresolvable_name_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that does not resolve: StartupError with PostgreSQL's words and the reason."""
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        # No DNS query from a unit test: this name is known not to resolve.
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(StartupError) as raised:
        listen_descriptions("127.0.0.1,no-such-host.invalid", 5432)
    assert str(raised.value) == (
        'listen_addresses: could not translate host name "no-such-host.invalid", '
        'service "5432" to address: Name or service not known'
    )


# -- makeService -------------------------------------------------------------


def test_make_service(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    makeService: a MultiService of the reload, listening, notify and shutdown
    services, sharing one factory (reload first: SIGHUP is hooked before a
    port listens); without NOTIFY_SOCKET nothing is notified,
    without LISTEN_FDNAMES nothing was passed by systemd.
    """
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    top = makeService(parse(["-D", str(datadir), "-c", "log_connections=on", "-p", "6543"]))
    assert isinstance(top, MultiService)
    reload, listen, notify, shutdown = list(top)[:4]
    assert isinstance(listen, ListenService)
    assert isinstance(reload, ReloadService)
    assert isinstance(notify, NotifyService)
    assert isinstance(shutdown, ShutdownService)
    assert listen.factory is reload.factory is notify.factory is shutdown.factory
    (probe,) = [service for service in top if isinstance(service, StartProbeService)]
    assert probe.factory is listen.factory
    assert reload.notify is shutdown.notify is notify
    assert listen.inherited == []
    assert not notify.notifier.enabled
    settings = listen.factory.settings
    assert settings.data_directory == str(datadir)
    assert settings.log_connections is True
    assert settings.port == 6543
    assert listen.factory.tls is not None
    assert reload.overrides == {"log_connections": "on", "port": "6543"}
    assert listen.ports == []  # nothing bound before privilegedStartService


def test_make_service_notifies_systemd_when_asked(
    datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With NOTIFY_SOCKET set ('@' = abstract namespace), the notify service sends there."""
    monkeypatch.setenv("NOTIFY_SOCKET", "@pgtls-test")
    top = makeService(parse(["-D", str(datadir)]))
    (notify,) = [service for service in top if isinstance(service, NotifyService)]
    assert notify.notifier.address == b"\0pgtls-test"


def test_make_service_logs_rule_warnings_and_notices(
    tmp_path: Path, server_cert: certs.Issued
) -> None:
    """Warnings of pg_hba.conf and skipped include_if_exists files are logged at start."""
    datadir = write_datadir(
        tmp_path / "data",
        server_cert,
        conf=["ssl = off", "include_if_exists 'missing.conf'"],
        hba=["hostssl all all 0.0.0.0/0 trust", "host all all 0.0.0.0/0 trust"],
    )
    with capturedLogs() as events:
        makeService(parse(["-D", str(datadir)]))
    lines = texts(events)
    missing = datadir / "missing.conf"
    assert f'skipping missing configuration file "{missing}"' in lines
    assert any(line.startswith(f"{datadir / 'pg_hba.conf'}:1: ") for line in lines), lines


def test_make_service_warns_of_a_remote_upstream_without_tls(
    tmp_path: Path, server_cert: certs.Issued
) -> None:
    """A TCP upstream off this machine with sslmode below require: one warning at start."""
    datadir = write_datadir(
        tmp_path / "data",
        server_cert,
        conf=["ssl = off", "pgtls.upstream = 'host=192.0.2.10 port=5432'"],
        hba=["host all all 0.0.0.0/0 trust"],
    )
    with capturedLogs() as events:
        makeService(parse(["-D", str(datadir)]))
    warned = [
        line
        for line in texts(events)
        if "the upstream server 192.0.2.10:5432 is not on this machine" in line
    ]
    assert len(warned) == 1
    assert "sslmode=prefer" in warned[0]


def one_line_exit(top: Callable[[], object]) -> str:
    """The message of the SystemExit ``top()`` raises, checked to be one pgtls line."""
    with pytest.raises(SystemExit) as raised:
        top()
    message = raised.value.code
    assert isinstance(message, str)
    assert message.startswith("pgtls: ")
    assert "\n" not in message
    return message


def test_make_service_broken_postgresql_conf(tmp_path: Path, server_cert: certs.Issued) -> None:
    """A bad postgresql.conf: SystemExit `pgtls: FILE:LINE: reason`, before anything listens."""
    datadir = write_datadir(
        tmp_path / "data", server_cert, conf=["ssl = on", "no_such_setting = 1"]
    )
    message = one_line_exit(lambda: makeService(parse(["-D", str(datadir)])))
    assert message == (
        f"pgtls: {datadir / 'postgresql.conf'}:2: "
        'unrecognized configuration parameter "no_such_setting"'
    )


def test_make_service_broken_pg_hba_conf(tmp_path: Path, server_cert: certs.Issued) -> None:
    """A bad pg_hba.conf: SystemExit naming pg_hba.conf and its line."""
    datadir = write_datadir(tmp_path / "data", server_cert, hba=["host all all nonsense/99 trust"])
    message = one_line_exit(lambda: makeService(parse(["-D", str(datadir)])))
    assert message.startswith(f"pgtls: {datadir / 'pg_hba.conf'}:1: ")


def test_make_service_names_every_bad_pg_hba_line(
    tmp_path: Path, server_cert: certs.Issued
) -> None:
    """Several bad pg_hba.conf lines: one `pgtls: FILE:LINE: reason` line for each."""
    datadir = write_datadir(
        tmp_path / "data",
        server_cert,
        hba=["host all all nonsense/99 trust", "host all all 0.0.0.0/0 trust", "hostx all all"],
    )
    with pytest.raises(SystemExit) as raised:
        makeService(parse(["-D", str(datadir)]))
    hba_file = datadir / "pg_hba.conf"
    assert raised.value.code == (
        f'pgtls: {hba_file}:1: specifying both host name and CIDR mask is invalid: "nonsense/99"\n'
        f'pgtls: {hba_file}:3: invalid connection type "hostx"'
    )


def test_make_service_missing_data_directory(tmp_path: Path) -> None:
    """A -D that does not exist: SystemExit that says so."""
    missing = tmp_path / "nowhere"
    message = one_line_exit(lambda: makeService(parse(["-D", str(missing)])))
    assert message == f"pgtls: {missing}: data directory does not exist"


def test_make_service_bad_port_override(datadir: Path) -> None:
    """-p abc: PostgreSQL's invalid value message, at `command line`."""
    message = one_line_exit(lambda: makeService(parse(["-D", str(datadir), "-p", "abc"])))
    assert message == 'pgtls: command line: invalid value for parameter "port": "abc"'


def test_make_service_unresolvable_listen_address(
    datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A listen address that does not resolve stops the start, before
    daemonizing, at its source (``command line`` for -h), in PostgreSQL's words.
    """

    def getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    message = one_line_exit(
        lambda: makeService(parse(["-D", str(datadir), "-h", "no-such-host.invalid"]))
    )
    assert message == (
        "pgtls: command line: listen_addresses: could not translate host name "
        '"no-such-host.invalid", service "5432" to address: Name or service not known'
    )


def test_make_service_unresolvable_listen_address_names_its_line(
    tmp_path: Path, server_cert: certs.Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """listen_addresses set in postgresql.conf: the error names that file and line."""

    def getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    datadir = write_datadir(
        tmp_path / "data",
        server_cert,
        conf=["ssl = on", "port = 6543", "listen_addresses = 'nosuchhost.invalid'"],
    )
    message = one_line_exit(lambda: makeService(parse(["-D", str(datadir)])))
    assert message == (
        f"pgtls: {datadir / 'postgresql.conf'}:3: listen_addresses: could not translate host "
        'name "nosuchhost.invalid", service "6543" to address: Name or service not known'
    )


# -- ListenService -----------------------------------------------------------


@implementer(IListeningPort)
class FakePort:
    """A listening port that reports the interface it was given."""

    def __init__(self, address: IPv4Address | IPv6Address) -> None:
        self.address = address
        self.listening = True

    def startListening(self) -> None:
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False

    def getHost(self) -> IPv4Address | IPv6Address:
        return self.address


class ListeningReactor(MemoryReactor):
    """A MemoryReactor whose listenTCP fails for some interfaces."""

    def __init__(self, unbindable: Sequence[str] = ()) -> None:
        super().__init__()
        self.unbindable = set(unbindable)
        self.ports: list[FakePort] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if interface in self.unbindable:
            raise CannotListenError(
                interface, port, OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
            )
        self.tcpServers.append((port, factory, backlog, interface))
        kind = IPv6Address if ":" in interface else IPv4Address
        self.ports.append(FakePort(kind("TCP", interface, port)))
        return self.ports[-1]


def listen_service(
    tmp_path: Path, listen_addresses: str, unbindable: Sequence[str] = ()
) -> tuple[ListenService, ListeningReactor, FrontDoorFactory]:
    reactor = ListeningReactor(unbindable)
    settings = Settings(data_directory=str(tmp_path), listen_addresses=listen_addresses, port=5432)
    factory = FrontDoorFactory(settings, None, None, reactor)  # type: ignore[arg-type]
    return ListenService(reactor, factory), reactor, factory


def test_listen_service_binds_at_privileged_start(tmp_path: Path) -> None:
    """privilegedStartService binds each address with the front door factory, and says so."""
    service, reactor, factory = listen_service(tmp_path, "127.0.0.1,::1")
    with capturedLogs() as events:
        service.privilegedStartService()
    assert [(port, f, interface) for port, f, _backlog, interface in reactor.tcpServers] == [
        (5432, factory, "127.0.0.1"),
        (5432, factory, "::1"),
    ]
    assert service.ports == reactor.ports
    assert texts(events) == [
        'listening on IPv4 address "127.0.0.1", port 5432',
        'listening on IPv6 address "::1", port 5432',
    ]


def test_listen_service_ports_accept_without_log_context(tmp_path: Path) -> None:
    """Each port's accepts are dispatched directly (pgtls.relay.reactor), as its connections are."""
    service, _reactor, _factory = listen_service(tmp_path, "127.0.0.1,::1")
    service.privilegedStartService()
    assert [is_direct(port) for port in service.ports] == [True, True]


def test_listen_service_star_takes_the_ipv6_wildcard_alone(tmp_path: Path) -> None:
    """'*' with IPv6 available: the :: wildcard only (it takes IPv4 clients too)."""
    service, reactor, _factory = listen_service(tmp_path, "*")
    service.privilegedStartService()
    assert [server[3] for server in reactor.tcpServers] == ["::"]


def test_listen_service_star_falls_back_to_ipv4(tmp_path: Path) -> None:
    """'*' where :: cannot be bound: a warning, then 0.0.0.0."""
    service, reactor, _factory = listen_service(tmp_path, "*", unbindable=["::"])
    with capturedLogs() as events:
        service.privilegedStartService()
    assert [server[3] for server in reactor.tcpServers] == ["0.0.0.0"]
    (warning,) = [e for e in events if e["log_level"] is LogLevel.warn]
    assert formatEvent(warning).startswith("could not bind tcp6:5432:interface=\\:\\:: ")
    assert "Cannot assign requested address" in formatEvent(warning)


def test_listen_service_goes_on_without_an_unbindable_address(tmp_path: Path) -> None:
    """One address that cannot be bound is skipped with a warning, as PostgreSQL does."""
    service, reactor, _factory = listen_service(tmp_path, "127.0.0.1,::1", unbindable=["::1"])
    service.privilegedStartService()
    assert [server[3] for server in reactor.tcpServers] == ["127.0.0.1"]


def test_listen_service_without_any_socket_exits(tmp_path: Path) -> None:
    """Nothing could be bound: SystemExit `pgtls: could not create any TCP/IP sockets`."""
    service, _reactor, _factory = listen_service(
        tmp_path, "*,127.0.0.1", unbindable=["::", "0.0.0.0", "127.0.0.1"]
    )
    with pytest.raises(SystemExit) as raised:
        service.privilegedStartService()
    assert raised.value.code == "pgtls: could not create any TCP/IP sockets"


def test_listen_service_stop_closes_the_ports(tmp_path: Path) -> None:
    """stopService stops every port it opened and forgets them."""
    service, reactor, _factory = listen_service(tmp_path, "127.0.0.1,::1")
    service.privilegedStartService()
    service.startService()
    done = service.stopService()
    assert [port.listening for port in reactor.ports] == [False, False]
    assert service.ports == []
    result: list[object] = []
    done.addBoth(result.append)
    assert result == [[None, None]]


# -- ReloadService -----------------------------------------------------------


class Reloading:
    """A data directory, the factory loaded from it, and its ReloadService."""

    def __init__(self, datadir: Path, overrides: dict[str, str] | None = None) -> None:
        self.datadir = datadir
        config = load_server_config(str(datadir), overrides)
        self.reactor = MemoryReactorClock()
        self.factory = FrontDoorFactory(config.settings, config.rules, config.tls, self.reactor)
        self.service = ReloadService(self.reactor, self.factory, dict(overrides or {}))

    def write(self, name: str, lines: Sequence[str]) -> None:
        (self.datadir / name).write_text("\n".join(lines) + "\n")

    def reload(self) -> list[str]:
        """SIGHUP's work; returns what it logged."""
        with capturedLogs() as events:
            self.service.reload()
        return texts(events)

    def answer_to(self, startup: bytes) -> bytes:
        """What a new plaintext client sending ``startup`` gets back at once."""
        protocol = self.factory.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)
        protocol.dataReceived(startup)
        answer: bytes = transport.value()
        return answer


def test_reload_logs_that_it_reloads(datadir: Path) -> None:
    """A reload starts with PostgreSQL's `received SIGHUP, reloading configuration files`."""
    lines = Reloading(datadir).reload()
    assert lines[0] == "received SIGHUP, reloading configuration files"


def test_reload_does_not_apply_a_restart_only_change(datadir: Path) -> None:
    """ssl changed in the file: logged as needing a restart, and not applied."""
    reloading = Reloading(datadir)
    tls = reloading.factory.tls
    reloading.write("postgresql.conf", ["ssl = off", "port = 6000"])
    lines = reloading.reload()
    assert 'parameter "ssl" cannot be changed without restarting the server' in lines
    assert 'parameter "port" cannot be changed without restarting the server' in lines
    assert reloading.factory.settings.ssl is True
    assert reloading.factory.settings.port == 5432
    assert reloading.factory.tls is tls


def test_reload_applies_a_reloadable_change(datadir: Path) -> None:
    """log_connections and authentication_timeout changed: logged and in force for new clients."""
    reloading = Reloading(datadir)
    reloading.write(
        "postgresql.conf", ["ssl = on", "log_connections = on", "authentication_timeout = 10s"]
    )
    lines = reloading.reload()
    assert 'parameter "log_connections" changed to "on"' in lines
    assert 'parameter "authentication_timeout" changed to "10s"' in lines
    assert not [line for line in lines if "cannot be changed" in line]
    assert reloading.factory.settings.log_connections is True
    assert reloading.factory.settings.authentication_timeout == 10.0
    with capturedLogs() as events:
        reloading.answer_to(b"")
    assert "connection received: host=192.0.2.7 port=40000" in texts(events)
    assert [call.getTime() for call in reloading.reactor.getDelayedCalls()] == [10.0]


def test_reload_keeps_command_line_overrides(datadir: Path) -> None:
    """A -c override still wins over the file after a reload."""
    reloading = Reloading(datadir, {"log_connections": "on"})
    reloading.write("postgresql.conf", ["ssl = on", "log_connections = off"])
    reloading.reload()
    assert reloading.factory.settings.log_connections is True


def test_reload_applies_new_rules(datadir: Path) -> None:
    """A new pg_hba.conf decides every connection admitted after the reload."""
    reloading = Reloading(datadir)
    assert reloading.answer_to(ALICE) == b""
    reloading.write("pg_hba.conf", ["host all alice 0.0.0.0/0 reject"])
    reloading.reload()
    fields = wire.parse_error_response(reloading.answer_to(ALICE))
    assert fields["C"] == "28000"
    assert fields["M"].startswith('pg_hba.conf rejects connection for host "192.0.2.7"')


def test_reload_with_a_broken_pg_hba_conf_keeps_the_rules(datadir: Path) -> None:
    """pg_hba.conf that does not parse: the error and `pg_hba.conf was not reloaded`; old rules."""
    reloading = Reloading(datadir)
    rules = reloading.factory.rules
    reloading.write("pg_hba.conf", ["host all all 0.0.0.0/0 trust", "host all all"])
    lines = reloading.reload()
    assert "pg_hba.conf was not reloaded" in lines
    assert any(line.startswith(f"{datadir / 'pg_hba.conf'}:2: ") for line in lines), lines
    assert reloading.factory.rules is rules
    assert reloading.answer_to(ALICE) == b""


def test_reload_names_every_bad_line_and_keeps_the_rules(datadir: Path) -> None:
    """
    Several bad lines in both files: each is logged, then PostgreSQL's
    `pg_hba.conf was not reloaded` and `pg_ident.conf was not reloaded`;
    the rules in force stay.
    """
    reloading = Reloading(datadir)
    rules = reloading.factory.rules
    reloading.write("pg_hba.conf", ["host all all 1.2.3.4/99 trust", "hostx", "local all all"])
    reloading.write("pg_ident.conf", ["m alice", "m /( bob"])
    lines = reloading.reload()
    hba_file, ident_file = datadir / "pg_hba.conf", datadir / "pg_ident.conf"
    reported = [line for line in lines if line.startswith((str(hba_file), str(ident_file)))]
    assert [line.split(": ", 1)[0] for line in reported] == [
        f"{hba_file}:1",
        f"{hba_file}:2",
        f"{hba_file}:3",
        f"{ident_file}:1",
        f"{ident_file}:2",
    ]
    assert lines[-2:] == ["pg_hba.conf was not reloaded", "pg_ident.conf was not reloaded"]
    assert reloading.factory.rules is rules


def test_reload_with_only_pg_ident_broken_names_pg_ident(datadir: Path) -> None:
    """Only pg_ident.conf is bad: only `pg_ident.conf was not reloaded`."""
    reloading = Reloading(datadir)
    reloading.write("pg_ident.conf", ["m alice"])
    lines = reloading.reload()
    assert lines[-1] == "pg_ident.conf was not reloaded"
    assert "pg_hba.conf was not reloaded" not in lines


def test_reload_with_a_broken_postgresql_conf_changes_no_setting(datadir: Path) -> None:
    """postgresql.conf with an error: PostgreSQL's `contains errors` line; settings unchanged."""
    reloading = Reloading(datadir)
    settings = reloading.factory.settings
    reloading.write("postgresql.conf", ["ssl = on", "log_connections = on", "bogus = 1"])
    lines = reloading.reload()
    conf_file = datadir / "postgresql.conf"
    assert f'configuration file "{conf_file}" contains errors; no changes were applied' in lines
    assert f'{conf_file}:3: unrecognized configuration parameter "bogus"' in lines
    assert reloading.factory.settings is settings


def test_reload_logs_new_rule_warnings(tmp_path: Path, server_cert: certs.Issued) -> None:
    """Warnings of the reloaded pg_hba.conf are logged (hostssl with ssl = off)."""
    datadir = write_datadir(tmp_path / "data", server_cert, conf=["ssl = off"])
    reloading = Reloading(datadir)
    reloading.write("pg_hba.conf", ["hostssl all all 0.0.0.0/0 trust"])
    lines = reloading.reload()
    assert any(line.startswith(f"{datadir / 'pg_hba.conf'}:1: ") for line in lines), lines


class ThreadReactor:
    """Records what a signal handler hands to the reactor thread."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], object]] = []

    def callFromThread(self, function: Callable[[], object]) -> None:
        self.calls.append(function)


@pytest.fixture
def sighup_restored() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)


@pytest.mark.usefixtures("sighup_restored")
def test_sighup_handler_reloads_in_the_reactor_thread(datadir: Path) -> None:
    """startService hooks SIGHUP to a reload on the reactor thread; stopService unhooks it."""
    before = signal.getsignal(signal.SIGHUP)
    reloading = Reloading(datadir)
    reactor = ThreadReactor()
    service = ReloadService(reactor, reloading.factory, {})
    service.startService()
    handler = signal.getsignal(signal.SIGHUP)
    assert callable(handler) and handler is not before
    handler(signal.SIGHUP, None)
    assert reactor.calls == [service.reload]
    service.stopService()
    assert signal.getsignal(signal.SIGHUP) is before


@pytest.mark.usefixtures("sighup_restored")
def test_sighup_is_hooked_before_any_port_listens(datadir: Path) -> None:
    """
    A client may connect and a SIGHUP arrive as soon as a port listens, before
    the reactor runs: the handler is in place by then (SIGHUP's default action
    ends the process). Hooking twice keeps the first previous handler.
    """
    before = signal.getsignal(signal.SIGHUP)
    hooked_at_listen: list[bool] = []

    class Watching(MemoryReactor):
        def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
            hooked_at_listen.append(signal.getsignal(signal.SIGHUP) is not before)
            return super().listenTCP(*args, **kwargs)

    reloading = Reloading(datadir)
    reactor = Watching()
    top = MultiService()
    reload = ReloadService(reactor, reloading.factory, {})
    reload.setServiceParent(top)
    ListenService(reactor, reloading.factory, []).setServiceParent(top)
    top.privilegedStartService()
    top.startService()
    assert hooked_at_listen and all(hooked_at_listen)
    top.stopService()
    assert signal.getsignal(signal.SIGHUP) is before


def test_make_service_decides_the_fast_path(datadir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """makeService runs the fast path's self-test (it passes here), unless switched off."""
    from pgtls.relay import fastpath

    monkeypatch.delenv("PGTLS_FAST_PATH", raising=False)
    fastpath.set_on(False)
    makeService(parse(["-D", str(datadir)]))
    assert fastpath.on()
    makeService(parse(["-D", str(datadir), "-c", "pgtls.fast_path=off"]))
    assert not fastpath.on()
    monkeypatch.setenv("PGTLS_FAST_PATH", "on")
    makeService(parse(["-D", str(datadir), "-c", "pgtls.fast_path=off"]))
    assert fastpath.on()


def test_make_service_bad_fast_path_environment(
    datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PGTLS_FAST_PATH that is not a boolean stops the start with one line."""
    monkeypatch.setenv("PGTLS_FAST_PATH", "sometimes")
    message = one_line_exit(lambda: makeService(parse(["-D", str(datadir)])))
    assert message == 'pgtls: invalid value for environment variable PGTLS_FAST_PATH: "sometimes"'
