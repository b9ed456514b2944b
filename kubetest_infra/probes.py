"""Service checks from the test's side: an HTTP status or an open TCP port, polled until a deadline.

These run after the workload is ready (:mod:`kubetest_infra.wait`), through the same path tests use
(a host port mapped to a NodePort), so "ready" means "answers where the tests will call it".
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from kubetest_infra.errors import KtiError

POLL_INTERVAL = 0.25
HTTP_TIMEOUT = 3.0


class ServiceCheckError(KtiError):
    """A service's HTTP/TCP readiness check did not pass."""


def http_status(url: str, timeout: float = HTTP_TIMEOUT) -> int:
    """The HTTP status of a GET (redirects not followed); OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback, our own URL
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def wait_http(url: str, status: int, *, deadline: float, service: str, hint: str,
              cancelled: threading.Event | None = None) -> None:
    def probe() -> str | None:
        code = http_status(url)
        return None if code == status else f"HTTP {code}"

    poll(probe, deadline, f"service {service}: {url} did not answer {status}", hint, cancelled)


def wait_tcp(host: str, port: int, *, deadline: float, service: str, hint: str,
             cancelled: threading.Event | None = None) -> None:
    def probe() -> str | None:
        with socket.create_connection((host, port), timeout=2):
            return None

    poll(probe, deadline, f"service {service}: {host}:{port} refused connections", hint, cancelled)


def poll(probe: Callable[[], str | None], deadline: float, failure: str, hint: str,
         cancelled: threading.Event | None = None) -> None:
    """Call ``probe`` every :data:`POLL_INTERVAL` s until it returns None (ready) or the deadline passes."""
    last = "not tried"
    while True:
        if cancelled is not None and cancelled.is_set():
            raise ServiceCheckError(f"{failure}: interrupted", hint="the run was interrupted")
        try:
            outcome = probe()
        except OSError as exc:
            outcome = str(exc)
        if outcome is None:
            return
        last = outcome
        if time.monotonic() + POLL_INTERVAL >= deadline:
            raise ServiceCheckError(f"{failure} (last: {last})", hint=hint)
        time.sleep(POLL_INTERVAL)
