"""
The first packets of a connection to a real ``twistd pgtls``, sent with raw
sockets and compared with PostgreSQL 15's answers (src/backend/postmaster/postmaster.c:
ProcessStartupPacket, and BackendInitialize for authentication_timeout).

Most tests share two module-wide pgtls servers, one with ``ssl = on`` and one
with ``ssl = off``, in front of the session's PostgreSQL; tests that need
other settings (authentication_timeout, max_connections) or stop the
upstream start their own.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import PostgresServer
from pgtlsproc import PgtlsServer, Pki, free_port, make_datadir

from pgtls.core import wire

# Bounds every socket operation: a server that waits instead of answering
# fails the test rather than hanging it.
TIMEOUT = 10.0

#: PostgreSQL 15's answer to a protocol 2.0 StartupMessage, in protocol 2's
#: format: no length word (postmaster.c's ProcessStartupPacket; observed bytes).
V2_UNSUPPORTED = b"E" + b"FATAL:  unsupported frontend protocol 2.0: server supports 3.0 to 3.0\n\0"

#: NegotiateProtocolVersion for 3.1 with ``_pq_.foo`` as PostgreSQL 15 sent it
#: (postmaster.c's SendNegotiateProtocolVersion).
NEGOTIATE_PQ_FOO = bytes.fromhex("76 00000015 00030000 00000001 5f70715f2e666f6f00")

MITM_DETAIL = (
    "This could be either a client-software bug or evidence of an attempted "
    "man-in-the-middle attack."
)

Message = tuple[bytes, bytes]


# --- a raw client -----------------------------------------------------------


class Peer:
    """
    One client connection to pgtls, plaintext until :meth:`start_tls`.

    Reads exactly what is asked for, so that nothing meant for TLS is read
    as plaintext.
    """

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self._buffer = bytearray()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def start_tls(self, context: ssl.SSLContext) -> ssl.SSLSocket:
        """Do the TLS handshake on this connection (raises ssl.SSLError if it fails)."""
        assert not self._buffer, f"plaintext bytes before the handshake: {bytes(self._buffer)!r}"
        tls = context.wrap_socket(self.sock, server_hostname="localhost")
        self.sock = tls
        return tls

    def recv_exact(self, size: int) -> bytes:
        """Read exactly ``size`` bytes; fail on EOF."""
        while len(self._buffer) < size:
            chunk = self.sock.recv(size - len(self._buffer))
            if not chunk:
                raise AssertionError(f"EOF after {bytes(self._buffer)!r}, wanted {size} bytes")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def message(self) -> Message:
        """Read one backend message: (type byte, body)."""
        header = self.recv_exact(5)
        (length,) = struct.unpack("!I", header[1:])
        return header[:1], self.recv_exact(length - 4)

    def until_ready(self) -> list[Message]:
        """Read messages up to and including ReadyForQuery; fail on an error."""
        messages = []
        while True:
            kind, body = self.message()
            messages.append((kind, body))
            if kind == b"Z":
                return messages

    def read_to_eof(self) -> bytes:
        """Everything left until the server closes the connection."""
        data = bytes(self._buffer)
        self._buffer.clear()
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def query(self, sql: str) -> list[Message]:
        """Run ``sql`` with the simple query protocol; the messages up to ReadyForQuery."""
        text = sql.encode() + b"\0"
        self.send(b"Q" + struct.pack("!I", len(text) + 4) + text)
        return self.until_ready()


def tls_context(pki: Pki, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A client context that verifies pgtls's certificate (for ``localhost``)."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


def startup(**parameters: str) -> bytes:
    """A v3 StartupMessage for the trusted user postgres, database postgres."""
    return wire.startup_message({"user": "postgres", "database": "postgres", **parameters})


def expect_session(peer: Peer) -> tuple[int, int]:
    """
    Read the upstream's answer to a trusted StartupMessage and run a query.

    :return: the session's backend PID and secret key (BackendKeyData).
    """
    messages = peer.until_ready()
    assert messages[0] == (b"R", b"\0\0\0\0"), messages  # AuthenticationOk
    assert any(kind == b"S" for kind, _ in messages), messages  # ParameterStatus
    assert messages[-1] == (b"Z", b"I"), messages
    (key_data,) = [body for kind, body in messages if kind == b"K"]
    pid, key = struct.unpack("!ii", key_data)
    rows = [body for kind, body in peer.query("select 42") if kind == b"D"]
    assert rows == [b"\0\1\0\0\0\x0242"]
    return pid, key


def expect_fatal(data: bytes, sqlstate: str, message: str) -> dict[str, str]:
    """Assert ``data`` is exactly one FATAL ErrorResponse; return its fields."""
    fields = wire.parse_error_response(data)
    assert (fields["S"], fields["V"], fields["C"], fields["M"]) == (
        "FATAL",
        "FATAL",
        sqlstate,
        message,
    ), fields
    return fields


def cancelled_within(peer: Peer) -> float:
    """Seconds until the running query fails with 57014 (query_canceled)."""
    start = time.monotonic()
    kind, body = peer.message()
    if kind == b"T":  # RowDescription, held back in the backend's buffer
        kind, body = peer.message()
    elapsed = time.monotonic() - start
    assert kind == b"E", (kind, body)
    fields = wire.parse_error_response(kind + struct.pack("!I", len(body) + 4) + body)
    assert fields["C"] == "57014", fields
    assert peer.until_ready()[-1] == (b"Z", b"I")
    return elapsed


def wait_until_active(postgres: PostgresServer, pid: int) -> None:
    """Wait until backend ``pid`` runs its query: a cancel before that is ignored."""
    deadline = time.monotonic() + TIMEOUT
    sql = f"select state from pg_stat_activity where pid = {pid}"
    while postgres.psql(sql) != "active":
        assert time.monotonic() < deadline, f"backend {pid} never became active"
        time.sleep(0.1)


# --- servers and the upstream's log ------------------------------------------


def _serve(path: Path, pki: Pki, postgres: PostgresServer, *, ssl: bool) -> Iterator[PgtlsServer]:
    port = free_port()
    datadir = make_datadir(
        path, pki, postgres.conninfo(), port=port, ssl=ssl, settings=["log_connections = on"]
    )
    with PgtlsServer(datadir, port) as server:
        yield server


@pytest.fixture(scope="module")
def door(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, postgres: PostgresServer
) -> Iterator[PgtlsServer]:
    """pgtls with ssl = on, shared by the module."""
    yield from _serve(tmp_path_factory.mktemp("door"), pki, postgres, ssl=True)


@pytest.fixture(scope="module")
def plain_door(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, postgres: PostgresServer
) -> Iterator[PgtlsServer]:
    """pgtls with ssl = off, shared by the module."""
    yield from _serve(tmp_path_factory.mktemp("plain"), pki, postgres, ssl=False)


class UpstreamLog:
    """Tells whether a session with a given application_name reached PostgreSQL."""

    def __init__(self, postgres: PostgresServer) -> None:
        self.postgres = postgres

    def reached(self, marker: str) -> bool:
        return f"application_name={marker}" in self.postgres.log_text()

    def control(self) -> None:
        """Wait until every earlier session is in PostgreSQL's log."""
        self.postgres.settled_log(TIMEOUT)


