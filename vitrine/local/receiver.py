"""A webhook receiver on 127.0.0.1 for tests and benchmarks: records what it is sent, answers
what it is told to, and can go down and come back on the same port."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from common.webhooks.signing import DELIVERY_HEADER, SIGNATURE_HEADER, verify


@dataclass(frozen=True)
class Received:
    delivery_id: int
    event: str
    body: bytes
    headers: dict[str, str]
    answered: int  # the status this receiver gave it
    at: float  # time.time() when it arrived

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog (5) resets connections when a sender posts 16 at once.
    request_queue_size = 128


class WebhookReceiver:
    """`status` is the answer to every POST (200 until changed); `stop()` closes the port
    (connections refused) and `start()` opens it again, on the same port."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret  # when set, a POST with a bad signature is answered 401
        self.status = 200
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def delivered(self) -> list[Received]:
        """What it accepted (2xx), in arrival order."""
        with self.lock:
            return [r for r in self.received if 200 <= r.answered < 300]

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                at = time.time()
                headers = {key: value for key, value in self.headers.items()}
                answer = receiver.status
                signed = headers.get(SIGNATURE_HEADER, "")
                if receiver.secret is not None and not verify(receiver.secret, signed, body):
                    answer = 401
                with receiver.lock:
                    receiver.received.append(
                        Received(int(headers.get(DELIVERY_HEADER, "0")), headers.get("Vitrine-Event", ""),
                                 body, headers, answer, at)
                    )  # fmt: skip
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = Server(("127.0.0.1", self.port), Handler)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
