"""A real HTTP server on 127.0.0.1 (a free port) for transport tests.

It records every request (method, path, headers, body, the client's port) and answers what a
handler returns: a queue of scripted replies first, then `handler(request)`, by default 200 {}.
It counts requests in flight (and their maximum) to check concurrency limits.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lowercased names
    body: bytes
    client_port: int

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = field(default_factory=dict)  # JSON-encoded unless bytes or str
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    drop: bool = False  # close the connection without any answer


Handler = Callable[[Recorded], Reply]


class HttpSink:
    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda _request: Reply())
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, before the handler."""
        with self._lock:
            self._script.extend(replies)

    @property
    def connections(self) -> set[int]:
        return {r.client_port for r in self.requests}

    def start(self) -> HttpSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _answer(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scripted = self._script.popleft() if self._script else None
        return scripted or self.handler(request)

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse shows

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Recorded(self.command, self.path,
                                   {k.lower(): v for k, v in self.headers.items()}, body,
                                   self.client_address[1])
                reply = sink._answer(request)
                try:
                    if reply.delay:
                        time.sleep(reply.delay)
                    if reply.drop:
                        self.close_connection = True
                        return
                    if isinstance(reply.body, bytes):
                        data = reply.body
                    elif isinstance(reply.body, str):
                        data = reply.body.encode()
                    else:
                        data = json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    headers = {"Content-Type": "application/json", **reply.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    sink._done()

            do_POST = _handle
            do_GET = _handle
            do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return _Handler


@contextmanager
def http_sink(handler: Handler | None = None) -> Iterator[HttpSink]:
    sink = HttpSink(handler).start()
    try:
        yield sink
    finally:
        sink.stop()


def free_port() -> int:
    """A port nothing listens on (for an unreachable server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