@pytest.fixture(scope="module")
def upstream_log(postgres: PostgresServer) -> Iterator[UpstreamLog]:
    """The upstream logs every session it authorizes while the module runs."""
    postgres.psql("ALTER SYSTEM SET log_connections = on; SELECT pg_reload_conf();")
    log = UpstreamLog(postgres)
    log.control()
    try:
        yield log
    finally:
        postgres.psql("ALTER SYSTEM RESET log_connections; SELECT pg_reload_conf();")


# --- SSLRequest, GSSENCRequest ----------------------------------------------


def test_ssl_request_then_session_inside_tls(door: PgtlsServer, pki: Pki) -> None:
    """SSLRequest gets exactly ``S``; after the handshake (ALPN postgresql
    offered and selected) a StartupMessage reaches the upstream, which
    answers AuthenticationOk .. ReadyForQuery and runs queries."""
    with Peer(door.port) as peer:
        peer.send(wire.ssl_request())
        assert peer.recv_exact(1) == b"S"
        tls = peer.start_tls(tls_context(pki, ["postgresql"]))
        assert tls.selected_alpn_protocol() == "postgresql"
        peer.send(startup())
        expect_session(peer)


def test_ssl_off_answers_n_then_plaintext_session(plain_door: PgtlsServer) -> None:
    """With ssl = off, SSLRequest gets ``N`` and a plaintext StartupMessage on
    the same connection starts a session."""
    with Peer(plain_door.port) as peer:
        peer.send(wire.ssl_request())
        assert peer.recv_exact(1) == b"N"
        peer.send(startup())
        expect_session(peer)


