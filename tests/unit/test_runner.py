from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import pytest

from kubetest_infra.errors import CommandError, CommandTimeoutError
from kubetest_infra.runner import Command, Redactor, SubprocessRunner


def test_redacts_secret_build_args_urls_and_known_values() -> None:
    r = Redactor()
    r.add("hunter2-secret")
    argv = ["docker", "build", "--build-arg", "DB_PASSWORD=hunter2", "--build-arg", "MODE=fast",
            "https://user:tok@example.com/x.git", "echo hunter2-secret"]
    shown = r.argv(argv)
    assert "DB_PASSWORD=***" in shown
    assert "MODE=fast" in shown
    assert "https://***@example.com/x.git" in shown
    assert "echo ***" in shown
    assert not any("hunter2" in a for a in shown)


def test_short_values_are_not_registered_as_secrets() -> None:
    r = Redactor()
    r.add("ab")
    assert r.text("abc") == "abc"


def test_subprocess_runner_captures_and_raises_with_redacted_output() -> None:
    runner = SubprocessRunner()
    runner.redactor.add("s3cr3tvalue")
    ok = runner.run(["python3", "-c", "print('hello')"])
    assert ok.stdout.strip() == "hello" and ok.returncode == 0
    with pytest.raises(CommandError) as info:
        runner.run(["python3", "-c", "import sys; sys.stderr.write('bad s3cr3tvalue\\n'); sys.exit(3)"])
    err = info.value
    assert err.returncode == 3
    assert "s3cr3tvalue" not in str(err) and "bad ***" in str(err)
    assert err.argv[0] == "python3"


def test_verbatim_stdout_is_data_returned_exactly_and_redacted_only_in_an_error() -> None:
    """Rendered manifests carry URLs like postgresql://$(USER):$(PASSWORD)@db: redacting them deployed ***."""
    runner = SubprocessRunner()
    url = "postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@postgres:5432/db"
    printed = ["python3", "-c", f"print({url!r})"]
    assert runner.run(printed).stdout.strip() == "postgresql://***@postgres:5432/db", "a log-like output is redacted"
    assert runner.run(printed, verbatim_stdout=True).stdout.strip() == url
    with pytest.raises(CommandError) as info:
        runner.run(["python3", "-c", f"print({url!r}); raise SystemExit(1)"], verbatim_stdout=True)
    assert "$(POSTGRES_PASSWORD)" not in str(info.value) and "***@postgres" in str(info.value)


def test_missing_binary_is_a_command_error_with_hint() -> None:
    with pytest.raises(CommandError, match="Hint: install no-such-binary-kti"):
        SubprocessRunner().run(["no-such-binary-kti"])


def test_timeout_is_reported() -> None:
    with pytest.raises(CommandError, match="timed out"):
        SubprocessRunner().run(["sleep", "5"], timeout=0.2)


def test_no_check_returns_failure() -> None:
    res = SubprocessRunner().run(["false"], check=False)
    assert res.returncode == 1


def test_command_builder_skips_none() -> None:
    argv = Command(["build"]).add_option("--target", None).add_option("-f", "D").add_flag("--x", False)
    assert argv == ["build", "-f", "D"]
    assert Command(["a"]).add_repeated("-t", ["x", "y"]) == ["a", "-t", "x", "-t", "y"]


def test_pipe_fans_one_stream_out_to_every_consumer() -> None:
    producer = ["python3", "-c", "import sys; sys.stdout.write('x' * 5_000_000)"]
    results = SubprocessRunner().pipe(producer, [["wc", "-c"], ["wc", "-c"], ["sha256sum"]])
    assert [r.stdout.strip() for r in results[:2]] == ["5000000", "5000000"]
    assert all(r.returncode == 0 for r in results)


def test_pipe_keeps_feeding_the_others_when_one_consumer_dies() -> None:
    producer = ["python3", "-c", "import sys; sys.stdout.write('y' * 3_000_000)"]
    died, ok = SubprocessRunner().pipe(producer, [["python3", "-c", "import sys; sys.exit(4)"], ["wc", "-c"]])
    assert died.returncode == 4
    assert ok.stdout.strip() == "3000000"


def test_pipe_raises_when_the_producer_fails() -> None:
    with pytest.raises(CommandError, match="exit 3"):
        SubprocessRunner().pipe(["python3", "-c", "import sys; sys.exit(3)"], [["cat"]])


# -- bounded waits: every test ends well within its timeout, with the side that stalled named ----------
# Real small processes (python one-liners, sleep, head): they are not engines, and they stall for real.

SILENT = ["python3", "-c", "import time; time.sleep(60)"]
FIVE_MB = ["head", "-c", "5000000", "/dev/zero"]


def test_run_timeout_is_a_command_timeout_error_saying_what_was_waited_for() -> None:
    with pytest.raises(CommandTimeoutError, match=r"timed out after 0\.2 s waiting for `sleep 5` to finish") as info:
        SubprocessRunner().run(["sleep", "5"], timeout=0.2)
    assert info.value.side == "command" and info.value.returncode == -1


