"""
Log output for ``twistd pgtls``.

By default twistd writes its usual text log, in which pgtls's lines read
like PostgreSQL's (``connection authorized: user=...``).  For journald and
log shippers, ``twistd --logger=pgtls.logs.json`` writes one JSON object a
line instead: Twisted's own event serialization (every named field of the
event, as :func:`twisted.logger.eventAsJSON` gives them, which
:func:`twisted.logger.eventsFromJSONLogFile` reads back), plus ``text``, the
formatted line, and ``level``, the level's name, so that a shipper needs no
Twisted to show it.

Every connection ends with one ``session`` event at level info, the access
log (see pgtls.relay.sessionlog), with the fields peer, host, port, proxy (the
load balancer's address, see pgtls.relay.proxyheader), user, database, ssl,
protocol, cipher, outcome, reason, detail, bytes_up, bytes_down, duration,
backend_pid (the upstream backend's process ID, or None) and summary: the
text after ``session``, formatted when the event is made.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    eventAsJSON,
    formatEvent,
)

__all__ = ["json", "json_observer"]


def json() -> ILogObserver:
    """
    The observer factory for ``twistd --logger=pgtls.logs.json``: JSON
    lines on standard output (which systemd gives to journald).
    """
    return json_observer(sys.stdout)


def json_observer(out: IO[Any]) -> ILogObserver:
    """
    An observer that writes each event to ``out`` as one line of JSON.

    Unlike :func:`twisted.logger.jsonFileLogObserver`'s default, no record
    separator (``\\x1e``) precedes the object, so each line parses alone.

    :param out: a text file, flushed after each line.
    """
    return FileLogObserver(out, _json_line)


def _json_line(event: LogEvent) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    level = event.get("log_level")
    extra = {"text": text, "level": level.name if level is not None else None}
    return eventAsJSON({**event, **extra}) + "\n"