def test_plaintext_startup_without_negotiation(door: PgtlsServer) -> None:
    """A StartupMessage as the first packet starts a plaintext session even
    when ssl = on (pg_hba.conf's host lines allow it)."""
    with Peer(door.port) as peer:
        peer.send(startup())
        expect_session(peer)


def test_startup_pipelined_after_ssl_request_is_refused_inside_tls(
    door: PgtlsServer, pki: Pki, upstream_log: UpstreamLog
) -> None:
    """SSLRequest and StartupMessage in one send (CVE-2021-23214): ``S``, the
    TLS handshake, then FATAL 08P01 with its DETAIL inside TLS, and no session
    reaches the upstream."""
    marker = f"pipelined-tls-{uuid.uuid4().hex}"
    with Peer(door.port) as peer:
        peer.send(wire.ssl_request() + startup(application_name=marker))
        assert peer.recv_exact(1) == b"S"
        peer.start_tls(tls_context(pki, ["postgresql"]))
        fields = expect_fatal(
            peer.read_to_eof(), "08P01", "received unencrypted data after SSL request"
        )
    assert fields["D"] == MITM_DETAIL
    upstream_log.control()
    assert not upstream_log.reached(marker)


def test_startup_pipelined_after_ssl_request_with_ssl_off(
    plain_door: PgtlsServer, upstream_log: UpstreamLog
) -> None:
    """With ssl = off the same pipelined StartupMessage gets ``N`` then the
    08P01 FATAL in plaintext, and no session reaches the upstream."""
    marker = f"pipelined-plain-{uuid.uuid4().hex}"
    with Peer(plain_door.port) as peer:
        peer.send(wire.ssl_request() + startup(application_name=marker))
        data = peer.read_to_eof()
    assert data[:1] == b"N"
    fields = expect_fatal(data[1:], "08P01", "received unencrypted data after SSL request")
    assert fields["D"] == MITM_DETAIL
    upstream_log.control()
    assert not upstream_log.reached(marker)


def test_startup_pipelined_after_gssenc_request(
    door: PgtlsServer, upstream_log: UpstreamLog
) -> None:
    """GSSENCRequest and StartupMessage in one send: ``N`` then FATAL 08P01
    ``received unencrypted data after GSSAPI encryption request``; nothing
    reaches the upstream."""
    marker = f"pipelined-gss-{uuid.uuid4().hex}"
    with Peer(door.port) as peer:
        peer.send(wire.gssenc_request() + startup(application_name=marker))
        data = peer.read_to_eof()
    assert data[:1] == b"N"
    fields = expect_fatal(
        data[1:], "08P01", "received unencrypted data after GSSAPI encryption request"
    )
    assert fields["D"] == MITM_DETAIL
    upstream_log.control()
    assert not upstream_log.reached(marker)


