"""
SIGUSR2, nginx's signal for the same job: a restart that refuses no
connection, for a renewed certificate or a changed setting.

pgtls starts a new pgtls process (same interpreter, same command line),
which inherits the listening sockets by systemd's socket-activation
protocol (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES; pgtls.server.listening) and the
metrics socket by a descriptor of its own (PGTLS_HANDOVER, with the ready
pipe: it is not a PostgreSQL port), reads every file anew, and reports
ready on the pipe.  Only then does this process
stop accepting and end as in a smart shutdown (pgtls.server.shutdown), its open
sessions going on until they end; both processes accept on the same
sockets meanwhile, so no connection is refused.  If the new process fails
to start, it exits with its one-line error on its standard error, which
this process reads, logs, and goes on serving.

LISTEN_PID must be the new process's PID, which is only known after the
fork: a ``/bin/sh`` sets it to its own PID (``$$``) and ``exec``s pgtls,
which keeps the PID, as systemd-socket-activate sets it in its child.

Under systemd the new process sends ``MAINPID=`` with ``READY=1`` (the
unit's ``NotifyAccess=all`` lets a process other than the main one do it),
and this one says nothing more to systemd.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pgtls.server.loader import StartupError
from pgtls.tls.errors import TLSConfigError

if TYPE_CHECKING:
    from pgtls.server.listening import ListenService
    from pgtls.server.metrics import MetricsService
    from pgtls.server.shutdown import ShutdownService

__all__ = [
    "CHANNEL_VARIABLE",
    "HANDOVER_TIMEOUT",
    "READY",
    "Channel",
    "HandoverService",
    "ReadyService",
    "child_argv",
    "child_environment",
    "last_line",
    "no_terminal_passphrase",
]

#: How long a new process may take to report ready before it is stopped.
HANDOVER_TIMEOUT = 60.0
#: The variable that tells a new process where to report, and where the
#: metrics socket is (``READY_FD:STDERR_FD`` or ``READY_FD:STDERR_FD:METRICS_FD``).
CHANNEL_VARIABLE = "PGTLS_HANDOVER"
#: What a new process writes on its ready pipe once it accepts connections.
READY = b"READY=1\n"
#: Sets LISTEN_PID to the PID that pgtls will have: exec keeps the shell's.
_SET_LISTEN_PID = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"'
_SHELL = "/bin/sh"
# The most of the new process's standard error kept for the log.
_STDERR_LIMIT = 8192


def child_argv(executable: str, orig_argv: Sequence[str]) -> list[str]:
    """
    The command that starts the new process: the shell that sets LISTEN_PID,
    then this interpreter with this process's own arguments.

    :param executable: this interpreter (``sys.executable``).
    :param orig_argv: this process's command line (``sys.orig_argv``).
    """
    return [_SHELL, "-c", _SET_LISTEN_PID, "pgtls", executable, *orig_argv[1:]]


def child_environment(
    environ: Mapping[str, str],
    names: Sequence[str],
    ready_fd: int,
    stderr_fd: int,
    metrics_fd: int | None = None,
) -> dict[str, str]:
    """
    The new process's environment: this one's, with the listening sockets
    it inherits (descriptors 3 on, named ``names``), where it reports, and
    the metrics socket, which is not one of the PostgreSQL ports that
    LISTEN_FDS counts.

    :raises ValueError: a name holds a colon, which LISTEN_FDNAMES cannot carry.
    """
    if any(":" in name or not name for name in names):
        raise ValueError(f"cannot pass socket names {list(names)!r}")
    env = {
        name: value
        for name, value in environ.items()
        if name not in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", CHANNEL_VARIABLE)
    }
    env["LISTEN_FDS"] = str(len(names))
    env["LISTEN_FDNAMES"] = ":".join(names)
    channel = [ready_fd, stderr_fd] if metrics_fd is None else [ready_fd, stderr_fd, metrics_fd]
    env[CHANNEL_VARIABLE] = ":".join(map(str, channel))
    return env


def last_line(text: bytes) -> str:
    """The last non-blank line of ``text``, decoded leniently; empty if none."""
    for line in reversed(text.decode("utf-8", "replace").splitlines()):
        if line.strip():
            return line.strip()
    return ""


def no_terminal_passphrase(prompt: str) -> str:
    """
    The passphrase prompt of a process started by SIGUSR2: it has no
    terminal to ask on.

    :raises TLSConfigError: always.
    """
    raise TLSConfigError(
        "cannot ask for the private key pass phrase: a process started by SIGUSR2 has no terminal",
        "set ssl_passphrase_command",
    )


@dataclass(frozen=True)
class Channel:
    """
    What a process started by SIGUSR2 was given besides its listening
    sockets: its ready pipe, its real stderr, and the metrics socket if the
    old process served metrics.
    """

    ready_fd: int
    stderr_fd: int
    metrics_fd: int | None = None

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Channel | None:
        """
        The channel ``PGTLS_HANDOVER`` names, removed from the environment
        (a later hand-over sets its own); None when not set or malformed.
        """
        env = os.environ if environ is None else environ
        value = env.pop(CHANNEL_VARIABLE, None)
        if value is None:
            return None
        fields = value.split(":")
        if len(fields) not in (2, 3) or not all(field.isdigit() for field in fields):
            return None
        numbers = [int(field) for field in fields]
        return cls(numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None)

    def metrics_endpoint(self, reactor: Any) -> AdoptedStreamServerEndpoint:
        """
        An endpoint that adopts the metrics socket, whatever its family.

        :raises StartupError: it is not a socket.
        """
        assert self.metrics_fd is not None
        try:
            sock = socket.socket(fileno=self.metrics_fd)
        except OSError as error:
            raise StartupError(f"the metrics socket passed by SIGUSR2: {error.strerror}") from None
        family = sock.family
        sock.detach()
        return AdoptedStreamServerEndpoint(reactor, self.metrics_fd, family)

    def report_ready(self) -> None:
        """
        Tell the old process we accept connections, and give standard error
        back to where the old process's goes (the old one read ours until now).
        """
        try:
            os.write(self.ready_fd, READY)
        except OSError:
            pass  # The old process is gone: there is no one left to tell.
        finally:
            os.close(self.ready_fd)
        os.dup2(self.stderr_fd, 2)
        os.close(self.stderr_fd)


class ReadyService(Service):
    """In a process started by SIGUSR2: report ready once the ports accept."""

    def __init__(self, reactor: Any, channel: Channel) -> None:
        self.reactor = reactor
        self.channel = channel

    def startService(self) -> None:
        super().startService()
        # The ports accept once the reactor runs (as NotifyService's READY=1).
        self.reactor.callWhenRunning(self.channel.report_ready)


class _NewProcess(ProcessProtocol):
    """The new process, seen from the old: its standard error and its ready pipe."""

    def __init__(self, handover: HandoverService, ready_fd: int) -> None:
        self.handover = handover
        self.ready_fd = ready_fd
        self.ready = False
        self.stderr = b""
        self._ready_bytes = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self.ready_fd:
            self._ready_bytes = (self._ready_bytes + data)[: len(READY)]
            if not self.ready and self._ready_bytes == READY:
                self.ready = True
                self.handover.new_process_ready(self)
        elif childFD == 2:
            self.stderr = (self.stderr + data)[-_STDERR_LIMIT:]

    def processEnded(self, reason: Failure) -> None:
        status = getattr(reason.value, "status", None)
        self.handover.new_process_ended(self, status)


class HandoverService(Service):
    """
    SIGUSR2 starts a new process on our sockets and hands over to it once
    it is ready (see the module's docstring).  A SIGUSR2 while a hand-over
    is under way, or during a shutdown, is ignored and logged.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        listen: ListenService,
        shutdown: ShutdownService,
        metrics: MetricsService | None = None,
        *,
        timeout: float = HANDOVER_TIMEOUT,
        argv: Sequence[str] | None = None,
    ) -> None:
        """
        :param argv: the new process's command (default: :func:`child_argv` of
            this interpreter and command line).
        """
        self.reactor = reactor
        self.listen = listen
        self.shutdown = shutdown
        self.metrics = metrics
        self.timeout = timeout
        self.argv = list(argv) if argv is not None else child_argv(sys.executable, sys.orig_argv)
        self.process: Any = None
        #: The new process's PID (Twisted forgets it once the process is reaped).
        self.pid: int | None = None
        self.protocol: _NewProcess | None = None
        self._timer: IDelayedCall | None = None
        self._previous: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        # Until the reactor runs, SIGUSR2 must not end us (its default action).
        self._previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._hook)

    def _hook(self) -> None:
        signal.signal(
            signal.SIGUSR2, lambda signum, frame: self.reactor.callFromThread(self.hand_over)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGUSR2, self._previous)
            self._previous = None
        self._cancel_timer()

    def hand_over(self) -> None:
        """Start the new process, unless a hand-over or a shutdown is under way."""
        if self.shutdown.mode is not None:
            self.log.warn("received SIGUSR2 during a shutdown: ignored")
            return
        if self.protocol is not None:
            self.log.warn(
                "received SIGUSR2 while the hand-over to process {pid} is under way: ignored",
                pid=self.pid,
            )
            return
        sockets = self.listen.share()
        first = 3
        ready_fd, stderr_fd = first + len(sockets), first + len(sockets) + 1
        child_fds: dict[int, int | str] = {1: 1, 2: "r", ready_fd: "r", stderr_fd: 2}
        if _is_open(0):
            child_fds[0] = 0
        for offset, fd in enumerate(sockets):
            child_fds[first + offset] = fd
        metrics_fd = None
        if self.metrics is not None and self.metrics.port is not None:
            # Closing it must not shut it down for the new process (see share()).
            self.metrics.port._shouldShutdown = False  # type: ignore[attr-defined]
            metrics_fd = stderr_fd + 1
            child_fds[metrics_fd] = self.metrics.port.fileno()  # type: ignore[attr-defined]
        env = child_environment(
            os.environ, ["pgtls"] * len(sockets), ready_fd, stderr_fd, metrics_fd
        )
        self.protocol = _NewProcess(self, ready_fd)
        try:
            self.process = self.reactor.spawnProcess(
                self.protocol, self.argv[0], self.argv, env=env, childFDs=child_fds
            )
        except OSError as error:
            self.protocol = None
            self.log.warn(
                "received SIGUSR2, but could not start a new process: {reason}; "
                "this process goes on serving",
                reason=error.strerror or str(error),
            )
            return
        self.pid = self.process.pid
        self.log.info(
            "received SIGUSR2: started process {pid} on the {count} listening socket(s){metrics}; "
            "waiting until it is ready",
            pid=self.pid,
            count=len(sockets),
            metrics="" if metrics_fd is None else " and the metrics socket",
        )
        self._timer = self.reactor.callLater(self.timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        if self.protocol is None or self.protocol.ready:
            return
        self.log.warn(
            "process {pid} was not ready within {timeout:g}s: stopping it",
            pid=self.pid,
            timeout=self.timeout,
        )
        # It may have ended meanwhile: processEnded follows either way.
        with contextlib.suppress(ProcessExitedAlready):
            self.process.signalProcess("KILL")

    def new_process_ready(self, protocol: _NewProcess) -> None:
        """The new process accepts connections: hand over to it."""
        self._cancel_timer()
        self.log.info(
            "process {pid} is ready: handing over to it; this process no longer "
            "accepts connections and ends when its sessions have ended",
            pid=self.pid,
        )
        self.shutdown.hand_over()
        # The metrics socket is shared too: scrapes go to the new process's
        # counters only, not now to one process and now to the other.
        self._metrics_accepting(False)

    def new_process_ended(self, protocol: _NewProcess, status: int | None) -> None:
        """
        The new process ended: before it was ready, the hand-over failed and
        we serve on; after, unless it exited normally (it was asked to), we
        take the sockets back if we are still here.
        """
        self._cancel_timer()
        pid = self.pid
        self.protocol = None
        self.process = None
        if not protocol.ready:
            self.log.warn(
                "SIGUSR2: the new process {pid} failed to start ({why}); "
                "this process goes on serving",
                pid=pid,
                why=last_line(protocol.stderr) or _status_text(status),
            )
            return
        self.log.warn(
            "process {pid}, which took over, ended ({status})",
            pid=pid,
            status=_status_text(status),
        )
        # Exit status 0 is a shutdown someone asked for: we end too.
        if status != 0 and self.shutdown.handed_over and self.shutdown.mode is not None:
            self.shutdown.take_back()
            self._metrics_accepting(True)
            self.log.info("accepting connections again")

    def _metrics_accepting(self, accepting: bool) -> None:
        port = self.metrics.port if self.metrics is not None else None
        if port is not None:
            if accepting:
                port.startReading()  # type: ignore[attr-defined]
            else:
                port.stopReading()  # type: ignore[attr-defined]

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _status_text(status: int | None) -> str:
    """A wait status as words: ``exit status 1``, ``killed by signal 9``."""
    if status is None:
        return "status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
