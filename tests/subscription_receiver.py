"""A real HTTP receiver for subscription tests: a threaded http.server on 127.0.0.1.

It records every notification (arrival time, headers, body, the parsed Bundle) and
can be switched between behaviours: ``ok`` (200), ``fail`` (500), ``slow`` (sleeps
longer than the gateway's timeout, then 200), ``down`` (the port is closed, so
connections are refused) and back ``up`` on the same port.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Received:
    def __init__(self, at: float, headers: dict[str, str], body: bytes) -> None:
        self.at = at
        self.headers = headers
        self.body = body
        self.bundle: dict[str, Any] = json.loads(body)

    @property
    def status(self) -> dict[str, Any]:
        return self.bundle["entry"][0]["resource"]

    def param(self, name: str) -> Any:
        for p in self.status["parameter"]:
            if p["name"] == name:
                return next(v for k, v in p.items() if k.startswith("value"))
        return None

    @property
    def kind(self) -> str:
        return self.param("type")

    @property
    def event_numbers(self) -> list[int]:
        out = []
        for p in self.status["parameter"]:
            if p["name"] == "notification-event":
                out += [int(part["valueString"]) for part in p["part"] if part["name"] == "event-number"]
        return out

    @property
    def focuses(self) -> list[str]:
        out = []
        for p in self.status["parameter"]:
            if p["name"] == "notification-event":
                out += [part["valueReference"]["reference"] for part in p["part"] if part["name"] == "focus"]
        return out


class Receiver:
    def __init__(self, mode: str = "ok", slow_seconds: float = 3.0) -> None:
        self.mode = mode
        self.slow_seconds = slow_seconds
        self.received: list[Received] = []
        self.hits = 0
        self._lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: "down" really refuses

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.hits += 1
                mode = receiver.mode
                if mode == "slow":
                    time.sleep(receiver.slow_seconds)
                if mode == "fail":
                    self._answer(500, b"broken")
                    return
                with receiver._lock:
                    receiver.received.append(Received(time.time(), dict(self.headers.items()), body))
                self._answer(200, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler

    def up(self) -> None:
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.down()

    def notifications(self, kind: str = "event-notification") -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.kind == kind]

    def event_numbers(self) -> list[int]:
        return [n for r in self.notifications() for n in r.event_numbers]

    def wait_for(self, predicate, timeout: float = 15.0) -> bool:  # noqa: ANN001
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return predicate(self)
