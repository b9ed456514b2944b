from __future__ import annotations

import pytest

from kubetest_infra.errors import CommandError
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
