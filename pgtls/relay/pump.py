"""
The relayed session's fast path.

On Twisted's usual path a relayed message crosses a dozen Python calls each
way: the socket transport, the TLS protocol and the protocol it wraps,
pyOpenSSL's checks and the exception it raises at every drained buffer, the
endpoint's wrapper, the relay.  A query and its answer cross pgtls twice, so
that cost is paid on every query.

A :class:`Pump` replaces only the hot step.  Once the session is relayed it
puts its own ``doRead`` on the client's and the upstream's transports (what
the reactor calls when a socket is readable), which reads the socket into a
buffer shared by every session, decrypts what the side that read is
encrypted with (the client's TLS, and the upstream's when the upstream leg
is TLS too) and encrypts for the other side, with OpenSSL's calls
(pyOpenSSL's own binding of them), and sends the result to the other socket
at once, through :func:`pgtls.relay.fastwrite.send_or_queue`: straight to an idle
socket, else into Twisted's queue behind what waits there.  Both legs on
TLS cost two decryptions and two encryptions per round trip, and no more
Python than one.

Everything else stays Twisted's: the transports, their queues and the
producers that pause a side whose peer reads slowly, closing, the TLS
close_notify and every error.  Whenever a state is not the plain relayed
one, or OpenSSL reports anything but "needs more bytes", the read goes to
the transport's own ``doRead`` or the TLS layer's own handling, which meets
the same condition and deals with it as it always does.

This leans on pyOpenSSL's internals (its binding of OpenSSL's calls and a
Connection's ``_ssl`` and BIOs) and Twisted's (the TLS layer's state); it
reaches them only through :mod:`pgtls._internals`, and runs only when
:mod:`pgtls.relay.fastpath` found them working at start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import main
from twisted.internet.tcp import Connection

from pgtls import _internals
from pgtls._internals import ffi as _ffi
from pgtls._internals import lib as _lib
from pgtls._internals import send_or_queue, tls_read_again, tls_ready
from pgtls.relay import fastpath
from pgtls.relay.reactor import dispatch_directly

__all__ = ["Pump", "start"]

# One read from a socket; Twisted's own transports read 64 KiB too.
_READ = 2**16
# The largest TLS plaintext record: OpenSSL is handed one record at a time.
_RECORD = 2**14
# One read of the send BIO: the records of a whole 64 KiB read.
_RECORDS = 2**17

# Buffers shared by every session: the process is single-threaded and a
# buffer's bytes are sent, or copied into a queue, before the next read.
_CLIENT = bytearray(_READ)
_CLIENT_VIEW = memoryview(_CLIENT)
_UPSTREAM = bytearray(_READ)
_UPSTREAM_VIEW = memoryview(_UPSTREAM)
_WANT_READ = _internals.WANT_READ
_NULL = _internals.NULL
# Without the binding the fast path is off and no Pump is made.
if _ffi is not None:
    _PLAIN = _ffi.new("char[]", _READ)
    _SEALED = _ffi.new("char[]", _RECORDS)
    _CLIENT_PTR = _ffi.from_buffer(_CLIENT)
    _UPSTREAM_PTR = _ffi.from_buffer(_UPSTREAM)


def start(
    client: Any,
    upstream: Any,
    up_counter: Any,
    down_counter: Any,
    watch: Callable[[Any], bool] | None = None,
) -> Pump | None:
    """
    Put the fast path on a relayed session's two transports.

    :param client: the client's socket transport, TLS or not.
    :param upstream: the upstream's socket transport, TLS or not.
    :param up_counter: has ``bytes_up``, the plaintext bytes sent upstream.
    :param down_counter: has ``bytes_down``, the plaintext bytes relayed to
        the client.
    :param watch: shown the plaintext the upstream sent, once relayed, until
        it returns False (see :meth:`Pump.upstream_read_watched`).
    :return: the pump, to :meth:`Pump.stop` when the session stops relaying;
        None when the fast path is off or the transports are not socket
        transports, so the session stays on Twisted's path.
    """
    if not fastpath.on():
        return None
    if not isinstance(client, Connection) or not isinstance(upstream, Connection):
        return None
    client_tls = client.protocol if getattr(client, "TLS", False) else None
    upstream_tls = upstream.protocol if getattr(upstream, "TLS", False) else None
    for tls in (client_tls, upstream_tls):
        if tls is not None and not _internals.has_tls_connection(tls):
            return None
    return Pump(client, client_tls, upstream, up_counter, down_counter, upstream_tls, watch)


class _Side:
    """One leg of a relayed session: its socket transport and, if TLS, OpenSSL's handles."""

    __slots__ = ("from_ssl", "into_ssl", "ssl", "tls", "transport")

    def __init__(self, transport: Any, tls: Any) -> None:
        self.transport = transport
        self.tls = tls
        if tls is None:
            self.ssl = self.into_ssl = self.from_ssl = None
        else:
            self.ssl, self.into_ssl, self.from_ssl = _internals.tls_handles(tls)


