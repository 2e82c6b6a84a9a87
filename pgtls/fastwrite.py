"""
Writing relayed bytes at once.

A Twisted socket transport queues every ``write()`` and sends it when the
reactor next reports the socket writable, one epoll round trip later; its
TLS transport also holds small writes back for one reactor turn to gather
them into fewer records.  A relayed session writes once per read, so both
waits only add latency and CPU to every query.

:func:`relay_write` sends at once when the transport has nothing queued and
hands only the unsent rest to Twisted's own queue, which then does what it
always does (flow control included: a producer is paused when the queue is
full).  In every other case, or whenever a state is not the plain one, it
falls back to ``transport.write``, which keeps the order of bytes: anything
written earlier is still queued ahead of what comes next.

This leans on Twisted's internals (the socket transport's send queue, the
TLS layer's buffers); the unit tests pin each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet.tcp import Connection
from twisted.protocols.tls import TLSMemoryBIOProtocol

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["idle_socket", "relay_write", "send_now", "tls_ready"]

# The largest TLS plaintext record: the fast path hands OpenSSL one record's
# worth at a time, as Twisted does.  OpenSSL takes it whole, unless a peer's
# max_fragment_length makes it write a shorter record and report less (the
# partial writes pyOpenSSL enables); the loop then goes on from there, which
# pyOpenSSL's moving-buffer mode allows.
_RECORD = 2**14
# One read of the send BIO; more than the records of one 64 KiB read.
_BIO_READ = 2**17


def relay_write(transport: Any, data: bytes) -> None:
    """
    Write ``data`` to ``transport``, sending it now when nothing is queued.

    :param transport: a client's or upstream's transport, TLS or not; one
        that is not a Twisted socket transport always gets ``write()``.
    :param data: the bytes to relay.
    """
    if getattr(transport, "TLS", False):
        _tls_write(transport, data)
    else:
        _send(transport, data, transport.write)


def idle_socket(transport: Any) -> Any:
    """
    The socket of a connected Twisted socket transport with nothing queued
    and no close under way, or None.
    """
    if not isinstance(transport, Connection):
        return None
    if (
        not transport.connected
        or transport.disconnecting
        or transport._writeDisconnecting
        or transport._writeDisconnected
        or transport._tempDataLen
        or len(transport.dataBuffer) != transport.offset
        # A UNIX transport's file descriptors travel with its queued bytes.
        or getattr(transport, "_sendmsgQueue", None)
    ):
        return None
    return transport.socket


def _send(transport: Any, data: bytes, queue: Callable[[bytes], object]) -> None:
    """
    Send ``data`` on the transport's socket if it is idle; give what was not
    sent to ``queue`` (Twisted's buffered write for this socket).
    """
    sock = idle_socket(transport)
    if sock is None:
        queue(data)
    else:
        send_now(sock, data, queue)


def send_now(sock: Any, data: Buffer, queue: Callable[[bytes], object]) -> None:
    """
    Send what the idle socket ``sock`` takes of ``data`` now, queue a copy
    of the rest (``data`` may be a view of a buffer that is used again).

    A socket error is left for Twisted to meet again on its next write, so
    the connection ends the way it always does.
    """
    view = memoryview(data)
    try:
        sent = sock.send(view)
    except BlockingIOError:
        sent = 0
    except OSError:
        queue(bytes(view))
        return
    if sent < len(view):
        queue(bytes(view[sent:]))


def tls_ready(tls: Any) -> bool:
    """
    Whether the TLS layer may encrypt now: handshake done, no close under
    way, and nothing held back by it (small-write gathering, a write waiting
    for the peer).
    """
    if not isinstance(tls, TLSMemoryBIOProtocol):
        return False
    aggregator = getattr(tls, "_aggregator", None)
    return bool(
        tls._handshakeDone
        and not tls.disconnecting
        and not tls._lostTLSConnection
        and not tls._aborted
        and not tls._appSendBuffer
        and not getattr(aggregator, "_buffer", None)
    )


def _tls_write(transport: Any, data: bytes) -> None:
    """
    Encrypt ``data`` now and send its records at once, or leave it to the
    TLS transport's ``write()`` if the socket below has bytes queued or the
    TLS layer is not in its plain state.

    Any OpenSSL error (a renegotiation that wants to read first, a broken
    session) stops the fast path: the records made so far are sent, and the
    rest goes to ``write()``, where Twisted handles the error as it always
    does.
    """
    sock = idle_socket(transport)
    tls = transport.protocol
    if sock is None or not tls_ready(tls):
        transport.write(data)
        return
    connection = tls._tlsConnection
    view = memoryview(data)
    done = 0
    try:
        while done < len(view):
            done += connection.send(view[done : done + _RECORD])
    except SSL.Error:
        _send_records(sock, tls)
        transport.write(data[done:])
        return
    _send_records(sock, tls)


def _send_records(sock: Any, tls: Any) -> None:
    """Send the records waiting in the TLS layer's send BIO."""
    records = _take_records(tls._tlsConnection)
    if records:
        # tls.transport writes to the socket below the TLS layer.
        send_now(sock, records, tls.transport.write)


def _take_records(connection: SSL.Connection) -> bytes:
    """Everything waiting in the send BIO (the records just made)."""
    records = b""
    while True:
        try:
            chunk = connection.bio_read(_BIO_READ)
        except SSL.WantReadError:
            break
        records += chunk
        # A memory BIO returns all it holds up to the size asked for: a
        # short read emptied it (asking again would only raise).
        if len(chunk) < _BIO_READ:
            break
    return records