def test_run_timeout_ends_even_when_a_child_keeps_the_pipes_open() -> None:
    # the shell is killed at the timeout; its background sleep still holds stdout and stderr
    script = "sleep 30 & echo started; wait"
    with pytest.raises(CommandTimeoutError, match="to finish") as info:
        SubprocessRunner().run(["sh", "-c", script], timeout=0.3)
    assert "started" in info.value.stderr


def test_pipe_stalled_producer_is_named() -> None:
    with pytest.raises(CommandTimeoutError) as info:
        SubprocessRunner().pipe(SILENT, [["cat"]], timeout=0.5)
    err = info.value
    assert err.side == "producer" and err.argv[0] == "python3"
    assert "waiting for the producer `python3 -c import time; time.sleep(60)` to write more output" in str(err)
    assert "0 bytes so far" in str(err) and "Hint: the producer hung" in str(err)


def test_pipe_producer_that_exited_while_its_child_holds_stdout() -> None:
    producer = ["sh", "-c", "printf abc; sleep 30 &"]
    with pytest.raises(CommandTimeoutError, match="it has exited but a process it started still holds its stdout"):
        SubprocessRunner().pipe(producer, [["cat"]], timeout=0.5)


def test_pipe_consumer_that_stops_reading_is_named() -> None:
    with pytest.raises(CommandTimeoutError) as info:
        SubprocessRunner().pipe(FIVE_MB, [["wc", "-c"], ["sleep", "30"]], timeout=1.2)
    err = info.value
    assert err.side == "consumer" and err.argv == ("sleep", "30")
    assert "waiting for consumer `sleep 30` to read its stdin: a write has waited" in str(err)
    assert re.search(r"65536 of \d+ bytes delivered", str(err))  # what the pipe buffer took, then nothing


def test_pipe_consumer_that_reads_everything_but_never_exits() -> None:
    consumer = ["sh", "-c", "cat >/dev/null; exec sleep 30"]
    with pytest.raises(CommandTimeoutError, match=r"to exit after its input ended \(3 bytes delivered\)"):
        SubprocessRunner().pipe(["printf", "abc"], [consumer], timeout=1.2)


def test_pipe_consumer_that_exits_early_with_success_is_an_error() -> None:
    with pytest.raises(CommandError, match="closed its input after") as info:
        SubprocessRunner().pipe(FIVE_MB, [["head", "-c", "10"]], timeout=5)
    assert info.value.returncode == 0 and "exited 0" in str(info.value)
    assert not isinstance(info.value, CommandTimeoutError)


def test_pipe_consumer_that_exits_early_while_the_producer_is_silent_ends_at_once() -> None:
    # nothing to write, so no broken pipe: the watchdog sees every consumer gone and stops the producer
    with pytest.raises(CommandError, match="before the end of the stream") as info:
        SubprocessRunner().pipe(SILENT, [["true"]], timeout=30)
    assert not isinstance(info.value, CommandTimeoutError)


def test_pipe_a_silent_truncation_is_an_error_even_when_the_others_are_fine() -> None:
    with pytest.raises(CommandError, match=r"head -c 1\n.*closed its input after \d+ of 5000000 bytes \(the whole "
                                           r"stream was not read\) and exited 0"):
        SubprocessRunner().pipe(FIVE_MB, [["head", "-c", "1"], ["wc", "-c"]], timeout=10)


def test_pipe_without_a_timeout_still_finishes() -> None:
    (result,) = SubprocessRunner().pipe(FIVE_MB, [["wc", "-c"]])
    assert result.stdout.strip() == "5000000"


def test_pipe_redacts_what_a_stalled_side_printed() -> None:
    runner = SubprocessRunner()
    runner.redactor.add("hunter2-token")
    producer = ["python3", "-c", "import sys, time; sys.stderr.write('auth hunter2-token\\n'); sys.stderr.flush(); "
                "time.sleep(60)"]
    with pytest.raises(CommandTimeoutError) as info:
        runner.pipe(producer, [["cat"]], timeout=0.5)
    assert "auth ***" in str(info.value) and "hunter2" not in str(info.value)


def test_stream_fans_bytes_made_in_process_out_to_every_consumer() -> None:
    chunks = (bytes([i]) * 700_000 for i in range(5))
    results = SubprocessRunner().stream(chunks, [["wc", "-c"], ["sha256sum"]], timeout=60)
    assert results[0].stdout.strip() == "3500000"
    expected = hashlib.sha256(b"".join(bytes([i]) * 700_000 for i in range(5))).hexdigest()
    assert results[1].stdout.split()[0] == expected


def test_stream_ends_the_consumers_input_and_reraises_when_the_source_fails() -> None:
    def source() -> Iterator[bytes]:
        yield b"a" * 2_000_000
        raise ValueError("layer does not hash to its digest")

    with pytest.raises(ValueError, match="does not hash"):
        SubprocessRunner().stream(source(), [["wc", "-c"]], timeout=60)


def test_pipe_can_transform_the_producers_bytes() -> None:
    producer = ["python3", "-c", "import sys; sys.stdout.write('abc' * 1000)"]
    results = SubprocessRunner().pipe(producer, [["wc", "-c"]], timeout=60,
                                      transform=lambda out: (out.read().upper() + b"!",))
    assert results[0].stdout.strip() == "3001"
