"""
Tests for pgtls.relay.fastpath: the self-test proves the fast path's internals on
a real TLS socket pair and names what fails when they are broken; the
switch (postgresql.conf, PGTLS_FAST_PATH) and the self-test decide once, with
one log line; with the fast path off, pgtls's writes, TLS start and pump
take Twisted's public path.

The internals are broken here as an upgrade would break them (a renamed
attribute, a binding without a call, a module that went away) or as a bug
would (bytes changed on the way); a real twistd in front of a real
PostgreSQL with broken internals is tests/integration/test_public_path.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from socketpairs import Pair, server_options
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOProtocol

from pgtls import _internals
from pgtls.relay import fastpath, fastwrite, pump, selftest


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_self_test_passes_here_and_leaves_nothing_open() -> None:
    """On the Twisted and pyOpenSSL installed, the internals behave."""
    before = descriptors()
    assert selftest.self_test() is None
    assert descriptors() == before


class Without:
    """pyOpenSSL's binding without one of its calls."""

    def __init__(self, real: Any, name: str) -> None:
        self.real = real
        self.name = name

    def __getattr__(self, name: str) -> Any:
        if name == self.name:
            raise AttributeError(f"binding has no attribute '{name}'")
        return getattr(self.real, name)


def renamed_creator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_internals, "CREATOR_NAMES", ("_renamedByAnUpgrade",))


def binding_without_ssl_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pump, "_lib", Without(pump._lib, "SSL_read"))  # type: ignore[attr-defined]


def binding_without_mem_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_internals, "lib", Without(_internals.lib, "BIO_get_mem_data"))


def private_module_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_internals, "IMPORT_ERROR", "ModuleNotFoundError: No module named 'x'")


def bytes_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _internals.send_or_queue

    def changing(transport: Any, data: Any, queue: Any) -> None:
        real(transport, bytes(data).replace(b"select", b"SELECT"), queue)

    monkeypatch.setattr(pump, "send_or_queue", changing)


def pump_not_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pump.Pump, "__init__", lambda self, *args: None)
    monkeypatch.setattr(pump.Pump, "stop", lambda self: None)


BREAKS: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], str]] = {
    "renamed creator": (renamed_creator, "_renamedByAnUpgrade"),
    "no SSL_read": (binding_without_ssl_read, "SSL_read"),
    "no BIO_get_mem_data": (binding_without_mem_data, "BIO_get_mem_data"),
    "private module gone": (private_module_gone, "No module named 'x'"),
    "bytes changed": (bytes_changed, "reached the upstream changed"),
    "pump not reading": (pump_not_reading, "did not take the sockets' reads"),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_broken_internals_fail_the_self_test_naming_what(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each break fails the self-test at once, with a line that names it."""
    breaks, named = BREAKS[name]
    breaks(monkeypatch)
    before = descriptors()
    failure = selftest.self_test(timeout=3.0)
    assert failure is not None
    assert named in failure
    assert "\n" not in failure
    monkeypatch.undo()
    assert descriptors() == before


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_broken_internals_warn_once_and_turn_the_fast_path_off(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One warning, nothing logged as a failure, and the public path from then on."""
    breaks, named = BREAKS[name]
    breaks(monkeypatch)
    with capturedLogs() as events:
        assert fastpath.start(True, {}, lambda: selftest.self_test(timeout=3.0)) is False
    monkeypatch.undo()
    assert [event["log_level"] for event in events] == [LogLevel.warn]
    assert named in events[0]["failure"]
    assert not fastpath.on()
    public_path_is_taken()


def public_path_is_taken() -> None:
    """With the fast path off: startTLS, no pump, writes queued as write() queues them."""
    client, upstream = Pair(), Pair()
    try:
        fastwrite.start_tls(client.transport, server_options())
        tls = client.transport.protocol
        assert isinstance(tls, TLSMemoryBIOProtocol)
        assert not isinstance(tls, _internals._ServerTLSLayer)
        assert pump.start(client.transport, upstream.transport, object(), object()) is None
        fastwrite.send_or_queue(upstream.transport, b"Q", upstream.transport.write)
        assert upstream.peer_read() == b""
        assert upstream.waiting()
    finally:
        client.close()
        upstream.close()


def test_switched_off_in_postgresql_conf() -> None:
    """pgtls.fast_path = off: one info line, no self-test."""
    ran: list[bool] = []
    with capturedLogs() as events:
        assert fastpath.start(False, {}, lambda: ran.append(True)) is False
    assert ran == []
    assert not fastpath.on()
    assert [(event["log_level"], event["where"]) for event in events] == [
        (LogLevel.info, "pgtls.fast_path = off")
    ]


@pytest.mark.parametrize("setting", [True, False])
def test_the_environment_wins(setting: bool) -> None:
    """PGTLS_FAST_PATH=off turns it off whatever the file says; =on runs the self-test."""
    with capturedLogs() as events:
        assert fastpath.start(setting, {"PGTLS_FAST_PATH": "off"}, lambda: None) is False
    assert events[0]["where"] == "PGTLS_FAST_PATH=off"
    with capturedLogs() as events:
        assert fastpath.start(setting, {"PGTLS_FAST_PATH": "On"}, lambda: None) is True
    assert list(events) == []
    assert fastpath.on()


def test_a_passing_self_test_is_quiet_and_turns_it_on() -> None:
    fastpath.set_on(False)
    with capturedLogs() as events:
        assert fastpath.start(True, {}, lambda: None) is True
    assert list(events) == []
    assert fastpath.on()


@pytest.mark.parametrize("text", ["maybe", ""])
def test_a_bad_environment_value_is_an_error(text: str) -> None:
    with pytest.raises(
        ValueError, match='invalid value for environment variable PGTLS_FAST_PATH: "'
    ):
        fastpath.start(True, {"PGTLS_FAST_PATH": text}, lambda: None)
