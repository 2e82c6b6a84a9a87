"""
Tests for SIGUSR2's hand-over (pgtls.server.handover) and for the smart shutdowns
that leave the port to other processes (pgtls.so_reuseport, a hand-over):
the pure parts, and the services on a memory reactor with a fake new
process.  The real processes are in tests/integration/test_sigusr2.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import ALICE, Received, Server, fatal, lose, texts
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from pgtls.server import handover
from pgtls.server.handover import (
    CHANNEL_VARIABLE,
    READY,
    Channel,
    HandoverService,
    child_argv,
    child_environment,
    last_line,
)
from pgtls.server.listening import ListenService, bind_shared, listen_descriptions, tcp_address
from pgtls.server.sdnotify import Notifier
from pgtls.tls.errors import TLSConfigError

# -- the pure parts ------------------------------------------------------------


def test_child_argv_sets_listen_pid_to_the_exec_d_process() -> None:
    """
    The shell in front of the new command sets LISTEN_PID to its own PID and
    execs, so the command runs with LISTEN_PID equal to its PID, as the
    socket-activation protocol asks.
    """
    argv = child_argv(
        sys.executable,
        ["ignored", "-c", "import os; print(os.environ['LISTEN_PID'] == str(os.getpid()))"],
    )
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[4] == sys.executable
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout == "True\n"


def test_child_argv_keeps_the_arguments() -> None:
    """The interpreter comes from sys.executable; every original argument follows."""
    argv = child_argv(
        "/venv/bin/python3", ["python3", "/venv/bin/twistd", "-n", "pgtls", "-D", "d"]
    )
    assert argv[4:] == ["/venv/bin/python3", "/venv/bin/twistd", "-n", "pgtls", "-D", "d"]


def test_child_environment() -> None:
    """Our environment with the passed sockets and the channel; no stale LISTEN_PID."""
    env = child_environment(
        {"PATH": "/bin", "LISTEN_PID": "1", "LISTEN_FDS": "9", "NOTIFY_SOCKET": "/run/n"},
        ["pgtls", "pgtls"],
        5,
        6,
        7,
    )
    assert env == {
        "PATH": "/bin",
        "NOTIFY_SOCKET": "/run/n",
        "LISTEN_FDS": "2",
        "LISTEN_FDNAMES": "pgtls:pgtls",
        CHANNEL_VARIABLE: "5:6:7",
    }
    assert child_environment({}, ["pgtls"], 4, 5)[CHANNEL_VARIABLE] == "4:5"


def test_child_environment_refuses_a_name_with_a_colon() -> None:
    """LISTEN_FDNAMES separates names with colons: a name cannot hold one."""
    with pytest.raises(ValueError, match="cannot pass socket names"):
        child_environment({}, ["a:b"], 4, 5)


def test_last_line() -> None:
    """The new process's one-line error is the last non-blank line of its stderr."""
    assert last_line(b"warning\npgtls: bad file\n\n") == "pgtls: bad file"
    assert last_line(b"") == ""
    assert last_line(b"\xff\n") == "\ufffd"


def test_channel_from_environment() -> None:
    """PGTLS_HANDOVER is read once (removed); a malformed value is no channel."""
    env = {CHANNEL_VARIABLE: "5:6", "OTHER": "x"}
    assert Channel.from_environment(env) == Channel(5, 6, None)
    assert env == {"OTHER": "x"}
    assert Channel.from_environment(env) is None
    assert Channel.from_environment({CHANNEL_VARIABLE: "5:6:7"}) == Channel(5, 6, 7)
    assert Channel.from_environment({CHANNEL_VARIABLE: "5"}) is None
    assert Channel.from_environment({CHANNEL_VARIABLE: "5:6:7:8"}) is None
    assert Channel.from_environment({CHANNEL_VARIABLE: "a:6"}) is None


def test_channel_report_ready() -> None:
    """READY=1 goes down the ready pipe, which is closed; stderr is put back."""
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    try:
        Channel(write_end, os.dup(2)).report_ready()
        assert os.read(read_end, 100) == READY
        assert os.read(read_end, 100) == b""  # closed: EOF
        assert os.path.sameopenfile(2, saved)
    finally:
        os.close(read_end)
        os.dup2(saved, 2)
        os.close(saved)


