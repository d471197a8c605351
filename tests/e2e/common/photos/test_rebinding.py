"""The fetch connects to the address its check approved: a DNS answer that changes between the
check and the connection (rebinding) cannot send the request anywhere unchecked."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from common.photos.failures import FailureReason, ImageRejected
from common.photos.fetch import fetch_http
from common.settings import load_settings
from tests.helpers import real_jpeg

# A public address (documentation's example.com block is not global; this one is).
PUBLIC = "93.184.215.14"


@contextmanager
def recording_server() -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """A loopback image host that records each request's path and Host header."""
    hits: list[tuple[str, str]] = []
    body = real_jpeg()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append((self.path, self.headers.get("Host", "")))
            if self.path == "/moved":
                self.send_response(302)
                self.send_header(
                    "Location", f"http://elsewhere.pin.test:{self.server.server_address[1]}/a.jpg"
                )
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), hits
    finally:
        server.shutdown()
        server.server_close()


def resolver(answers: dict[str, list[str]]) -> Any:
    """getaddrinfo answering each name of `answers` with its next address (the last one repeats)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        queue = answers[host]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

    return getaddrinfo


def test_a_name_that_rebinds_to_loopback_after_the_check_is_never_fetched_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with recording_server() as (port, hits):
        # Public when checked, loopback for whoever asks next.
        monkeypatch.setattr(socket, "getaddrinfo", resolver({"photos.rebind.test": [PUBLIC, "127.0.0.1"]}))
        with pytest.raises(ImageRejected) as caught:
            fetch_http(f"http://photos.rebind.test:{port}/a.jpg", load_settings(fetch_timeout=2))
        assert caught.value.reason in (FailureReason.fetch_failed, FailureReason.fetch_timeout)
        assert hits == []  # the loopback host saw no request


def test_the_checked_address_is_used_with_the_host_name_kept_and_redirects_checked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with recording_server() as (port, hits):
        names = {"photos.pin.test": ["127.0.0.1"], "elsewhere.pin.test": ["127.0.0.1"]}
        monkeypatch.setattr(socket, "getaddrinfo", resolver(names))
        settings = load_settings(fetch_private_hosts=f"photos.pin.test:{port}")
        assert fetch_http(f"http://photos.pin.test:{port}/a.jpg", settings) == real_jpeg()
        assert hits == [("/a.jpg", f"photos.pin.test:{port}")]
        # A redirect to another name is checked afresh: private, and not allowed, so not followed.
        with pytest.raises(ImageRejected) as caught:
            fetch_http(f"http://photos.pin.test:{port}/moved", settings)
        assert caught.value.reason == FailureReason.private_address
        assert hits[-1] == ("/moved", f"photos.pin.test:{port}")
