"""`vitrine serve --proxy-headers` behind a TLS proxy: X-Forwarded-Proto is believed only from the
addresses in VITRINE_FORWARDED_ALLOW_IPS; then the session cookie is Secure and HSTS is sent."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

HTTPS = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}


@contextmanager
def serving(env: dict[str, str], allow: str) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**env, "VITRINE_SESSION_SECRET": "s" * 32, "VITRINE_FORWARDED_ALLOW_IPS": allow}
    process = subprocess.Popen(
        [sys.executable, "-m", "vitrine.cli", "serve", "--port", str(port), "--proxy-headers"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
                assert time.monotonic() < deadline, "vitrine serve did not start"
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_a_trusted_proxy_makes_cookies_secure_and_sends_hsts(
    child_env: dict[str, str], clean_db: None
) -> None:
    # The proxy is this host's loopback here; in compose it is another container of the network.
    with serving(child_env, "127.0.0.0/8") as url:
        proxied = httpx.get(f"{url}/sign-in", headers=HTTPS, timeout=10)
        plain = httpx.get(f"{url}/sign-in", timeout=10)
    assert proxied.headers["strict-transport-security"] == "max-age=31536000"
    assert "secure" in proxied.headers["set-cookie"].lower()
    assert "strict-transport-security" not in plain.headers
    assert "secure" not in plain.headers["set-cookie"].lower()


def test_forwarded_headers_from_an_untrusted_address_are_ignored(
    child_env: dict[str, str], clean_db: None
) -> None:
    with serving(child_env, "192.0.2.1") as url:
        spoofed = httpx.get(f"{url}/sign-in", headers=HTTPS, timeout=10)
    assert "strict-transport-security" not in spoofed.headers
    assert "secure" not in spoofed.headers["set-cookie"].lower()