def test_channel_metrics_endpoint_adopts_with_the_socket_family() -> None:
    """The metrics socket is adopted with its own family (IPv6 here)."""
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        sock.listen()
        endpoint = Channel(4, 5, sock.fileno()).metrics_endpoint(MemoryReactor())
        assert (endpoint.fileno, endpoint.addressFamily) == (sock.fileno(), socket.AF_INET6)


def test_no_terminal_passphrase() -> None:
    """A process started by SIGUSR2 cannot prompt: the error says what to set."""
    with pytest.raises(TLSConfigError) as raised:
        handover.no_terminal_passphrase("Enter PEM pass phrase:")
    assert "set ssl_passphrase_command" in str(raised.value)


# -- shared ports ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1", (socket.AF_INET, "127.0.0.1", 6543)),
        ("::1", (socket.AF_INET6, "::1", 6543)),
        ("*", (socket.AF_INET6, "::", 6543)),
    ],
)
def test_tcp_address_reads_listen_descriptions(listen: str, expected: Any) -> None:
    """tcp_address undoes listen_descriptions' quoting (IPv6 colons are escaped)."""
    assert tcp_address(listen_descriptions(listen, 6543)[0][0]) == expected


def test_tcp_address_refuses_anything_else() -> None:
    with pytest.raises(ValueError):
        tcp_address("systemd:domain=INET:index=0")


def test_bind_shared_lets_two_sockets_share_a_port() -> None:
    """Two sockets bound with SO_REUSEPORT share a port; one without it cannot join."""
    first = bind_shared("tcp:0:interface=127.0.0.1")
    port = first.getsockname()[1]
    second = bind_shared(f"tcp:{port}:interface=127.0.0.1")
    try:
        assert second.getsockname() == first.getsockname()
        assert second.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    finally:
        first.close()
        second.close()


class _Listening:
    """What shared_port() reads of a port: its descriptor."""

    def __init__(self, sock: socket.socket) -> None:
        self.fileno = sock.fileno


def test_shared_port_reads_the_socket_option() -> None:
    """shared_port() is what the sockets say: SO_REUSEPORT set or not."""
    shared = bind_shared("tcp:0:interface=127.0.0.1")
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    try:
        for sock, expected in ((shared, True), (plain, False)):
            service = ListenService.__new__(ListenService)
            service.ports = [_Listening(sock)]  # type: ignore[list-item]
            assert service.shared_port() is expected
    finally:
        shared.close()
        plain.close()


def test_listen_service_binds_shared_with_so_reuseport(tmp_path: Path) -> None:
    """
    With pgtls.so_reuseport each address is bound here, with SO_REUSEPORT,
    and adopted by the reactor (Twisted's endpoints cannot set the option).
    """
    from pgtls.core.conf import Settings
    from pgtls.relay.frontdoor import FrontDoorFactory

    reactor = MemoryReactor()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(
        data_directory=str(tmp_path), listen_addresses="127.0.0.1", port=port, so_reuseport=True
    )
    factory = FrontDoorFactory(settings, None, None, reactor)  # type: ignore[arg-type]
    service = ListenService(reactor, factory)
    with capturedLogs() as events:
        service.privilegedStartService()
    assert [(family, f) for _fd, family, f in reactor.adoptedPorts] == [(socket.AF_INET, factory)]
    assert reactor.tcpServers == []
    assert len(service.ports) == 1
    assert "listening on IPv4 address" in texts(events)[0]


def _twisted_port(shared: bool) -> tuple[tcp.Port, int]:
    """A port Twisted bound itself (as tcp: endpoints do), and a duplicate of its socket."""
    port = tcp.Port(
        0, Factory.forProtocol(Protocol), interface="127.0.0.1", reactor=MemoryReactor()
    )
    port.startListening()
    duplicate = os.dup(port.fileno())
    if shared:
        service = ListenService.__new__(ListenService)
        service.ports = [port]
        assert service.share() == [port.fileno()]
    port.connectionLost(Failure(ConnectionDone()))
    return port, duplicate


