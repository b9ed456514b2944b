"""DataStorage: a small audit-event service with kubernaut DataStorage's API shape.

    POST /api/v1/audit/events   201 stored (202 queued to Redis when PostgreSQL is down); RFC 7807 on bad input
    GET  /api/v1/audit/events   ?correlation_id=&event_type=&limit=
    GET  /health                process is up
    GET  /readyz                PostgreSQL reachable and the migrations applied (503 otherwise)

Standard library plus psycopg2 and redis (Debian: python3-psycopg2, python3-redis). Configuration
from the environment: DATABASE_URL, REDIS_ADDR (host:port), PORT.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import psycopg2
import psycopg2.extras
import redis

OUTCOMES = ("success", "failure", "pending")
REQUIRED = ("event_type", "event_category", "event_action", "event_outcome", "correlation_id")
DLQ_KEY = "audit:dlq"
PROBLEM_BASE = "https://kubernaut.ai/problems/"


def db_connect() -> Any:
    return psycopg2.connect(os.environ["DATABASE_URL"], connect_timeout=3)


def redis_client() -> redis.Redis:
    host, _, port = os.environ.get("REDIS_ADDR", "redis:6379").partition(":")
    return redis.Redis(host=host, port=int(port or 6379), socket_timeout=3, socket_connect_timeout=3)


def migrations_applied() -> str | None:
    """When the schema migration ran (ISO time), or None when it has not."""
    with db_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.schema_migrations')")
        if cur.fetchone()[0] is None:
            return None
        cur.execute("SELECT applied_at FROM schema_migrations ORDER BY version DESC LIMIT 1")
        row = cur.fetchone()
        return row[0].astimezone(timezone.utc).isoformat() if row else None


def insert_event(event: dict[str, Any]) -> None:
    with db_connect() as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO audit_events (event_id, event_timestamp, event_type, event_category, event_action,"
            " event_outcome, correlation_id, actor_id, resource_id, event_data)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (event["event_id"], event["event_timestamp"], event["event_type"], event["event_category"],
             event["event_action"], event["event_outcome"], event["correlation_id"], event.get("actor_id"),
             event.get("resource_id"), json.dumps(event.get("event_data") or {})))


def query_events(params: dict[str, list[str]]) -> list[dict[str, Any]]:
    clauses, args = [], []
    for key in ("correlation_id", "event_type", "event_outcome"):
        if params.get(key):
            clauses.append(f"{key} = %s")
            args.append(params[key][0])
    limit = min(int(params.get("limit", ["100"])[0]), 1000)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    with db_connect() as conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        # column names come from the fixed tuple above; values are bound parameters
        cur.execute(f"SELECT * FROM audit_events {where} ORDER BY event_timestamp DESC LIMIT %s",  # noqa: S608
                    (*args, limit))
        rows = cur.fetchall()
    for row in rows:
        row["event_id"] = str(row["event_id"])
        row["event_timestamp"] = row["event_timestamp"].astimezone(timezone.utc).isoformat()
    return rows


def validate(body: Any) -> tuple[dict[str, Any] | None, str]:
    if not isinstance(body, dict):
        return None, "request body must be a JSON object"
    missing = [f for f in REQUIRED if not isinstance(body.get(f), str) or not body.get(f)]
    if missing:
        return None, f"missing or empty required field(s): {', '.join(missing)}"
    if body["event_outcome"] not in OUTCOMES:
        return None, f"event_outcome must be one of {', '.join(OUTCOMES)}, got {body['event_outcome']!r}"
    if "event_data" in body and not isinstance(body["event_data"], dict):
        return None, "event_data must be a JSON object"
    event = dict(body)
    event["event_id"] = str(uuid.uuid4())
    event["event_timestamp"] = body.get("event_timestamp") or datetime.now(timezone.utc).isoformat()
    return event, ""


def drain_dlq() -> None:
    """Move queued events into PostgreSQL once it is back."""
    while True:
        time.sleep(2)
        try:
            r = redis_client()
            while (raw := r.lindex(DLQ_KEY, -1)) is not None:
                insert_event(json.loads(raw))
                r.rpop(DLQ_KEY)
        except Exception:  # noqa: S112 - database or redis still down: try again later
            continue


class Handler(BaseHTTPRequestHandler):
    server_version = "datastorage/1.0"

    def log_message(self, fmt: str, *args: Any) -> None:
        print(f"{self.address_string()} {fmt % args}", flush=True)

    def send_json(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def problem(self, status: int, kind: str, title: str, detail: str) -> None:
        self.send_json(status, {"type": PROBLEM_BASE + kind, "title": title, "status": status, "detail": detail,
                                "instance": urlparse(self.path).path}, "application/problem+json")

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/health":
            self.send_json(200, {"status": "healthy"})
        elif url.path == "/readyz":
            try:
                applied = migrations_applied()
            except Exception as exc:
                self.send_json(503, {"status": "not ready", "reason": f"database: {exc}".strip()})
                return
            if applied is None:
                self.send_json(503, {"status": "not ready", "reason": "migrations not applied"})
            else:
                self.send_json(200, {"status": "ready", "migrations_applied_at": applied})
        elif url.path == "/api/v1/audit/events":
            try:
                rows = query_events(parse_qs(url.query))
            except ValueError as exc:
                self.problem(400, "validation-error", "Validation Error", str(exc))
                return
            except Exception as exc:
                self.problem(503, "service-unavailable", "Service Unavailable", f"database: {exc}")
                return
            self.send_json(200, {"data": rows, "pagination": {"total": len(rows)}})
        else:
            self.problem(404, "not-found", "Not Found", f"no route for GET {url.path}")

    def do_POST(self) -> None:
        url = urlparse(self.path)
        if url.path != "/api/v1/audit/events":
            self.problem(404, "not-found", "Not Found", f"no route for POST {url.path}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except json.JSONDecodeError as exc:
            self.problem(400, "validation-error", "Validation Error", f"invalid JSON: {exc}")
            return
        event, error = validate(body)
        if event is None:
            self.problem(400, "validation-error", "Validation Error", error)
            return
        try:
            insert_event(event)
            self.send_json(201, {"event_id": event["event_id"], "status": "stored"})
        except psycopg2.OperationalError:
            try:
                redis_client().lpush(DLQ_KEY, json.dumps(event))
            except Exception as exc:
                self.problem(503, "service-unavailable", "Service Unavailable", f"database and queue down: {exc}")
                return
            self.send_json(202, {"event_id": event["event_id"], "status": "queued"})


if __name__ == "__main__":
    threading.Thread(target=drain_dlq, daemon=True).start()
    port = int(os.environ.get("PORT", "8080"))
    print(f"datastorage listening on :{port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()  # noqa: S104
