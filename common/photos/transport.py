"""An HTTP transport that connects only to the address the URL check approved.

The check (`urls.approve_url`) resolves the host and refuses private addresses; were the client
to resolve the name again, a DNS server answering a public address first and 127.0.0.1 second
(DNS rebinding) would send the request where nothing was checked. Here the approved address is
pinned for the host before each request, and the connection goes to it: the URL, the `Host`
header, TLS's server name and certificate check all keep the host name. A host with no pin is
never connected to.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx


class PinnedBackend(httpcore.SyncBackend):
    """Opens TCP connections to the pinned address of a (host, port), never to a fresh lookup."""

    def __init__(self) -> None:
        self._pins: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    def pin(self, host: str, port: int, address: str) -> None:
        with self._lock:
            self._pins[(host.lower(), port)] = address

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        with self._lock:
            address = self._pins.get((host.lower(), port))
        if address is None:
            raise httpcore.ConnectError(f"{host}:{port} was not checked before connecting")
        return super().connect_tcp(address, port, timeout, local_address, socket_options)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport (pooling, TLS, HTTP/1.1) over a `PinnedBackend`."""

    def __init__(self) -> None:
        super().__init__()
        self.backend = PinnedBackend()
        # The same pool httpx makes, with the backend in place of the system resolver's.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=self.backend,
        )


class PhotoClient(httpx.Client):
    """An httpx client over a `PinnedTransport`; `pin` says where the next request may connect."""

    def __init__(self, timeout: float) -> None:
        self.pinned = PinnedTransport()
        super().__init__(timeout=timeout, follow_redirects=False, transport=self.pinned)

    def pin(self, host: str, port: int, address: str) -> None:
        self.pinned.backend.pin(host, port, address)