@pytest.mark.parametrize("shared", [False, True])
def test_share_keeps_the_socket_listening_for_the_other_process(shared: bool) -> None:
    """
    Twisted shuts a socket it bound down when its port closes, which stops
    it for every process holding it; after share() it only closes ours.
    (This pins the Twisted behaviour share() relies on.)
    """
    _port, duplicate = _twisted_port(shared)
    with socket.socket(fileno=duplicate) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == int(shared)


# -- the hand-over, with a fake new process -----------------------------------------


class FakeListen:
    """The ListenService's part in a hand-over."""

    def __init__(self, shared: bool = False) -> None:
        self.calls: list[str] = []
        self.shared = shared

    def shared_port(self) -> bool:
        return self.shared

    def share(self) -> list[int]:
        self.calls.append("share")
        return [0]  # any open descriptor: the fake spawn does not use it

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")

    def stop_listening(self) -> None:
        self.calls.append("stop_listening")


class FakeProcess:
    pid = 4242

    def __init__(self) -> None:
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeMetricsPort:
    """A metrics port that records whether it accepts."""

    def __init__(self) -> None:
        self.reading = True
        self._shouldShutdown = True

    def fileno(self) -> int:
        return 0

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False


class FakeMetrics:
    def __init__(self) -> None:
        self.port = FakeMetricsPort()


class HandingOver:
    """A Server whose ShutdownService has a fake listener, and a HandoverService on it."""

    def __init__(self, datadir: Path, notifier: Notifier | None = None) -> None:
        self.server = Server(datadir, notifier)
        self.listen = FakeListen()
        self.server.shutdown.listen = self.listen  # type: ignore[assignment]
        self.spawned: list[dict[str, Any]] = []
        self.process = FakeProcess()
        self.metrics = FakeMetrics()
        self.server.reactor.spawnProcess = self._spawn  # type: ignore[attr-defined]
        self.service = HandoverService(
            self.server.reactor,
            self.listen,  # type: ignore[arg-type]
            self.server.shutdown,
            self.metrics,  # type: ignore[arg-type]
            timeout=60.0,
            argv=["/bin/sh", "-c", "new pgtls"],
        )
        self.server.start()

    def _spawn(self, protocol: Any, executable: str, args: list[str], **kwargs: Any) -> Any:
        self.spawned.append({"protocol": protocol, "args": args, **kwargs})
        protocol.makeConnection(self.process)
        return self.process

    @property
    def protocol(self) -> Any:
        return self.spawned[-1]["protocol"]

    def ready(self) -> None:
        ready_fd = int(self.spawned[-1]["env"][CHANNEL_VARIABLE].split(":")[0])
        self.protocol.childDataReceived(ready_fd, READY)

    def ended(self, code: int | None = 0, stderr: bytes = b"") -> None:
        if stderr:
            self.protocol.childDataReceived(2, stderr)
        if code == 0:
            reason = Failure(ProcessDone(0))
        else:
            reason = Failure(ProcessTerminated(code, None, (code or 0) << 8))
        self.protocol.processEnded(reason)


def test_sigusr2_starts_the_new_process_on_our_sockets(datadir: Path) -> None:
    """
    The new process gets the listening sockets from descriptor 3 on, its
    stderr and a ready pipe read by us, our stderr and the metrics socket
    after them, and the environment that names all of them; we wait for it
    with a timeout.  Our sockets are no longer shut down when we close them.
    """
    handing = HandingOver(datadir)
    with capturedLogs() as events:
        handing.service.hand_over()
    (spawned,) = handing.spawned
    assert spawned["args"] == ["/bin/sh", "-c", "new pgtls"]
    fds = spawned["childFDs"]
    expected = {1: 1, 2: "r", 3: 0, 4: "r", 5: 2, 6: 0}
    assert {fd: fds[fd] for fd in expected} == expected
    env = spawned["env"]
    passed = (env["LISTEN_FDS"], env["LISTEN_FDNAMES"], env[CHANNEL_VARIABLE])
    assert passed == ("1", "pgtls", "4:5:6")
    assert handing.metrics.port._shouldShutdown is False
    assert "LISTEN_PID" not in env
    assert texts(events) == [
        "received SIGUSR2: started process 4242 on the 1 listening socket(s) and the "
        "metrics socket; "
        "waiting until it is ready"
    ]
    assert [call.getTime() for call in handing.server.reactor.getDelayedCalls()] == [60.0]
    assert handing.listen.calls == ["share"]


