"""A static file server on 127.0.0.1, for the offline demo corpus and the tests.

It plays "the web" for img2dataset: files from a folder, plus optional per-path response headers
(``X-Robots-Tag: noai``) so opt-out handling is exercised over real HTTP.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar


class _Handler(SimpleHTTPRequestHandler):
    extra_headers: ClassVar[dict[str, dict[str, str]]] = {}

    def end_headers(self) -> None:
        for name, value in self.extra_headers.get(self.path.split("?")[0], {}).items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@contextmanager
def serve_directory(
    folder: Path, port: int = 0, headers: dict[str, dict[str, str]] | None = None, host: str = "127.0.0.1"
) -> Iterator[str]:
    """Serve ``folder`` until the block exits; yields the base URL (no trailing slash)."""
    handler = type("Handler", (_Handler,), {"extra_headers": dict(headers or {})})
    server = ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="dedup-serve", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
