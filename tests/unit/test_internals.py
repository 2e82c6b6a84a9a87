"""
Tests for pgtls._internals, the one module that touches Twisted's and
pyOpenSSL's private internals: that it is the only one, that the upstream
bodies it copies are the ones it was written against, and that it finds
Twisted's TLS connection creator under either of its names.

What its functions do is tested where they are used (test_pump,
test_fastwrite, test_reactor) and as a whole by pgtls.relay.selftest's
self-test (test_fastpath).
"""

from __future__ import annotations

import hashlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import twisted
from pgtls import _internals

# The private names of Twisted and pyOpenSSL that only pgtls._internals may use.
PRIVATE = re.compile(
    r"OpenSSL\._util|\._tlsConnection|\._creatorCallable|\._createConnection|\._poller\b"
    r"|\._selectables|\._into_ssl|\._from_ssl|_get_default_clock|_newtls|_doReadOrWrite"
    r"|_flushReceiveBIO|_flushSendBIO|_handshakeDone|_appSendBuffer|_tempDataLen"
    r"|twisted\.protocols\.haproxy\._"
)

# The sha256 (16 hex digits) of the source of each upstream function that
# pgtls._internals copies (or overrides, relying on what it does), for each
# Twisted version the copies were reviewed against.  A new Twisted version
# fails here until its bodies are compared with the copies and recorded.
_UP_TO_25_5 = {
    # Its factory's creator is _createConnection: the one difference.
    "tls.TLSMemoryBIOProtocol.makeConnection": "85cb008b003ff3d2",
    "tls.TLSMemoryBIOProtocol._flushSendBIO": "c034168e4f0faf2c",
    "_newtls.startTLS": "da00d9cb1d682795",
    "epollreactor.EPollReactor.doPoll": "09b62ae68ef01b4b",
}
_FROM_26_4 = {
    "tls.TLSMemoryBIOProtocol.makeConnection": "c83b193e6cb07f9f",
    "tls.TLSMemoryBIOProtocol._flushSendBIO": "c034168e4f0faf2c",
    "_newtls.startTLS": "da00d9cb1d682795",
    "epollreactor.EPollReactor.doPoll": "09b62ae68ef01b4b",
}
UPSTREAM: dict[str, dict[str, str]] = {
    "24.7.0": _UP_TO_25_5,
    "24.10.0": _UP_TO_25_5,
    "24.11.0": _UP_TO_25_5,
    "25.5.0": _UP_TO_25_5,
    "26.4.0": _FROM_26_4,
    "26.10.0": _FROM_26_4,
}


def digest(function: Any) -> str:
    """The first 16 hex digits of the sha256 of a function's source."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def test_only_the_seam_touches_private_internals() -> None:
    """No module of pgtls but _internals names a private internal of Twisted or pyOpenSSL."""
    package = Path(_internals.__file__).parent
    users = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if PRIVATE.search(path.read_text())
    )
    assert users == ["_internals.py"]


def test_the_private_names_pattern_sees_each_kind_of_import() -> None:
    """The check above would see a module that imports a private parser of Twisted's."""
    assert PRIVATE.search("from twisted.protocols.haproxy._v2parser import V2Parser")
    assert PRIVATE.search("import twisted.protocols.haproxy._info")
    assert not PRIVATE.search("from twisted.protocols.haproxy import proxyEndpoint")


def test_copied_upstream_bodies_are_the_reviewed_ones() -> None:
    """Twisted's makeConnection, _flushSendBIO, startTLS and doPoll are as when copied."""
    version = twisted.__version__
    if version not in UPSTREAM:
        pytest.fail(
            f"Twisted {version}: compare the upstream bodies pgtls._internals copies "
            f"with its copies, then record their digests in UPSTREAM",
            pytrace=False,
        )
    found = {name: digest(function) for name, function in _internals.copied().items()}
    assert found == UPSTREAM[version]


class OldFactory:
    """Twisted up to 25.5: the creator is a method named _createConnection."""

    def _createConnection(self, tls: object) -> str:
        return "old"


class NewFactory:
    """Twisted after 25.5: the creator is an attribute named _creatorCallable."""

    def __init__(self) -> None:
        self._creatorCallable = lambda tls: "new"


@pytest.mark.parametrize("factory, made", [(OldFactory(), "old"), (NewFactory(), "new")])
def test_the_tls_connection_creator_under_either_name(factory: Any, made: str) -> None:
    assert _internals._creator(factory)(object()) == made


def test_a_creator_under_neither_name_is_an_attribute_error() -> None:
    """Raised at start by the self-test, which then turns the fast path off."""
    with pytest.raises(AttributeError, match="_creatorCallable, _createConnection"):
        _internals._creator(object())
