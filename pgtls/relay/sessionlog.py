"""
What a client connection's log lines say, worked out from plain values: the
one ``session`` summary event a connection ends with (its text and the fields
log shippers read, see pgtls.server.logs), and the pieces of PostgreSQL's
own lines (``connection authorized``, ``disconnection``, ``could not accept
SSL connection``).  No I/O: pgtls.relay.frontdoor.FrontDoor logs what these
functions return, in its own namespace.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL

from pgtls.core.hba.decisions import IPAddress
from pgtls.core.session import Ending
from pgtls.core.wire import StartupMessage
from pgtls.tls.errors import first_openssl_reason
from pgtls.tls.serverctx import NoApplicationProtocol, TLSInfo

__all__ = [
    "UNKNOWN",
    "authorized_fields",
    "encryption_words",
    "peer",
    "session_event",
    "session_time",
    "ssl_reason",
]

#: What the session line's text shows for a name the client never sent.
UNKNOWN = "[unknown]"

_SUMMARY_FIELDS = (
    "outcome={outcome}{pid} bytes_up={bytes_up} bytes_down={bytes_down} "
    "duration={duration:.3f}: {detail}"
)
_SUMMARY_SSL = (
    "host={host} port={port} user={user} database={database} "
    "ssl=on protocol={protocol} cipher={cipher} " + _SUMMARY_FIELDS
)
_SUMMARY_PLAIN = (
    "host={host} port={port} user={user} database={database} ssl=off " + _SUMMARY_FIELDS
)


def peer(address: IPAddress, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    if address.version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def session_time(seconds: float) -> str:
    """PostgreSQL's ``H:MM:SS.mmm`` session time."""
    millis = int(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours}:{minutes:02d}:{secs:02d}.{millis:03d}"


def encryption_words(info: TLSInfo | None) -> str:
    """The SSL part of PostgreSQL's ``connection authorized`` log line."""
    if info is None:
        return ""
    return f" SSL enabled (protocol={info.protocol}, cipher={info.cipher}, bits={info.bits})"


def authorized_fields(startup: StartupMessage, info: TLSInfo | None) -> dict[str, Any]:
    """
    The fields of PostgreSQL's ``{kind}connection authorized:
    user={user}{in_database}{app}{ssl}`` line for an admitted session.

    :param startup: the client's StartupMessage.
    :param info: the TLS parameters, or None for a plaintext session.
    """
    app = startup.application_name
    # PostgreSQL's walsenders (replication=true or database) log no database.
    walsender = startup.walsender is not None
    return {
        "kind": "replication " if walsender else "",
        "user": startup.user,
        "database": startup.database,
        "in_database": "" if walsender else f" database={startup.database}",
        "app": f" application_name={app}" if app else "",
        "ssl": encryption_words(info),
    }


def ssl_reason(error: BaseException | None) -> str:
    """
    OpenSSL's reason text for a failed TLS handshake, as PostgreSQL logs it
    (``could not accept SSL connection: REASON``); EOF when the client left.

    :param error: why the connection was lost during the handshake (a
        Failure's value, None if it has none).
    """
    if isinstance(error, NoApplicationProtocol):
        return error.reason
    if isinstance(error, SSL.Error):
        return first_openssl_reason(error) or str(error)
    return "EOF detected"


def session_event(
    *,
    address: IPAddress,
    port: int,
    proxy: tuple[IPAddress, int] | None,
    startup: StartupMessage | None,
    tls: TLSInfo | None,
    ending: Ending,
    bytes_up: int,
    bytes_down: int,
    duration: float,
    backend_pid: int | None,
) -> tuple[str, dict[str, Any]]:
    """
    The one event a connection ends with: its text (what follows
    ``session``) and its fields, named for log shippers (JSON logs).  The
    text names the TLS parameters only when TLS was up, and shows the names
    of a client that sent no StartupMessage as PostgreSQL's
    log_line_prefix shows missing ones (``%u``, ``%d``); the fields keep None.

    :param address: the client's address (from the PROXY header, if any).
    :param port: the client's port.
    :param proxy: the load balancer's address and port, or None.
    :param startup: the client's StartupMessage, or None if none was read.
    :param tls: the TLS parameters, or None for a plaintext connection.
    :param ending: how the connection ended.
    :param bytes_up: bytes relayed from the client to the upstream.
    :param bytes_down: bytes relayed from the upstream to the client.
    :param duration: seconds from the connection's start to its end.
    :param backend_pid: the upstream backend's process ID, or None.
    """
    fields = {
        "peer": peer(address, port),
        "host": str(address),
        "port": port,
        "proxy": peer(*proxy) if proxy else None,
        "user": startup.user if startup else None,
        "database": startup.database if startup else None,
        "ssl": tls is not None,
        "protocol": tls.protocol if tls else None,
        "cipher": tls.cipher if tls else None,
        "outcome": ending.outcome,
        "reason": ending.reason,
        "detail": ending.detail,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "duration": duration,
        "backend_pid": backend_pid,
    }
    # str.format writes the text at once; Twisted's formatter would take
    # its template apart in Python, field by field, for every connection.
    template = _SUMMARY_SSL if tls else _SUMMARY_PLAIN
    pid = "" if backend_pid is None else f" backend_pid={backend_pid}"
    if startup is None:
        summary = template.format(**{**fields, "user": UNKNOWN, "database": UNKNOWN}, pid=pid)
    else:
        summary = template.format(**fields, pid=pid)
    return summary, fields
