"""
Tests for pgtls.server.metrics: the HTTP endpoint ``pgtls.metrics_listen``
asks for, at start and in makeService.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from doors import (
    TLS13,
    Pki,
    write_datadir,
)
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.testing import MemoryReactor
from twisted.web.server import Site
from twisted.web.wsgi import WSGIResource

from pgtls.core.conf import Settings
from pgtls.relay.counters import Metrics
from pgtls.server.loader import StartupError, load_server_config, server_endpoint_problem
from pgtls.server.metrics import MetricsService, metrics_service
from pgtls.server.tap import Options, makeService

CIPHER = TLS13.cipher


# -- the service -------------------------------------------------------------


def make_service(path: Path, pki: Pki, settings: Sequence[str]) -> MultiService:
    datadir = write_datadir(path, pki, ssl=False, settings=settings)
    options = Options()
    options.parseOptions(["-D", datadir])
    return makeService(options)


def test_metrics_service_off_by_default() -> None:
    """pgtls.metrics_listen = '' (the default): no service."""
    assert metrics_service(MemoryReactor(), Settings("/data")) is None


def test_metrics_service_listens_on_its_endpoint() -> None:
    """pgtls.metrics_listen is a server endpoint string, bound at privileged start."""
    reactor = MemoryReactor()
    service = metrics_service(
        reactor, Settings("/data", metrics_listen="tcp:9187:interface=127.0.0.1")
    )
    assert service is not None
    service.privilegedStartService()
    ((port, factory, _backlog, interface),) = reactor.tcpServers
    assert (port, interface) == (9187, "127.0.0.1")
    assert isinstance(factory, Site)
    # prometheus_client's Twisted resource is a WSGI application.
    assert isinstance(factory.resource.getStaticEntity(b"metrics"), WSGIResource)
    assert service.port is not None
    service.startService()
    stopping = service.stopService()
    assert service.port is None
    assert stopping.called


@pytest.mark.parametrize("description", ["9187", "tcp:abc", "tcp:1:colour=blue", "bogus:1"])
def test_bad_endpoint_string_stops_the_start(description: str) -> None:
    """A value that is not an endpoint string is a start-up error naming the setting."""
    with pytest.raises(StartupError) as raised:
        metrics_service(MemoryReactor(), Settings("/data", metrics_listen=description))
    assert str(raised.value) == (
        f'invalid value for parameter "pgtls.metrics_listen": "{description}": '
        "not a server endpoint string (write one such as tcp:9187:interface=127.0.0.1)"
    )


@pytest.mark.parametrize("description", ["9187", "tcp:abc", "tcp:1:colour=blue", "bogus:1"])
def test_bad_endpoint_string_is_a_load_error_at_its_line(
    tmp_path: Path, pki: Pki, description: str
) -> None:
    """
    The load parses pgtls.metrics_listen (without listening): a bad one is
    a start-up error at its file and line, in our words, not Python's.
    """
    settings = ["log_connections = on", f"pgtls.metrics_listen = '{description}'"]
    datadir = write_datadir(tmp_path / "data", pki, ssl=False, settings=settings)
    with pytest.raises(StartupError) as raised:
        load_server_config(datadir)
    assert str(raised.value) == (
        f"{datadir}/postgresql.conf:3: invalid value for parameter "
        f'"pgtls.metrics_listen": "{description}": not a server endpoint string '
        "(write one such as tcp:9187:interface=127.0.0.1)"
    )
    assert "invalid literal" not in str(raised.value)


def test_bad_endpoint_string_on_the_command_line(tmp_path: Path, pki: Pki) -> None:
    """-c pgtls.metrics_listen=...: the error is at ``command line``, as other overrides'."""
    datadir = write_datadir(tmp_path / "data", pki, ssl=False)
    with pytest.raises(StartupError) as raised:
        load_server_config(datadir, {"pgtls.metrics_listen": "tcp:abc"})
    assert str(raised.value).startswith(
        'command line: invalid value for parameter "pgtls.metrics_listen": "tcp:abc": '
    )


def test_good_endpoint_string_loads(tmp_path: Path, pki: Pki) -> None:
    """A valid endpoint string loads, and nothing listens while loading."""
    settings = ["pgtls.metrics_listen = 'tcp:9187:interface=127.0.0.1'"]
    datadir = write_datadir(tmp_path / "data", pki, ssl=False, settings=settings)
    assert load_server_config(datadir).settings.metrics_listen == "tcp:9187:interface=127.0.0.1"


def test_endpoint_problems() -> None:
    """Twisted's parser decides; the words are ours (an ssl: endpoint reads its files)."""
    assert server_endpoint_problem("unix:/run/pgtls-metrics.sock") is None
    assert server_endpoint_problem("tcp6:9187:interface=\\:\\:1") is None
    missing = server_endpoint_problem("ssl:9187:privateKey=/nonexistent/k.pem")
    assert missing is not None and missing.startswith("not a usable endpoint: /nonexistent/k.pem")


class _Unbindable:
    """A server endpoint whose listen() fails, as a port in use does."""

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        return defer.fail(CannotListenError("127.0.0.1", 9187, OSError("in use")))


def test_unbindable_endpoint_stops_the_start() -> None:
    """A port that cannot be bound stops pgtls with one line."""
    service = MetricsService(MemoryReactor(), "tcp:9187", Metrics())
    service.endpoint = _Unbindable()
    with pytest.raises(SystemExit) as raised:
        service.privilegedStartService()
    assert str(raised.value).startswith("pgtls: could not listen for metrics on tcp:9187: ")


def test_make_service_serves_metrics_when_asked(tmp_path: Path, pki: Pki) -> None:
    """With pgtls.metrics_listen, makeService adds the metrics service, fed by the factory."""
    top = make_service(tmp_path, pki, ["pgtls.metrics_listen = 'tcp:0:interface=127.0.0.1'"])
    (service,) = [child for child in top if isinstance(child, MetricsService)]
    factories: set[Any] = {getattr(child, "factory", None) for child in top} - {None}
    assert [factory.metrics for factory in factories] == [service.metrics]


def test_make_service_without_metrics(tmp_path: Path, pki: Pki) -> None:
    """By default there is no metrics service and the factory keeps no metrics."""
    top = make_service(tmp_path, pki, [])
    assert not [child for child in top if isinstance(child, MetricsService)]
    factories: set[Any] = {getattr(child, "factory", None) for child in top} - {None}
    assert [factory.metrics for factory in factories] == [None]


def test_make_service_bad_metrics_listen(tmp_path: Path, pki: Pki) -> None:
    """A bad pgtls.metrics_listen stops the start with one pgtls line at its file and line."""
    with pytest.raises(SystemExit) as raised:
        make_service(tmp_path, pki, ["pgtls.metrics_listen = 'tcp:http'"])
    assert raised.value.code == (
        f"pgtls: {tmp_path}/postgresql.conf:2: invalid value for parameter "
        '"pgtls.metrics_listen": "tcp:http": not a server endpoint string '
        "(write one such as tcp:9187:interface=127.0.0.1)"
    )