def test_ready_hands_over_without_refusing(datadir: Path, received: Received) -> None:
    """
    READY=1 from the new process: we stop accepting (sockets kept), say
    nothing more to systemd (no STOPPING=1), serve the connections we
    have, including one that has not sent its startup packet yet (no
    57P03), and stop when they have ended.
    """
    handing = HandingOver(datadir, Notifier(received.path))
    received.messages()
    session, _client, _upstream = handing.server.session()
    late, late_client = handing.server.connect()
    handing.service.hand_over()
    with capturedLogs() as events:
        handing.ready()
    assert texts(events)[:3] == [
        "process 4242 is ready: handing over to it; this process no longer accepts "
        "connections and ends when its sessions have ended",
        "received smart shutdown request",
        "no longer accepting connections: the new process accepts them",
    ]
    assert handing.listen.calls == ["share", "pause"]
    assert not handing.metrics.port.reading  # scrapes go to the new process
    assert handing.server.shutdown.handed_over
    assert not handing.server.factory.shutting_down
    late.dataReceived(ALICE)
    assert b"57P03" not in late_client.value()
    handing.server.reactor.advance(5.0)
    assert received.messages() == []
    lose(session)
    lose(late)
    assert handing.server.reactor.stops == 1


def test_sigusr2_during_a_hand_over_or_a_shutdown_is_ignored(datadir: Path) -> None:
    """A second SIGUSR2 while one is under way, or during a shutdown, starts nothing."""
    handing = HandingOver(datadir)
    handing.service.hand_over()
    with capturedLogs() as events:
        handing.service.hand_over()
    assert texts(events) == [
        "received SIGUSR2 while the hand-over to process 4242 is under way: ignored"
    ]
    handing.ready()
    with capturedLogs() as events:
        handing.service.hand_over()
    assert texts(events) == ["received SIGUSR2 during a shutdown: ignored"]
    assert len(handing.spawned) == 1


def test_failed_new_process_leaves_us_serving(datadir: Path) -> None:
    """
    The new process exits before it is ready: its one-line error is logged,
    we go on serving (no shutdown, no timer) and the next SIGUSR2 tries again.
    """
    handing = HandingOver(datadir)
    handing.service.hand_over()
    with capturedLogs() as events:
        handing.ended(1, b'pgtls: could not load server certificate file "x": no start line\n')
    assert texts(events) == [
        "SIGUSR2: the new process 4242 failed to start (pgtls: could not load server "
        'certificate file "x": no start line); this process goes on serving'
    ]
    assert handing.server.shutdown.mode is None
    assert handing.server.reactor.getDelayedCalls() == []
    assert handing.listen.calls == ["share"]
    handing.service.hand_over()
    assert len(handing.spawned) == 2


def test_failed_new_process_without_a_word(datadir: Path) -> None:
    """Nothing on its stderr: the exit status is the reason."""
    handing = HandingOver(datadir)
    handing.service.hand_over()
    with capturedLogs() as events:
        handing.ended(3)
    assert "failed to start (exit status 3)" in texts(events)[0]


def test_slow_new_process_is_killed(datadir: Path) -> None:
    """Not ready within the timeout: the new process is killed, and the failure logged."""
    handing = HandingOver(datadir)
    handing.service.hand_over()
    with capturedLogs() as events:
        handing.server.reactor.advance(60.0)
    assert texts(events) == ["process 4242 was not ready within 60s: stopping it"]
    assert handing.process.signals == ["KILL"]
    handing.protocol.processEnded(Failure(ProcessTerminated(None, 9, 9)))
    assert handing.server.shutdown.mode is None


