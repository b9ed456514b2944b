"""Kubernetes API clients with bounded requests.

The Python client waits forever on a request without ``_request_timeout``: a paused control plane
(or a half-open connection) would hang a run. Every client of this library comes from
:func:`api_client`, whose requests default to :data:`DEFAULT_TIMEOUT` (connect, read) seconds; long
watches pass a timeout of their own. A timed-out request raises, and the caller's retry or error
path says what was being done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import config

DEFAULT_TIMEOUT = (10.0, 60.0)  # connect, read (seconds)


def api_client(kubeconfig: str | Path, context: str | None = None,
               timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> Any:
    """An ``ApiClient`` for ``kubeconfig`` (never ``~/.kube/config``) whose requests are bounded."""
    api = config.new_client_from_config(config_file=str(kubeconfig), context=context)  # type: ignore[no-untyped-call]
    rest = api.rest_client
    original = rest.request

    def request(method: str, url: str, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return original(method, url, *args, _request_timeout=_request_timeout or timeout, **kwargs)

    rest.request = request
    return api