def test_upstream_log_sees_relayed_sessions(door: PgtlsServer, upstream_log: UpstreamLog) -> None:
    """The upstream-log check used above can fail: a session pgtls relays is
    in the upstream's log under its application_name."""
    marker = f"relayed-{uuid.uuid4().hex}"
    with Peer(door.port) as peer:
        peer.send(startup(application_name=marker))
        expect_session(peer)
    upstream_log.control()
    assert upstream_log.reached(marker)


def test_gssenc_refused_then_ssl_request(door: PgtlsServer, pki: Pki) -> None:
    """GSSENCRequest gets ``N`` (pgtls has no GSSAPI); an SSLRequest may follow
    on the same connection and gets ``S``, and the session works."""
    with Peer(door.port) as peer:
        peer.send(wire.gssenc_request())
        assert peer.recv_exact(1) == b"N"
        peer.send(wire.ssl_request())
        assert peer.recv_exact(1) == b"S"
        peer.start_tls(tls_context(pki, ["postgresql"]))
        peer.send(startup())
        expect_session(peer)


def test_second_ssl_request_inside_tls(door: PgtlsServer, pki: Pki) -> None:
    """An SSLRequest inside TLS is not special any more: FATAL 0A000
    ``unsupported frontend protocol 1234.5679``, sent inside TLS."""
    with Peer(door.port) as peer:
        peer.send(wire.ssl_request())
        assert peer.recv_exact(1) == b"S"
        peer.start_tls(tls_context(pki, ["postgresql"]))
        peer.send(wire.ssl_request())
        expect_fatal(
            peer.read_to_eof(),
            "0A000",
            "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0",
        )


# --- direct TLS and ALPN ----------------------------------------------------


def test_direct_tls_with_alpn(door: PgtlsServer, pki: Pki) -> None:
    """A TLS ClientHello as the first bytes, offering ALPN postgresql: the
    handshake selects postgresql and a session runs inside TLS."""
    with Peer(door.port) as peer:
        tls = peer.start_tls(tls_context(pki, ["postgresql"]))
        assert tls.selected_alpn_protocol() == "postgresql"
        peer.send(startup())
        expect_session(peer)


def test_direct_tls_without_alpn_is_closed(door: PgtlsServer, pki: Pki) -> None:
    """Direct TLS without ALPN: the handshake completes, then pgtls closes the
    connection without an ErrorResponse and logs why."""
    with Peer(door.port) as peer:
        tls = peer.start_tls(tls_context(pki, alpn=None))
        assert tls.selected_alpn_protocol() is None
        assert peer.read_to_eof() == b""
    door.wait_for_log("direct SSL connection request without ALPN")


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "ssl-request"])
def test_alpn_without_postgresql_aborts_handshake(
    door: PgtlsServer, pki: Pki, direct: bool
) -> None:
    """A client offering ALPN without postgresql (only http/1.1) has its
    handshake aborted with the no_application_protocol alert, on direct TLS
    and after SSLRequest alike."""
    with Peer(door.port) as peer:
        if not direct:
            peer.send(wire.ssl_request())
            assert peer.recv_exact(1) == b"S"
        with pytest.raises(ssl.SSLError, match="alert no application protocol"):
            peer.start_tls(tls_context(pki, ["http/1.1"]))


# --- malformed first packets ------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("!II", 3, wire.PROTOCOL_3_0),
        struct.pack("!II", 7, wire.PROTOCOL_3_0),
        struct.pack("!II", 10005, wire.PROTOCOL_3_0),
        b"GET / HTTP/1.1\r\n\r\n",
    ],
    ids=["length-3", "length-7", "length-10005", "http"],
)
def test_bad_length_closes_silently(door: PgtlsServer, data: bytes) -> None:
    """A length word below 8 or above 10004 (HTTP's ``GET `` is one) closes
    the connection at once without a byte in reply (``invalid length of
    startup packet`` is log only)."""
    with Peer(door.port) as peer:
        peer.send(data)
        started = time.monotonic()
        assert peer.read_to_eof() == b""
    # Not held open until authentication_timeout (60 s here).
    assert time.monotonic() - started < 5