class Pump:
    """The fast path of one relayed session; see the module's text."""

    # Every idle session keeps one.
    __slots__ = ("client", "down_counter", "up_counter", "upstream", "watch")

    def __init__(
        self,
        client: Any,
        client_tls: Any,
        upstream: Any,
        up_counter: Any,
        down_counter: Any,
        upstream_tls: Any = None,
        watch: Callable[[Any], bool] | None = None,
    ) -> None:
        self.client = _Side(client, client_tls)
        self.upstream = _Side(upstream, upstream_tls)
        self.up_counter = up_counter
        self.down_counter = down_counter
        self.watch = watch
        client.doRead = self.client_read
        upstream.doRead = self.upstream_read if watch is None else self.upstream_read_watched
        dispatch_directly(client)
        dispatch_directly(upstream)

    def stop(self) -> None:
        """Give both transports back their own ``doRead`` and the reactor's usual dispatch."""
        for side in (self.client, self.upstream):
            side.transport.__dict__.pop("doRead", None)
            dispatch_directly(side.transport, False)

    def client_read(self) -> object:
        """The client's socket is readable: relay what it sent to the upstream."""
        return self._read(self.client, self.upstream, _CLIENT, _CLIENT_VIEW, _CLIENT_PTR, True)

    def upstream_read(self) -> object:
        """The upstream's socket is readable: relay what it sent to the client."""
        return self._read(
            self.upstream, self.client, _UPSTREAM, _UPSTREAM_VIEW, _UPSTREAM_PTR, False
        )

    def upstream_read_watched(self) -> object:
        """
        :meth:`upstream_read`, and what it relayed shown to ``watch``; once
        ``watch`` has seen enough, :meth:`upstream_read` alone, so a session
        watched at its start costs nothing more after it.
        """
        side = self.upstream
        if side.tls is not None:
            return self._read_tls_watched(side)
        counter = self.down_counter
        before = counter.bytes_down
        result = self.upstream_read()
        size = counter.bytes_down - before
        # The shared buffer holds this read's bytes until the next read.
        if size:
            self._show(_UPSTREAM_VIEW[:size])
        return result

    def _read_tls_watched(self, side: _Side) -> object:
        """
        A TLS leg's read while watched: :meth:`_read` and :meth:`_decrypt`,
        each decrypted piece shown to ``watch`` once relayed.  What goes to
        the TLS layer instead (before the handshake, at close_notify or an
        error) reaches the relay's protocol, which shows it to the same
        watch (pgtls.relay.upstream.UpstreamProtocol.watch).
        """
        transport = side.transport
        if not tls_ready(side.tls):
            return type(transport).doRead(transport)
        try:
            count = transport.socket.recv_into(_UPSTREAM)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not count:
            return main.CONNECTION_DONE
        ssl = side.ssl
        client = self.client
        _lib.BIO_write(side.into_ssl, _UPSTREAM_PTR, count)
        while True:
            size = _lib.SSL_read(ssl, _PLAIN, _READ)
            if size <= 0:
                break
            self.down_counter.bytes_down += size
            plain = _ffi.buffer(_PLAIN, size)
            self._send(client, plain, _PLAIN, size)
            if self.watch is not None:
                # _send sent or copied the bytes; _PLAIN still holds them.
                self._show(memoryview(plain))
        if _lib.SSL_get_error(ssl, size) != _WANT_READ:
            tls_read_again(side.tls)
        elif _lib.BIO_get_mem_data(side.from_ssl, _NULL) > 0:
            self._send_records(side)
        return None

    def _show(self, data: memoryview) -> None:
        """Show relayed bytes to ``watch``; when it has seen enough, stop watching."""
        watch = self.watch
        if watch is not None and not watch(data):
            self.watch = None
            self.upstream.transport.doRead = self.upstream_read

    def _count(self, up: bool, size: int) -> None:
        if up:
            self.up_counter.bytes_up += size
        else:
            self.down_counter.bytes_down += size

    def _read(
        self,
        side: _Side,
        other: _Side,
        buffer: bytearray,
        view: memoryview,
        pointer: Any,
        up: bool,
    ) -> object:
        transport = side.transport
        if side.tls is not None and not tls_ready(side.tls):
            return type(transport).doRead(transport)
        try:
            size = transport.socket.recv_into(buffer)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not size:
            return main.CONNECTION_DONE
        if side.tls is None:
            self._count(up, size)
            self._send(other, view[:size], pointer, size)
        else:
            self._decrypt(side, other, pointer, size, up)
        return None

    def _decrypt(self, side: _Side, other: _Side, received: Any, count: int, up: bool) -> None:
        ssl = side.ssl
        # A memory BIO takes all it is given (a copy).
        _lib.BIO_write(side.into_ssl, received, count)
        while True:
            size = _lib.SSL_read(ssl, _PLAIN, _READ)
            if size <= 0:
                break
            self._count(up, size)
            self._send(other, _ffi.buffer(_PLAIN, size), _PLAIN, size)
        if _lib.SSL_get_error(ssl, size) != _WANT_READ:
            # close_notify, or a broken session: the TLS layer reads again,
            # meets the same and ends the connection its own way.
            tls_read_again(side.tls)
            return
        # What reading made OpenSSL answer (a KeyUpdate, say) goes out now;
        # there is seldom any, and asking costs less than a read that fails.
        if _lib.BIO_get_mem_data(side.from_ssl, _NULL) > 0:
            self._send_records(side)

    def _send(self, other: _Side, data: Any, pointer: Any, size: int) -> None:
        """Send plaintext to the other side: as it is, or encrypted for its TLS."""
        transport = other.transport
        if other.tls is None:
            send_or_queue(transport, data, transport.write)
        elif not tls_ready(other.tls):
            transport.write(bytes(data))
        else:
            self._encrypt(other, data, pointer, size)

    def _encrypt(self, side: _Side, data: Any, pointer: Any, size: int) -> None:
        ssl = side.ssl
        done = 0
        while done < size:
            written = _lib.SSL_write(ssl, pointer + done, min(_RECORD, size - done))
            if written <= 0:
                # The records made so far go first; the TLS layer's write
                # meets OpenSSL's complaint and ends the session its way.
                self._send_records(side)
                side.transport.write(bytes(memoryview(data)[done:size]))
                return
            done += written
        self._send_records(side)

    def _send_records(self, side: _Side) -> None:
        """Send the records waiting in the side's send BIO, or queue them in order."""
        raw = side.tls.transport
        while True:
            size = _lib.BIO_read(side.from_ssl, _SEALED, _RECORDS)
            if size <= 0:
                return
            send_or_queue(side.transport, _ffi.buffer(_SEALED, size), raw.write)
            if size < _RECORDS:
                return  # a memory BIO gives all it holds: it is empty now
