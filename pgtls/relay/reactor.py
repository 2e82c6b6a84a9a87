"""
The reactor ``twistd pgtls`` runs on: Twisted's epoll reactor, handing a
client connection's socket events straight to its transports.

Twisted's epoll reactor calls each socket event inside
``log.callWithLogger``: it asks the transport for its log prefix and pushes
it as the legacy log context, so that a ``log.msg`` or ``log.err`` from
inside names the connection.  On a relayed session that is about a third of
pgtls's own work per query (README.rst, "Development", has the
measurement), for a context the relay path has no use for: the
fast path (:mod:`pgtls.relay.pump`) logs nothing, and the errors that the
reactor's read-or-write dispatch catches are logged all the same, only
without the connection's name in front.

A transport opts in with :func:`dispatch_directly` (pgtls.relay.frontdoor does
for each client connection from its start, pgtls.relay.pump for both legs of a
relayed session, pgtls.server.listening for its listening ports); every other
descriptor is dispatched exactly as Twisted does.  The front door's own
log lines carry their namespace and the client's address, so they lose
nothing.  An opted-in transport's plain read event (the relay's common
case) goes straight to its ``doRead``, as the reactor's dispatch would
call it; any other event goes through that dispatch itself.  The polling
loop is :func:`pgtls._internals.poll` (it uses the reactor's private
state).  :func:`install` makes this the reactor when nothing has chosen one
yet (``twistd --reactor`` still wins), and pgtls.server.tap installs it only
when the fast path is on (pgtls.relay.fastpath).
"""

from __future__ import annotations

import sys
from typing import Any

from pgtls import _internals
from pgtls._internals import DIRECT as _DIRECT

__all__ = ["RelayReactor", "dispatch_directly", "install", "is_direct"]


def dispatch_directly(transport: Any, direct: bool = True) -> None:
    """Have the relay reactor dispatch ``transport``'s events without log context, or not."""
    if direct:
        setattr(transport, _DIRECT, True)
    else:
        transport.__dict__.pop(_DIRECT, None)


def is_direct(transport: Any) -> bool:
    """Whether :func:`dispatch_directly` is on for ``transport``."""
    return bool(getattr(transport, _DIRECT, False))


try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux: no epoll, and Twisted picks its own reactor
    EPollReactor = None  # type: ignore[assignment,misc]

if EPollReactor is not None:

    class RelayReactor(EPollReactor):
        """Twisted's epoll reactor; see the module's text."""

        # EPollReactor.doPoll, dispatching opted-in transports directly; a
        # function of pgtls._internals (it uses the reactor's private state).
        doPoll = _internals.poll
        doIteration = _internals.poll


def install() -> bool:
    """
    Install :class:`RelayReactor` as the global reactor, if no reactor is
    installed yet and epoll is there.

    :return: whether it was installed.
    """
    if EPollReactor is None or "twisted.internet.reactor" in sys.modules:
        return False
    from twisted.internet.main import installReactor

    installReactor(RelayReactor())
    return True
