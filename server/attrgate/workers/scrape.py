"""The parent's /metrics: on each scrape, every worker's /metrics (on its loopback port) fetched
at once and merged (aggregate.py). A worker that does not answer fails the scrape (503): a sum
without it would look like counters going backwards, which Prometheus reads as a restart."""

from __future__ import annotations

import http.server
import logging
import threading
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from attrgate.config import ConfigError, split_host_port
from attrgate.workers.aggregate import merge

log = logging.getLogger("attrgate.workers")
FETCH_TIMEOUT = 5.0  # seconds a worker has to answer (Prometheus's scrape timeout: 10 s)
WORKERS_GAUGE = (
    "# HELP attrgate_workers worker processes serving behind this parent (serve --workers)\n"
    "# TYPE attrgate_workers gauge\n"
    "attrgate_workers {}\n"
)


class MetricsServer:
    """`ports()`: the workers' metrics ports, or None while they cannot all be scraped
    (starting, one gone)."""

    def __init__(self, address: str, ports: Callable[[], Sequence[int] | None]) -> None:
        host, port = split_host_port(address)
        self._ports = ports
        self._fetch = ThreadPoolExecutor(thread_name_prefix="attrgate-scrape")
        handler = type("Handler", (_Handler,), {"scrape": self.scrape})
        try:
            self._http = http.server.ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {address}: {exc.strerror}") from None
        self._http.daemon_threads = True
        self.port = int(self._http.server_address[1])
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="attrgate-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def scrape(self) -> bytes | None:
        """The merged exposition, or None when not every worker answers."""
        ports = self._ports()
        if not ports:
            return None
        try:
            texts = list(self._fetch.map(_fetch, ports, timeout=FETCH_TIMEOUT + 1))
        except (OSError, TimeoutError) as exc:
            log.warning("a worker's /metrics did not answer: %s", exc)
            return None
        return merge(texts, WORKERS_GAUGE.format(len(ports)))

    def close(self) -> None:
        if self._thread.is_alive():
            self._http.shutdown()
        self._http.server_close()
        self._fetch.shutdown(wait=False, cancel_futures=True)


def _fetch(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:
        return str(answer.read().decode())


class _Handler(http.server.BaseHTTPRequestHandler):
    scrape: Callable[[], bytes | None]

    def do_GET(self) -> None:
        body = type(self).scrape()
        if body is None:
            self._answer(503, b"not every worker answers now\n", "text/plain; charset=utf-8")
        else:
            self._answer(200, body, CONTENT_TYPE_LATEST)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # no line per scrape
