"""Gateway: accepts alert signals, deduplicates them and records each decision in DataStorage.

    POST /api/v1/signals                 {alertname, namespace, severity} → 201 {correlation_id, status: accepted}
                                         (the same alert again within the window: 202 {status: deduplicated})
    GET  /api/v1/signals/CID/audit       the audit events DataStorage holds for that correlation id
    GET  /health                         process is up
    GET  /readyz                         DataStorage answers its /readyz (503 otherwise)

Every accepted or deduplicated signal is an audit event (kubernaut's Gateway writes
``gateway.signal.received`` / ``gateway.signal.deduplicated`` to DataStorage). Standard library only.
Configuration from the environment: DATASTORAGE_URL (default http://datastorage:8080), PORT,
DEDUP_SECONDS (default 300).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlparse

DATASTORAGE = os.environ.get("DATASTORAGE_URL", "http://datastorage:8080").rstrip("/")
DEDUP_SECONDS = float(os.environ.get("DEDUP_SECONDS", "300"))
SEVERITIES = ("critical", "warning", "info")
SEEN: dict[str, tuple[str, float]] = {}  # fingerprint → (correlation id, first seen)
LOCK = threading.Lock()


def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(DATASTORAGE + path, data=data, method=method,  # noqa: S310 - in-cluster URL
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def fingerprint(signal: dict[str, Any]) -> str:
    key = f"{signal['alertname']}/{signal['namespace']}/{signal.get('resource', '')}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def check(body: Any) -> str:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    missing = [f for f in ("alertname", "namespace", "severity") if not body.get(f)]
    if missing:
        return f"missing field(s): {', '.join(missing)}"
    if body["severity"] not in SEVERITIES:
        return f"severity must be one of {', '.join(SEVERITIES)}"
    return ""


class Handler(BaseHTTPRequestHandler):
    server_version = "gateway/1.0"

    def log_message(self, fmt: str, *args: Any) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)

    def reply(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        parts = path.strip("/").split("/")
        if path == "/health":
            self.reply(200, {"status": "healthy"})
        elif path == "/readyz":
            try:
                status, _ = call("GET", "/readyz")
            except OSError as exc:
                self.reply(503, {"status": "not ready", "reason": f"datastorage: {exc}"})
                return
            self.reply(200 if status == 200 else 503, {"status": "ready" if status == 200 else "not ready"})
        elif len(parts) == 5 and parts[:3] == ["api", "v1", "signals"] and parts[4] == "audit":
            status, found = call("GET", f"/api/v1/audit/events?correlation_id={quote(parts[3])}")
            self.reply(status, found)
        else:
            self.reply(404, {"detail": f"no route for GET {path}"})

    def do_POST(self) -> None:
        if urlparse(self.path).path != "/api/v1/signals":
            self.reply(404, {"detail": "no such route"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        except json.JSONDecodeError as exc:
            self.reply(400, {"detail": f"invalid JSON: {exc}"})
            return
        error = check(body)
        if error:
            self.reply(400, {"detail": error})
            return
        fp, now = fingerprint(body), time.monotonic()
        with LOCK:
            seen = SEEN.get(fp)
            duplicate = seen is not None and now - seen[1] < DEDUP_SECONDS
            cid = seen[0] if duplicate and seen else f"rr-{uuid.uuid4()}"
            if not duplicate:
                SEEN[fp] = (cid, now)
        action = "deduplicated" if duplicate else "received"
        event = {"event_type": f"gateway.signal.{action}", "event_category": "gateway", "event_action": action,
                 "event_outcome": "success", "correlation_id": cid, "actor_id": "gateway", "resource_id": fp,
                 "event_data": {"alertname": body["alertname"], "severity": body["severity"]}}
        try:
            status, stored = call("POST", "/api/v1/audit/events", event)
        except OSError as exc:
            self.reply(503, {"detail": f"datastorage unreachable: {exc}"})
            return
        if status not in (201, 202):
            self.reply(503, {"detail": f"datastorage refused the audit event: {status} {stored}"})
            return
        self.reply(202 if duplicate else 201, {"correlation_id": cid, "fingerprint": fp,
                                                "status": "deduplicated" if duplicate else "accepted"})


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"gateway listening on :{port}, datastorage {DATASTORAGE}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()  # noqa: S104
