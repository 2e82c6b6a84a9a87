"""
What the observability tests read from a running pgtls: its metrics
endpoint, scraped and parsed, and its JSON-lines log.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from pgtlsproc import PgtlsServer
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """GET /metrics and parse it with prometheus_client's own parser."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of ``name`` that is not zero, by its labels."""
    return {labels: v for (n, labels), v in samples.items() if n == name and v}


class JsonLoggedServer(PgtlsServer):
    """``twistd --logger=pgtls.logs.json ... pgtls``; its standard output goes to ``logfile``."""

    def command(self) -> list[str]:
        twistd = [arg for arg in super().command() if not arg.startswith("--logfile=")]
        twistd.insert(twistd.index("pgtls"), "--logger=pgtls.logs.json")
        # sh sends twistd's standard output to the file, then becomes twistd.
        return ["sh", "-c", 'exec "$@" >"$0"', str(self.logfile), *twistd]