def _padded_startup(total: int) -> bytes:
    """A trusted StartupMessage of exactly ``total`` bytes (a long application_name)."""
    base = len(startup(application_name=""))
    packet = startup(application_name="x" * (total - base))
    assert len(packet) == total
    return packet


def test_longest_startup_packet_is_accepted(door: PgtlsServer) -> None:
    """A 10004-byte StartupMessage (10000 after the length word, PostgreSQL's
    MAX_STARTUP_PACKET_LENGTH) is accepted and relayed."""
    with Peer(door.port) as peer:
        peer.send(_padded_startup(10004))
        expect_session(peer)


def test_startup_packet_one_byte_too_long(door: PgtlsServer) -> None:
    """A 10005-byte StartupMessage is closed silently, like any bad length."""
    with Peer(door.port) as peer:
        peer.send(_padded_startup(10005))
        assert peer.read_to_eof() == b""


def test_missing_user(door: PgtlsServer) -> None:
    """A StartupMessage without ``user``: FATAL 28000."""
    with Peer(door.port) as peer:
        peer.send(wire.startup_message({"database": "postgres"}))
        expect_fatal(
            peer.read_to_eof(), "28000", "no PostgreSQL user name specified in startup packet"
        )


def test_protocol_4_0(door: PgtlsServer) -> None:
    """Protocol 4.0: FATAL 0A000 as a protocol 3 ErrorResponse."""
    with Peer(door.port) as peer:
        peer.send(wire.startup_message({"user": "postgres"}, major=4))
        expect_fatal(
            peer.read_to_eof(),
            "0A000",
            "unsupported frontend protocol 4.0: server supports 3.0 to 3.0",
        )


def test_protocol_2_0(door: PgtlsServer) -> None:
    """A protocol 2.0 StartupPacket (fixed 296 bytes) gets PostgreSQL 15's
    error in protocol 2's format, byte for byte."""
    v2_packet = struct.pack(
        "!II64s32s64s64s64s", 296, 2 << 16, b"postgres", b"postgres", b"", b"", b""
    )
    with Peer(door.port) as peer:
        peer.send(v2_packet)
        assert peer.read_to_eof() == V2_UNSUPPORTED


def test_protocol_3_1_negotiation_comes_from_upstream(door: PgtlsServer, pki: Pki) -> None:
    """Protocol 3.1 with a ``_pq_`` option is relayed: the upstream's
    NegotiateProtocolVersion comes back first, then the session proceeds."""
    packet = wire.startup_message(
        {"user": "postgres", "database": "postgres", "_pq_.foo": "bar"}, minor=1
    )
    with Peer(door.port) as peer:
        peer.send(wire.ssl_request())
        assert peer.recv_exact(1) == b"S"
        peer.start_tls(tls_context(pki, ["postgresql"]))
        peer.send(packet)
        assert peer.recv_exact(len(NEGOTIATE_PQ_FOO)) == NEGOTIATE_PQ_FOO
        expect_session(peer)


# --- cancel -----------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "tls"])
def test_cancel_request(
    door: PgtlsServer, pki: Pki, postgres: PostgresServer, encrypted: bool
) -> None:
    """A CancelRequest (plaintext, or inside TLS after SSLRequest) with a
    session's PID and key cancels its running query (57014) quickly; the
    cancel connection is closed without a reply.  A wrong key cancels
    nothing."""
    with Peer(door.port) as session:
        session.send(wire.ssl_request())
        assert session.recv_exact(1) == b"S"
        session.start_tls(tls_context(pki, ["postgresql"]))
        session.send(startup())
        pid, key = expect_session(session)
        text = b"select pg_sleep(30)\0"
        session.send(b"Q" + struct.pack("!I", len(text) + 4) + text)
        wait_until_active(postgres, pid)

        def cancel(secret: int) -> None:
            with Peer(door.port) as peer:
                if encrypted:
                    peer.send(wire.ssl_request())
                    assert peer.recv_exact(1) == b"S"
                    peer.start_tls(tls_context(pki, ["postgresql"]))
                peer.send(wire.cancel_request(pid, secret))
                assert peer.read_to_eof() == b""

        wrong = key + 1 if key < 2**31 - 1 else key - 1
        cancel(wrong)
        session.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            session.message()
        session.sock.settimeout(TIMEOUT)
        cancel(key)
        assert cancelled_within(session) < 5


