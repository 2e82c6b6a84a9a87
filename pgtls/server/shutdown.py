"""
PostgreSQL's shutdown modes for pgtls: SIGTERM smart, SIGINT fast.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from pgtls.relay.frontdoor import FrontDoorFactory

if TYPE_CHECKING:
    from pgtls.server.listening import ListenService
    from pgtls.server.sdnotify import NotifyService

__all__ = ["FAST", "FAST_SHUTDOWN_GRACE", "SMART", "Mode", "ShutdownService"]

#: How long a fast shutdown lets its FATAL messages leave before it aborts.
FAST_SHUTDOWN_GRACE = 5.0
#: PostgreSQL's shutdown modes: SIGTERM asks for a smart one, SIGINT a fast one.
Mode = Literal["smart", "fast"]
SMART: Mode = "smart"
FAST: Mode = "fast"


class ShutdownService(Service):
    """
    PostgreSQL's shutdown modes.  SIGTERM is a smart shutdown: new sessions
    are refused (FATAL 57P03 ``the database system is shutting down``, after
    the SSL negotiation, as PostgreSQL does; cancel requests still pass),
    and pgtls exits once every connection has ended, or terminates what is
    left as a fast shutdown when pgtls.smart_shutdown_timeout expires.
    SIGINT is a fast shutdown: every session gets FATAL 57P01 and is closed
    (see :meth:`pgtls.relay.frontdoor.FrontDoor.terminate`); a connection that has not
    closed within FAST_SHUTDOWN_GRACE is aborted.  A SIGINT during a smart
    shutdown makes it fast.  The ports stay open until the end, so that
    clients are told rather than refused; then the reactor stops.

    Two smart shutdowns leave the port to other processes instead: on
    sockets bound with SO_REUSEPORT (pgtls.so_reuseport) the ports are
    closed (the kernel sends new clients to the other processes on the
    port), and after a hand-over (SIGUSR2, :mod:`pgtls.server.handover`) they stop
    accepting (the new process accepts on the same sockets).  Neither
    refuses a connection it has already accepted.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        factory: FrontDoorFactory,
        notify: NotifyService,
        *,
        grace: float = FAST_SHUTDOWN_GRACE,
        listen: ListenService | None = None,
    ) -> None:
        """
        :param listen: the ports, closed or paused by the smart shutdowns
            that leave the port to other processes; None keeps them open.
        """
        self.reactor = reactor
        self.factory = factory
        self.notify = notify
        self.grace = grace
        self.listen = listen
        self.mode: Mode | None = None
        #: Whether a new process took the sockets over (:meth:`hand_over`).
        self.handed_over = False
        self._timer: IDelayedCall | None = None
        self._reactor_stopping = False

    def startService(self) -> None:
        super().startService()
        # The reactor puts in its own SIGTERM and SIGINT handlers (stop at
        # once) when it starts, which is after startService: ours replace them.
        self.reactor.callWhenRunning(self.install_signal_handlers)

    def install_signal_handlers(self) -> None:
        """SIGTERM asks for a smart shutdown, SIGINT for a fast one, on the reactor thread."""
        signal.signal(signal.SIGTERM, self._signalled)
        signal.signal(signal.SIGINT, self._signalled)

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        mode = SMART if signum == signal.SIGTERM else FAST
        self.reactor.callFromThread(self.request, mode)

    def request(self, mode: Mode) -> None:
        """
        Start a shutdown of ``mode`` (SMART or FAST), or make a smart one
        under way fast; a request no faster than the one under way is ignored.
        """
        if self.mode == mode or self.mode == FAST:
            return
        first = self.mode is None
        self.mode = mode
        self.log.info("received {mode} shutdown request", mode=mode)
        if first:
            if not self._leaves_port():
                self.factory.shutting_down = True
            self.notify.stopping()
        if mode == FAST:
            self._fast()
        else:
            self._smart()
        if first:
            self.factory.when_idle().addCallback(lambda _: self._idle())

    def hand_over(self) -> None:
        """
        A new process accepts on our sockets now: stop accepting, say nothing
        more to systemd (the new process is its main process), and end as in
        a smart shutdown, the open sessions going on until they end.
        """
        if self.mode is not None:
            return
        self.handed_over = True
        self.notify.hand_over()
        self.request(SMART)

    def take_back(self) -> None:
        """
        The new process ended after a :meth:`hand_over`, while this one was still
        ending: accept again and serve on, as systemd's main process again.
        """
        if not self.handed_over or self.mode != SMART:
            return
        self.handed_over = False
        self.mode = None
        self._cancel_timer()
        if self.listen is not None:
            self.listen.resume()
        self.notify.take_back()

    def _leaves_port(self) -> bool:
        """Whether a smart shutdown leaves the port to other processes (see the class)."""
        return self.listen is not None and (self.handed_over or self.listen.shared_port())

    def _idle(self) -> None:
        # take_back() may have cancelled the shutdown this waited for.
        if self.mode is not None:
            self._stop_reactor()

    def _smart(self) -> None:
        if self.listen is not None and self.handed_over:
            self.listen.pause()
            self.log.info("no longer accepting connections: the new process accepts them")
        elif self.listen is not None and self._leaves_port():
            self.listen.stop_listening()
            self.log.info(
                "the port is shared (pgtls.so_reuseport): no longer listening; new "
                "connections go to the other processes on the port"
            )
        count = len(self.factory.connections)
        if not count:
            return
        timeout = self.factory.settings.smart_shutdown_timeout
        self.log.info(
            "waiting for {count} connection(s) to end{limit}",
            count=count,
            limit=f" (at most {timeout:g}s)" if timeout else "",
        )
        if timeout:
            self._timer = self.reactor.callLater(timeout, self._smart_expired)

    def _smart_expired(self) -> None:
        self._timer = None
        self.log.warn(
            "pgtls.smart_shutdown_timeout expired with {count} connection(s) open: "
            "terminating them as in a fast shutdown",
            count=len(self.factory.connections),
        )
        self._terminate_all()

    def _fast(self) -> None:
        self._cancel_timer()
        # PostgreSQL's words: closing the upstream legs ends their transactions.
        self.log.info("aborting any active transactions")
        self._terminate_all()

    def _terminate_all(self) -> None:
        for door in list(self.factory.connections):
            door.terminate()
        if self.factory.connections and self._timer is None:
            self._timer = self.reactor.callLater(self.grace, self._abort_all)

    def _abort_all(self) -> None:
        self._timer = None
        doors = list(self.factory.connections)
        self.log.warn(
            "{count} connection(s) did not close within {grace}s: aborting them",
            count=len(doors),
            grace=self.grace,
        )
        for door in doors:
            door.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stop_reactor(self) -> None:
        self._cancel_timer()
        if not self._reactor_stopping:
            self._reactor_stopping = True
            self.reactor.stop()

    def stopService(self) -> defer.Deferred[None]:
        """
        Wait until no connection is left.  When the reactor stops for another
        reason than our signals, the connections are ended as in a fast
        shutdown first.
        """
        super().stopService()
        self._reactor_stopping = True
        if self.mode is None:
            self.mode = FAST
            self.factory.shutting_down = True
            self.notify.stopping()
            self._terminate_all()
        idle = self.factory.when_idle()

        def done(result: None) -> None:
            self._cancel_timer()

        idle.addCallback(done)
        return idle
