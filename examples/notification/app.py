"""Notification: delivers notifications and records each delivery as an audit event in DataStorage.

    POST /api/v1/notifications        {recipient, channel, message, correlation_id} → 201 {notification_id, status}
    GET  /api/v1/notifications/ID     the notification and its audit trail, read back from DataStorage
    GET  /health                      process is up
    GET  /readyz                      DataStorage answers its /readyz (503 otherwise)

A delivery that DataStorage did not record is not acknowledged (503): the audit trail is the
contract kubernaut's Notification service has with DataStorage. Standard library only. Configuration
from the environment: DATASTORAGE_URL (default http://datastorage:8080), PORT.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlparse

DATASTORAGE = os.environ.get("DATASTORAGE_URL", "http://datastorage:8080").rstrip("/")
CHANNELS = ("email", "slack", "console")
SENT: dict[str, dict[str, Any]] = {}
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


def check(body: Any) -> str:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    missing = [f for f in ("recipient", "channel", "message", "correlation_id") if not body.get(f)]
    if missing:
        return f"missing field(s): {', '.join(missing)}"
    if body["channel"] not in CHANNELS:
        return f"channel must be one of {', '.join(CHANNELS)}"
    return ""


class Handler(BaseHTTPRequestHandler):
    server_version = "notification/1.0"

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
        if path == "/health":
            self.reply(200, {"status": "healthy"})
        elif path == "/readyz":
            try:
                status, _ = call("GET", "/readyz")
            except OSError as exc:
                self.reply(503, {"status": "not ready", "reason": f"datastorage: {exc}"})
                return
            self.reply(200 if status == 200 else 503, {"status": "ready" if status == 200 else "not ready"})
        elif path.startswith("/api/v1/notifications/"):
            nid = path.rsplit("/", 1)[-1]
            with LOCK:
                sent = SENT.get(nid)
            if sent is None:
                self.reply(404, {"detail": f"no notification {nid}"})
                return
            status, found = call("GET", f"/api/v1/audit/events?correlation_id={quote(sent['correlation_id'])}")
            trail = [e for e in (found or {}).get("data", []) if e.get("resource_id") == nid] if status == 200 else []
            self.reply(200, {**sent, "audit": trail})
        else:
            self.reply(404, {"detail": f"no route for GET {path}"})

    def do_POST(self) -> None:
        if urlparse(self.path).path != "/api/v1/notifications":
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
        nid = str(uuid.uuid4())
        print(f"[{body['channel']}] to {body['recipient']}: {body['message']}", flush=True)  # the delivery
        event = {"event_type": "notification.message.sent", "event_category": "notification",
                 "event_action": "sent", "event_outcome": "success", "correlation_id": body["correlation_id"],
                 "resource_id": nid, "actor_id": "notification", "event_data": {"channel": body["channel"],
                                                                                 "recipient": body["recipient"]}}
        try:
            status, stored = call("POST", "/api/v1/audit/events", event)
        except OSError as exc:
            self.reply(503, {"detail": f"datastorage unreachable: {exc}"})
            return
        if status not in (201, 202):
            self.reply(503, {"detail": f"datastorage refused the audit event: {status} {stored}"})
            return
        sent = {"notification_id": nid, "status": "sent", "channel": body["channel"],
                "correlation_id": body["correlation_id"], "audit_event_id": stored["event_id"]}
        with LOCK:
            SENT[nid] = sent
        self.reply(201, sent)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print(f"notification listening on :{port}, datastorage {DATASTORAGE}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()  # noqa: S104
