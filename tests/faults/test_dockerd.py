"""dockerd restarted during a build, on a *private* second daemon so the main engine (and every other
session's work) is never touched: its own ``--data-root``, ``--exec-root`` (its own containerd),
``--pidfile`` and socket, its own **network namespace** (``unshare --net``: its docker0 is its own; with
``--bridge=none`` instead, dockerd deletes the host's docker0 at start-up), ``--iptables=false
--ip-masq=false``, the vfs storage driver; stopped and removed after the test, which checks that the
host's docker0 is the same interface before and after.

The build must end in a typed error with a ``Hint:`` (or succeed), within a bound; no tag of the run may
point at a half-built image; the pre-existing image of the same suite must survive; a build after the
restart succeeds (the engine recovered) and ``kti clean`` removes exactly the run's tag.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetest_infra.build import LABEL_CONSUMER, LABEL_MANAGED, LABEL_RUN
from tests.faults.conftest import World
from tests.faults.harness import SENTINEL, SUITE_NAME, finish, kti, sh, start, until
from tests.faults.test_interrupts import _record

pytestmark = [pytest.mark.faults]
BUILD_BOUND = 180.0


class PrivateDockerd:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> None:
        # Its own network namespace: dockerd deletes the host's docker0 at start-up when given --bridge=none
        # (libnetwork's removeDefaultBridgeInterface), which broke the main engine's bridge for every session;
        # in a namespace of its own, its docker0 and any iptables rules are its own.
        argv = ["unshare", "--net", "dockerd", "--data-root", str(self.root / "data"), "--exec-root",
                str(self.root / "exec"), "--pidfile", str(self.root / "dockerd.pid"), "-H", self.host,
                "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--storage-driver=vfs"]
        log = (self.root / "dockerd.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        until(lambda: subprocess.run(["docker", "-H", self.host, "info"], capture_output=True,
                                     check=False).returncode == 0, 60, "the private dockerd")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def docker(self, *args: str, check: bool = True) -> str:
        return sh("docker", "-H", self.host, *args, check=check)


@pytest.fixture
def dockerd(tmp_path: Path, world: World) -> Iterator[PrivateDockerd]:
    if shutil.which("dockerd") is None or shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("the dockerd-restart fault needs dockerd, unshare and root", pytrace=False)
    host_bridge = _docker0()
    root = Path(f"/tmp/kti-faults-dockerd-{os.getpid()}")  # short: a unix socket path has ~100 bytes
    root.mkdir(mode=0o700)
    d = PrivateDockerd(root)
    try:
        d.start()
        saved = subprocess.Popen(["docker", "save", world.base], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", d.host, "load", "-q"], stdin=saved.stdout, capture_output=True, check=True,
                       timeout=300)
        saved.wait(60)
        subprocess.run(["docker", "-H", d.host, "build", "-q", "-t", SENTINEL, "--label", f"{LABEL_MANAGED}=true",
                        "--label", f"{LABEL_CONSUMER}={SUITE_NAME}", "--label", f"{LABEL_RUN}=preexisting", "-"],
                       input=f"FROM {world.base}\nLABEL faults=sentinel\n".encode(), capture_output=True, check=True,
                       timeout=120)
        yield d
    finally:
        d.stop()
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            mnt = line.split()[1]
            if mnt.startswith(str(root)):
                subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(root, ignore_errors=True)
    assert _docker0() == host_bridge, f"the host's docker0 changed ({host_bridge} -> {_docker0()}): the main " \
        "engine's bridge was touched"


def _docker0() -> str:
    """The host's docker0 (ifindex and address): the private daemon must never touch it."""
    base = Path("/sys/class/net/docker0")
    if not base.exists():
        return "absent"
    return f"{(base / 'ifindex').read_text().strip()} {(base / 'address').read_text().strip()}"


def _ours(d: PrivateDockerd) -> list[str]:
    return sorted(t for t in d.docker("images", "--filter", f"label={LABEL_CONSUMER}={SUITE_NAME}", "--format",
                                      "{{.Repository}}:{{.Tag}}").split() if not t.endswith(":<none>"))


def test_dockerd_restarted_during_a_build(world: World, dockerd: PrivateDockerd) -> None:
    ctx = world.root / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {world.base}\nRUN echo {time.time_ns()} > /n && sleep 20\n")
    env = {**world.env, "DOCKER_HOST": dockerd.host, "KTI_ENGINE": "docker"}
    before = _ours(dockerd)
    assert before == [SENTINEL]
    build = ["build", "--context", str(ctx), "--name", "web", "--consumer", SUITE_NAME, "--run-id", "dockerd1"]
    run = start(kti(*build), env, world.root)
    until(lambda: bool(dockerd.docker("ps", "-q").strip()), 120, "the build's RUN container")  # mid-build
    time.sleep(2)
    t_fault = time.monotonic()
    dockerd.stop()
    dockerd.start()
    restart = time.monotonic() - t_fault
    rc = finish(run, BUILD_BOUND)
    out = run.output()
    seconds = time.monotonic() - run.started
    if rc != 0:
        assert rc == 1 and "Hint:" in out and "Traceback" not in out, f"not a typed error (exit {rc}):\n{out[-3000:]}"
    after = _ours(dockerd)
    assert SENTINEL in after
    if rc != 0:
        assert after == [SENTINEL], f"a tag of the failed build exists: {after}"
    # the engine recovered: the same build now succeeds, and kti clean removes exactly its tag
    again = subprocess.run(kti(*build), capture_output=True, text=True, env=env, cwd=world.root, timeout=300,
                           check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"localhost/web:{SUITE_NAME}-dockerd1" in _ours(dockerd)
    cleaned = subprocess.run(kti("clean", "--run-id", "dockerd1", "--suite", SUITE_NAME), capture_output=True,
                             text=True, env=env, cwd=world.root, timeout=120, check=False)
    assert cleaned.returncode == 0, cleaned.stderr
    assert _ours(dockerd) == [SENTINEL]
    leftovers = ""
    with contextlib.suppress(AssertionError):
        leftovers = dockerd.docker("ps", "-a", "--format", "{{.Names}} {{.Status}}").strip()
    errline = next((line for line in out.splitlines() if "error" in line.lower()), "")[:240]
    _record("dockerd restarted during a build", {"rc": rc, "build_s": round(seconds, 1),
                                                  "restart_s": round(restart, 1), "error": errline,
                                                  "containers_left_in_private_engine": leftovers, "left": {}})
