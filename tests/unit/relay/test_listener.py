"""
Tests for pgtls.relay.listener: what the client connections share, driven
without a front door (its connections are plain objects here; test_frontdoor
covers them as FrontDoors register and leave).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock

from pgtls.core.conf import Settings
from pgtls.core.conninfo import Upstream
from pgtls.core.hba import load_rules
from pgtls.relay.listener import Listener


def listener(tmp_path: Path, settings: Settings | None = None) -> Listener[object]:
    """A Listener with trust-all rules, no TLS, and these settings (the defaults if None)."""
    (tmp_path / "pg_hba.conf").write_text("host all all 0.0.0.0/0 trust\n")
    rules = load_rules(
        str(tmp_path / "pg_hba.conf"),
        str(tmp_path / "pg_ident.conf"),
        ssl_enabled=False,
        client_ca_loaded=False,
    )
    config = settings if settings is not None else Settings(str(tmp_path))
    return Listener(config, rules, None, MemoryReactorClock())


def test_when_idle_fires_at_once_without_connections(tmp_path: Path) -> None:
    """No connection left: the Deferred has already fired."""
    fired: list[None] = []
    listener(tmp_path).when_idle().addCallback(fired.append)
    assert fired == [None]


def test_when_idle_fires_for_every_waiter_when_the_last_connection_ends(tmp_path: Path) -> None:
    """Every waiter wakes once the last connection ends, not before, and only once."""
    shared = listener(tmp_path)
    first, second = object(), object()
    shared.connections |= {first, second}
    fired: list[str] = []
    shared.when_idle().addCallback(lambda _: fired.append("a"))
    shared.when_idle().addCallback(lambda _: fired.append("b"))
    shared.connection_ended(first)
    assert fired == []
    shared.connection_ended(second)
    assert fired == ["a", "b"]
    # A connection ending twice (or a later one) finds no waiter to wake again.
    shared.connection_ended(second)
    assert fired == ["a", "b"]


def test_the_gate_reads_the_settings_in_force(tmp_path: Path) -> None:
    """max_connections follows a reload; without TLS none is offered or required."""
    shared = listener(tmp_path, Settings(str(tmp_path), max_connections=3))
    assert shared.max_connections == 3
    shared.settings = dataclasses.replace(shared.settings, max_connections=7)
    assert shared.max_connections == 7
    assert shared.tls_offered is False
    assert shared.require_client_cert is False


def test_one_upstream_endpoint_until_the_upstream_changes(tmp_path: Path) -> None:
    """Sessions share one endpoint; a reload that moves the upstream makes a new one."""
    shared = listener(tmp_path, Settings(str(tmp_path), upstream=Upstream("/run/postgresql", 5432)))
    endpoint = shared.upstream_endpoint()
    assert shared.upstream_endpoint() is endpoint
    shared.settings = dataclasses.replace(
        shared.settings, upstream=Upstream("/run/postgresql", 5433)
    )
    assert shared.upstream_endpoint() is not endpoint
