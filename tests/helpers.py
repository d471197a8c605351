"""Bad and good image bytes made from real photos, and a tiny local HTTP image server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO

from PIL import Image

from tests.conftest import FLIPKART


def real_jpeg(index: int = 0) -> bytes:
    return sorted((FLIPKART / "images").glob("*.jpg"))[index].read_bytes()


def truncated_jpeg() -> bytes:
    data = real_jpeg(1)
    return data[: len(data) // 2]


def decompression_bomb() -> bytes:
    """A few KB of PNG that declares 12,000 × 12,000 pixels (144 M)."""
    buffer = BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def animated_gif() -> bytes:
    buffer = BytesIO()
    frames = [Image.new("RGB", (32, 32), color) for color in ("red", "blue")]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


@contextmanager
def serve_bytes(files: dict[str, bytes]) -> Iterator[str]:
    """Serve `files` at http://127.0.0.1:PORT/<name>; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
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
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
