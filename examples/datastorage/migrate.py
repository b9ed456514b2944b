"""Schema migrations for DataStorage (run once as a Job before the service starts)."""

from __future__ import annotations

import os
import sys
import time

import psycopg2

MIGRATIONS = [
    (1, """
CREATE TABLE IF NOT EXISTS audit_events (
    event_id UUID PRIMARY KEY,
    event_timestamp TIMESTAMPTZ NOT NULL,
    event_type TEXT NOT NULL,
    event_category TEXT NOT NULL,
    event_action TEXT NOT NULL,
    event_outcome TEXT NOT NULL CHECK (event_outcome IN ('success', 'failure', 'pending')),
    correlation_id TEXT NOT NULL,
    actor_id TEXT,
    resource_id TEXT,
    event_data JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS audit_events_correlation ON audit_events (correlation_id);
CREATE INDEX IF NOT EXISTS audit_events_type ON audit_events (event_type);
"""),
]


def connect(deadline: float) -> psycopg2.extensions.connection:
    while True:
        try:
            return psycopg2.connect(os.environ["DATABASE_URL"], connect_timeout=3)
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise
            print(f"waiting for the database: {exc}".strip(), flush=True)
            time.sleep(1)


def main() -> int:
    conn = connect(time.monotonic() + float(os.environ.get("MIGRATE_TIMEOUT", "120")))
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        cur.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            cur.execute(sql)
            cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            print(f"applied migration {version}", flush=True)
    print("migrations complete", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