# --- authentication_timeout and max_connections -----------------------------


def test_authentication_timeout(pgtls, pki: Pki) -> None:
    """authentication_timeout = 1: a client that sends nothing, one that stops
    after SSLRequest/``S`` without a ClientHello, and one that stops inside
    its StartupMessage (in plaintext or inside TLS) are closed after about
    1 s with a plain EOF, no reply and no reset; a session that started in
    time lives on."""
    server = pgtls.start(settings=["authentication_timeout = 1"])
    with contextlib.ExitStack() as stack:
        idle, after_s, partial, tls_partial, session = (
            stack.enter_context(Peer(server.port)) for _ in range(5)
        )
        started = time.monotonic()
        after_s.send(wire.ssl_request())
        assert after_s.recv_exact(1) == b"S"
        partial.send(startup()[:10])
        tls_partial.send(wire.ssl_request())
        assert tls_partial.recv_exact(1) == b"S"
        tls_partial.start_tls(tls_context(pki, ["postgresql"]))
        tls_partial.send(startup()[:10])
        session.send(startup())
        session.until_ready()
        for peer in (idle, after_s, partial, tls_partial):
            # A plain EOF, as when PostgreSQL's backend exits: no reset.
            assert peer.read_to_eof() == b""
            assert 0.5 <= time.monotonic() - started < 5
        time.sleep(max(0.0, started + 1.5 - time.monotonic()))
        rows = [body for kind, body in session.query("select 42") if kind == b"D"]
        assert rows == [b"\0\1\0\0\0\x0242"]


def test_max_connections(pgtls, pki: Pki) -> None:
    """max_connections = 2: with two sessions open a third gets FATAL 53300
    ``sorry, too many clients already`` (inside TLS when negotiated); once
    one session ends a new one gets in."""
    server = pgtls.start(settings=["max_connections = 2"])
    with Peer(server.port) as first, Peer(server.port) as second:
        for peer in (first, second):
            peer.send(startup())
            expect_session(peer)
        with Peer(server.port) as third:
            third.send(wire.ssl_request())
            assert third.recv_exact(1) == b"S"
            third.start_tls(tls_context(pki, ["postgresql"]))
            third.send(startup())
            expect_fatal(third.read_to_eof(), "53300", "sorry, too many clients already")
        first.send(b"X\0\0\0\4")  # Terminate
        assert first.read_to_eof() == b""
        with Peer(server.port) as fourth:
            fourth.send(startup())
            expect_session(fourth)


# --- the upstream goes away -------------------------------------------------


def test_upstream_down(pgtls, pki: Pki, postgres: PostgresServer) -> None:
    """With the upstream stopped, a session gets FATAL 57P03 that does not
    name the upstream's socket; pgtls keeps serving, and once the upstream is
    back sessions work again."""
    server = pgtls.start()
    postgres.stop()
    for encrypted in (False, True):
        with Peer(server.port) as peer:
            if encrypted:
                peer.send(wire.ssl_request())
                assert peer.recv_exact(1) == b"S"
                peer.start_tls(tls_context(pki, ["postgresql"]))
            peer.send(startup())
            fields = wire.parse_error_response(peer.read_to_eof())
        assert (fields["S"], fields["C"]) == ("FATAL", "57P03"), fields
        for value in fields.values():
            assert postgres.socket_dir not in value
            assert ".s.PGSQL" not in value
    assert server.process is not None and server.process.poll() is None
    postgres.start()
    with Peer(server.port) as peer:
        peer.send(startup())
        expect_session(peer)
