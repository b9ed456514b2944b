"""Bounded pipes with the real engine's ``save`` as the producer (docker tier)."""

from __future__ import annotations

import pytest

from kubetest_infra.engine import Engine
from kubetest_infra.errors import CommandTimeoutError
from kubetest_infra.runner import SubprocessRunner


def test_a_real_save_into_an_importer_that_stops_reading_ends_in_time(engine: Engine, busybox: str) -> None:
    with pytest.raises(CommandTimeoutError) as info:
        SubprocessRunner().pipe([engine.binary, "save", busybox], [["tar", "-t"], ["sleep", "30"]], timeout=3)
    err = info.value
    assert err.side == "consumer" and err.argv == ("sleep", "30")
    assert "to read its stdin" in err.waited_for


def test_a_real_save_reaches_every_consumer_whole(engine: Engine, busybox: str) -> None:
    listing, size = SubprocessRunner().pipe([engine.binary, "save", busybox], [["tar", "-t"], ["wc", "-c"]],
                                            timeout=120)
    assert "manifest.json" in listing.stdout.split()
    assert int(size.stdout) > 1_000_000
