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
buffer shared by every session, decrypts or encrypts with OpenSSL's calls
(pyOpenSSL's own binding of them), and sends the result to the other socket
at once, through :func:`pgtls.fastwrite.send_or_queue`: straight to an idle
socket, else into Twisted's queue behind what waits there.

Everything else stays Twisted's: the transports, their queues and the
producers that pause a side whose peer reads slowly, closing, the TLS
close_notify and every error.  Whenever a state is not the plain relayed
one, or OpenSSL reports anything but "needs more bytes", the read goes to
the transport's own ``doRead`` or the TLS layer's own handling, which meets
the same condition and deals with it as it always does.

This leans on pyOpenSSL's internals (``OpenSSL._util``'s binding and a
Connection's ``_ssl`` and BIOs) and Twisted's (a transport's ``doRead``,
the TLS layer's ``_flushReceiveBIO``); the unit tests pin each of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.internet import main
from twisted.internet.tcp import Connection

from pgtls.fastwrite import send_or_queue, tls_ready
from pgtls.relayreactor import dispatch_directly

__all__ = ["Pump", "start"]

# One read from a socket; Twisted's own transports read 64 KiB too.
_READ = 2**16
# The largest TLS plaintext record: OpenSSL is handed one record at a time.
_RECORD = 2**14
# One read of the send BIO: the records of a whole 64 KiB read.
_RECORDS = 2**17

# Buffers shared by every session: the process is single-threaded and a
# buffer's bytes are sent, or copied into a queue, before the next read.
_PLAIN = _ffi.new("char[]", _READ)
_SEALED = _ffi.new("char[]", _RECORDS)
_CLIENT = bytearray(_READ)
_CLIENT_VIEW = memoryview(_CLIENT)
_CLIENT_PTR = _ffi.from_buffer(_CLIENT)
_UPSTREAM = bytearray(_READ)
_UPSTREAM_VIEW = memoryview(_UPSTREAM)
_UPSTREAM_PTR = _ffi.from_buffer(_UPSTREAM)
_WANT_READ = _lib.SSL_ERROR_WANT_READ
_NULL = _ffi.NULL


def start(
    client: Any,
    upstream: Any,
    up_counter: Any,
    down_counter: Any,
    watch: Callable[[memoryview], bool] | None = None,
) -> Pump | None:
    """
    Put the fast path on a relayed session's two transports.

    :param client: the client's socket transport, TLS or not.
    :param upstream: the upstream's socket transport (no TLS).
    :param up_counter: has ``bytes_up``, the plaintext bytes sent upstream.
    :param down_counter: has ``bytes_down``, the bytes relayed to the client.
    :param watch: shown each read of the upstream's bytes, once relayed,
        until it returns False (see :meth:`Pump.upstream_read_watched`).
    :return: the pump, to :meth:`Pump.stop` when the session stops relaying;
        None when the transports are not socket transports, so the
        session stays on Twisted's path.
    """
    if not isinstance(client, Connection) or not isinstance(upstream, Connection):
        return None
    tls = client.protocol if getattr(client, "TLS", False) else None
    if tls is not None and getattr(tls, "_tlsConnection", None) is None:
        return None
    return Pump(client, tls, upstream, up_counter, down_counter, watch)


class Pump:
    """The fast path of one relayed session; see the module's text."""

    # Every idle session keeps one.
    __slots__ = (
        "client",
        "down_counter",
        "from_ssl",
        "into_ssl",
        "ssl",
        "tls",
        "up_counter",
        "upstream",
        "watch",
    )

    def __init__(
        self,
        client: Any,
        tls: Any,
        upstream: Any,
        up_counter: Any,
        down_counter: Any,
        watch: Callable[[memoryview], bool] | None = None,
    ) -> None:
        self.client = client
        self.tls = tls
        self.upstream = upstream
        self.up_counter = up_counter
        self.down_counter = down_counter
        if tls is None:
            self.ssl = self.into_ssl = self.from_ssl = None
        else:
            connection = tls._tlsConnection
            _renew_bios(connection)
            self.ssl = connection._ssl
            self.into_ssl = connection._into_ssl
            self.from_ssl = connection._from_ssl
        self.watch = watch
        client.doRead = self.client_read
        upstream.doRead = self.upstream_read if watch is None else self.upstream_read_watched
        dispatch_directly(client)
        dispatch_directly(upstream)

    def stop(self) -> None:
        """Give both transports back their own ``doRead`` and the reactor's usual dispatch."""
        for transport in (self.client, self.upstream):
            transport.__dict__.pop("doRead", None)
            dispatch_directly(transport, False)

    # -- client to upstream -------------------------------------------------

    def client_read(self) -> object:
        """The client's socket is readable: relay what it sent, decrypted."""
        client = self.client
        if self.tls is not None and not tls_ready(self.tls):
            return type(client).doRead(client)
        try:
            size = client.socket.recv_into(_CLIENT)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not size:
            return main.CONNECTION_DONE
        if self.tls is None:
            self.up_counter.bytes_up += size
            send_or_queue(self.upstream, _CLIENT_VIEW[:size], self.upstream.write)
        else:
            self._decrypt(size)
        return None

    def _decrypt(self, received: int) -> None:
        ssl = self.ssl
        # A memory BIO takes all it is given (a copy).
        _lib.BIO_write(self.into_ssl, _CLIENT_PTR, received)
        while True:
            size = _lib.SSL_read(ssl, _PLAIN, _READ)
            if size <= 0:
                break
            self.up_counter.bytes_up += size
            send_or_queue(self.upstream, _ffi.buffer(_PLAIN, size), self.upstream.write)
        if _lib.SSL_get_error(ssl, size) != _WANT_READ:
            # close_notify, or a broken session: the TLS layer reads again,
            # meets the same and ends the connection its own way.
            self.tls._flushReceiveBIO()
            return
        # What reading made OpenSSL answer (a KeyUpdate, say) goes out now;
        # there is seldom any, and asking costs less than a read that fails.
        if _lib.BIO_get_mem_data(self.from_ssl, _NULL) > 0:
            self._send_records()

    # -- upstream to client -------------------------------------------------

    def upstream_read(self) -> object:
        """The upstream's socket is readable: relay what it sent, encrypted."""
        upstream = self.upstream
        try:
            size = upstream.socket.recv_into(_UPSTREAM)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not size:
            return main.CONNECTION_DONE
        self.down_counter.bytes_down += size
        client = self.client
        if self.tls is None:
            send_or_queue(client, _UPSTREAM_VIEW[:size], client.write)
        elif not tls_ready(self.tls):
            client.write(bytes(_UPSTREAM_VIEW[:size]))
        else:
            self._encrypt(size)
        return None

    def upstream_read_watched(self) -> object:
        """
        :meth:`upstream_read`, then what it relayed shown to ``watch``; once
        ``watch`` has seen enough, :meth:`upstream_read` alone, so a session
        watched at its start costs nothing more after it.
        """
        counter = self.down_counter
        before = counter.bytes_down
        result = self.upstream_read()
        size = counter.bytes_down - before
        watch = self.watch
        # The shared buffer holds this read's bytes until the next read.
        if size and watch is not None and not watch(_UPSTREAM_VIEW[:size]):
            self.watch = None
            self.upstream.doRead = self.upstream_read
        return result

    def _encrypt(self, size: int) -> None:
        ssl = self.ssl
        done = 0
        while done < size:
            written = _lib.SSL_write(ssl, _UPSTREAM_PTR + done, min(_RECORD, size - done))
            if written <= 0:
                # The records made so far go first; the TLS layer's write
                # meets OpenSSL's complaint and ends the session its way.
                self._send_records()
                self.client.write(bytes(_UPSTREAM_VIEW[done:size]))
                return
            done += written
        self._send_records()

    def _send_records(self) -> None:
        """Send the records waiting in the send BIO, or queue them in order."""
        raw = self.tls.transport
        while True:
            size = _lib.BIO_read(self.from_ssl, _SEALED, _RECORDS)
            if size <= 0:
                return
            send_or_queue(self.client, _ffi.buffer(_SEALED, size), raw.write)
            if size < _RECORDS:
                return  # a memory BIO gives all it holds: it is empty now


def _renew_bios(connection: Any) -> None:
    """
    Give the session new, empty memory BIOs, moving over any bytes waiting
    in the old ones.

    A memory BIO keeps the largest buffer it ever held; after the handshake
    that is the flights of both sides, about 4 KiB per session that an idle
    session would otherwise carry to its end.
    """
    ssl = connection._ssl
    into_ssl = _fresh_bio(connection._into_ssl)
    from_ssl = _fresh_bio(connection._from_ssl)
    # The SSL object owns its BIOs: this frees the old two.
    _lib.SSL_set_bio(ssl, into_ssl, from_ssl)
    connection._into_ssl = into_ssl
    connection._from_ssl = from_ssl


def _fresh_bio(old: Any) -> Any:
    """A new memory BIO holding what is left in ``old`` (which stays as it was)."""
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    if bio == _ffi.NULL:
        raise MemoryError("BIO_new")
    while True:
        size = _lib.BIO_read(old, _SEALED, _RECORDS)
        if size <= 0:
            return bio
        _lib.BIO_write(bio, _SEALED, size)
