"""The console: serves the live topology page on `console.host`, behind Envoy's /topology
route.

GET /topology           the page (it redraws itself every refresh_s)
GET /topology/svg       the diagram alone, what the page fetches to redraw
GET /topology/view.json the figures the diagram draws

A background thread scrapes every layer every refresh_s; requests only read its latest view.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.config.console import ConsoleConfig
from services.console import layers, page
from services.console.observe import Observer

LOGGER = logging.getLogger(__name__)


class Console:
    """The latest view, refreshed by poll() from a background thread."""

    def __init__(self, observer: Observer, config: ConsoleConfig) -> None:
        self.config = config
        self._observer = observer
        self._view: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def poll(self) -> None:
        self._observer.poll()
        fresh = layers.view(self._observer)
        with self._lock:
            self._view = fresh

    def view(self) -> dict[str, Any]:
        with self._lock:
            return self._view

    def run(self) -> None:
        while not self._stop.wait(self.config.refresh_s):
            try:
                self.poll()
            except Exception:  # a bad scrape must not end the page's refresh
                LOGGER.exception("refreshing the topology failed")

    def stop(self) -> None:
        self._stop.set()


def _handler(console: Console) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            view = console.view()
            if path == "/topology":
                self._send(page.render_page(view, console.config.refresh_s), "text/html")
            elif path == "/topology/svg":
                self._send(page.render_svg(view), "image/svg+xml")
            elif path == "/topology/view.json":
                self._send(json.dumps(view), "application/json")
            else:
                self.send_error(404, "try /topology")

        def _send(self, body: str, content_type: str) -> None:
            data = body.encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            LOGGER.debug(format, *args)

    return Handler


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def build_server(console: Console, host: str, port: int) -> tuple[ThreadingHTTPServer, int]:
    """The HTTP server on host:port (port 0 picks one; an IPv6 address, `::` included, binds
    IPv6) and its bound port; console.poll() ran once."""
    console.poll()
    kind = _IPv6Server if ":" in host else ThreadingHTTPServer
    server = kind((host, port), _handler(console))
    server.daemon_threads = True
    return server, int(server.server_address[1])