def test_new_process_ending_after_ready_gives_the_sockets_back(
    datadir: Path, received: Received
) -> None:
    """
    The new process ends after taking over while we still relay a session:
    we accept again, tell systemd we are the main process and ready, and do
    not stop when the session ends.
    """
    handing = HandingOver(datadir, Notifier(received.path))
    session, _client, _upstream = handing.server.session()
    handing.service.hand_over()
    handing.ready()
    received.messages()
    with capturedLogs() as events:
        handing.ended(1)
    assert texts(events) == [
        "process 4242, which took over, ended (exit status 1)",
        "accepting connections again",
    ]
    assert handing.listen.calls == ["share", "pause", "resume"]
    assert handing.metrics.port.reading
    (message,) = received.messages()
    assert (message["MAINPID"], message["READY"]) == (str(os.getpid()), "1")
    lose(session)
    assert handing.server.reactor.stops == 0
    assert handing.server.shutdown.mode is None


def test_new_process_stopped_after_ready_does_not_bring_us_back(datadir: Path) -> None:
    """A new process that exits 0 after taking over was stopped on purpose: we go on ending."""
    handing = HandingOver(datadir)
    session, _client, _upstream = handing.server.session()
    handing.service.hand_over()
    handing.ready()
    handing.ended(0)
    assert handing.listen.calls == ["share", "pause"]
    lose(session)
    assert handing.server.reactor.stops == 1


# -- so_reuseport's smart shutdown ------------------------------------------------------


def test_smart_shutdown_with_so_reuseport_stops_listening(datadir: Path) -> None:
    """
    SIGTERM on ports bound with SO_REUSEPORT: they close (new clients go to
    the other processes), a connection already accepted is served, not refused.
    """
    server = Server(datadir)
    listen = FakeListen(shared=True)
    server.shutdown.listen = listen  # type: ignore[assignment]
    server.start()
    late, late_client = server.connect()
    with capturedLogs() as events:
        server.shutdown.request("smart")
    assert texts(events)[:2] == [
        "received smart shutdown request",
        "the port is shared (pgtls.so_reuseport): no longer listening; new connections go "
        "to the other processes on the port",
    ]
    assert listen.calls == ["stop_listening"]
    late.dataReceived(ALICE)
    assert b"57P03" not in late_client.value()
    lose(late)
    assert server.reactor.stops == 1


def test_smart_shutdown_without_so_reuseport_keeps_refusing(datadir: Path) -> None:
    """On ports not shared the ports stay open and new clients get 57P03, as before."""
    server = Server(datadir)
    listen = FakeListen()
    server.shutdown.listen = listen  # type: ignore[assignment]
    server.start()
    server.shutdown.request("smart")
    assert listen.calls == []
    late, late_client = server.connect()
    late.dataReceived(ALICE)
    assert fatal(late_client.value()) == ("57P03", "the database system is shutting down")


def test_ready_after_sigusr2_names_the_main_pid(datadir: Path, received: Received) -> None:
    """A process started by SIGUSR2 sends MAINPID= with its first READY=1 (NotifyAccess=all)."""
    server = Server(datadir, Notifier(received.path))
    server.notify.main_pid = 777
    server.start()
    (message,) = received.messages()
    assert (message["MAINPID"], message["READY"]) == ("777", "1")


@pytest.fixture
def usr2_restored() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGUSR2)
    yield
    signal.signal(signal.SIGUSR2, previous)


@pytest.mark.usefixtures("usr2_restored")
def test_sigusr2_is_ignored_until_the_reactor_runs(datadir: Path) -> None:
    """Until the handler goes in, SIGUSR2 is ignored rather than ending pgtls (its default)."""
    handing = HandingOver(datadir)
    before = signal.getsignal(signal.SIGUSR2)
    handing.service.privilegedStartService()
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    handing.service.startService()
    handing.server.reactor.start_running()
    handler = signal.getsignal(signal.SIGUSR2)
    assert callable(handler)
    handler(signal.SIGUSR2, None)
    assert handing.server.reactor.from_thread == [(handing.service.hand_over, ())]
    handing.service.stopService()
    assert signal.getsignal(signal.SIGUSR2) == before
