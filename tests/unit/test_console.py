"""Progress lines of kti up (plain mode) in words."""

from __future__ import annotations

from kubetest_infra.console import event_line


def test_progress_lines_read_as_words() -> None:
    assert event_line("cluster", "start", 0.0) == "cluster: started"
    assert event_line("build:web", "ok", 3.21) == "build:web: ok in 3.2s"
    assert event_line("service:db", "failed", 4.0) == "service:db: failed after 4.0s"
    assert event_line("load:web", "cancelled", 0.0) == "load:web: cancelled"
