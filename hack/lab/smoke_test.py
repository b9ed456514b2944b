"""Smoke test of the offline Kind lab (hack/lab/).

Self-contained: talks to docker, kind and kubectl through subprocess only (kubectl and kind are
the ones built into the lab cache, not whatever is on PATH), and reaches the NodePort from the
host with the standard library. Starts (or reuses) the cluster with ``hack/lab/up``.

Environment:
  KTI_LAB_CACHE     lab cache (default /var/cache/kti-lab)
  KTI_LAB_CLUSTER   cluster name (default kti-lab)
  KTI_LAB_HOSTPORT  host port published for nodePort 30080 (default 30080)
  KTI_LAB_SMOKE_DOWN=1  delete the cluster at the end (default: keep it for reuse)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kind, pytest.mark.xdist_group("kind")]  # one xdist worker owns the lab clusters

LAB = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("KTI_LAB_CACHE", "/var/cache/kti-lab"))
CLUSTER = os.environ.get("KTI_LAB_CLUSTER", "kti-lab")
HOSTPORT = int(os.environ.get("KTI_LAB_HOSTPORT", "30080"))
NODE_PORT = 30080
PROBE_IMAGE = "kti-lab/probe:busybox-1"


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (LAB / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


VERSIONS = _versions()
KUBECTL = CACHE / "k8s" / VERSIONS["K8S_VERSION"] / "bin" / "kubectl"
KIND = CACHE / "bin" / f"kind-{VERSIONS['KIND_VERSION']}"


def _skip_loudly(reason: str) -> None:
    msg = f"KIND LAB NOT AVAILABLE, smoke test SKIPPED: {reason}"
    print(f"\n{'!' * 80}\n{msg}\n{'!' * 80}", file=sys.stderr)
    pytest.skip(msg)


def run(*args: str | Path, check: bool = True, input: str | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(
        [str(a) for a in args], input=input, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, args))}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


@pytest.fixture(scope="module")
def kubeconfig() -> Iterator[str]:
    if shutil.which("docker") is None:
        _skip_loudly("no docker CLI on PATH")
    ref_file = CACHE / "node-image.ref"
    if not ref_file.is_file():
        _skip_loudly(f"{ref_file} missing: the lab is not built; run hack/lab/build (~45 min cold)")
    for binary in (KUBECTL, KIND):
        if not os.access(binary, os.X_OK):
            _skip_loudly(f"{binary} missing: run hack/lab/build")
    t0 = time.monotonic()
    out = run(LAB / "up", "--name", CLUSTER, timeout=900)
    path = out.strip().splitlines()[-1]
    print(f"hack/lab/up: {time.monotonic() - t0:.1f} s, kubeconfig {path}", file=sys.stderr)
    assert Path(path).is_file(), f"hack/lab/up did not print a kubeconfig path: {out!r}"
    assert (Path(path).stat().st_mode & 0o777) == 0o600, "kubeconfig must be mode 0600"
    yield path
    if os.environ.get("KTI_LAB_SMOKE_DOWN") == "1":
        run(LAB / "down", "--name", CLUSTER)


@pytest.fixture(scope="module")
def namespace(kubeconfig: str) -> Iterator[str]:
    ns = f"kti-lab-smoke-{uuid.uuid4().hex[:6]}"
    kubectl(kubeconfig, "create", "namespace", ns)
    yield ns
    kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false", check=False)


def kubectl(kubeconfig: str, *args: str, check: bool = True, input: str | None = None) -> str:
    return run(KUBECTL, "--kubeconfig", kubeconfig, *args, check=check, input=input)


def docker_build(tag: str, context: Path) -> None:
    env = dict(os.environ)
    buildx = subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0
    if not buildx:  # classic builder (no buildx plugin, as on the lab VMs)
        env["DOCKER_BUILDKIT"] = "0"
    proc = subprocess.run(["docker", "build", "-t", tag, str(context)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"docker build failed:\n{proc.stdout}\n{proc.stderr}"


def test_cluster_system_pods_running(kubeconfig: str) -> None:
    kubectl(kubeconfig, "wait", "--for=condition=Ready", "nodes", "--all", "--timeout=120s")
    for label in ("k8s-app=kube-proxy", "k8s-app=kube-dns"):
        kubectl(
            kubeconfig, "-n", "kube-system", "wait", "--for=condition=Ready", "pod", "-l", label, "--timeout=120s"
        )
        pods = json.loads(kubectl(kubeconfig, "-n", "kube-system", "get", "pods", "-l", label, "-o", "json"))
        phases = [p["status"]["phase"] for p in pods["items"]]
        assert phases and all(ph == "Running" for ph in phases), f"{label}: {phases}"


def test_local_image_deployment_and_nodeport(kubeconfig: str, namespace: str) -> None:
    tag = f"kti-lab/smoke-httpd:{uuid.uuid4().hex[:8]}"
    token = uuid.uuid4().hex
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        (ctx / "www").mkdir()
        (ctx / "www" / "index.html").write_text(f"kti-lab-smoke {token}\n")
        (ctx / "Dockerfile").write_text(
            f"FROM {PROBE_IMAGE}\n"
            "COPY www /www\n"
            'CMD ["/bin/busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/www"]\n'
        )
        docker_build(tag, ctx)
    try:
        t0 = time.monotonic()
        run(KIND, "load", "docker-image", tag, "--name", CLUSTER)
        print(f"kind load docker-image: {time.monotonic() - t0:.1f} s", file=sys.stderr)
        manifest = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "httpd", "namespace": namespace},
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": {"app": "httpd"}},
                        "template": {
                            "metadata": {"labels": {"app": "httpd"}},
                            "spec": {
                                "containers": [
                                    {
                                        "name": "httpd",
                                        "image": tag,
                                        "imagePullPolicy": "Never",
                                        "ports": [{"containerPort": 8080}],
                                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                                    }
                                ]
                            },
                        },
                    },
                },
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "httpd", "namespace": namespace},
                    "spec": {
                        "type": "NodePort",
                        "selector": {"app": "httpd"},
                        "ports": [{"port": 80, "targetPort": 8080, "nodePort": NODE_PORT}],
                    },
                },
            ],
        }
        # Another smoke run may still hold nodePort 30080 in a namespace being deleted.
        deadline = time.monotonic() + 120
        while True:
            proc = subprocess.run(
                [str(KUBECTL), "--kubeconfig", kubeconfig, "apply", "-f", "-"],
                input=json.dumps(manifest), capture_output=True, text=True,
            )
            if proc.returncode == 0:
                break
            assert "provided port is already allocated" in proc.stderr and time.monotonic() < deadline, proc.stderr
            time.sleep(3)
        t0 = time.monotonic()
        kubectl(kubeconfig, "-n", namespace, "rollout", "status", "deployment/httpd", "--timeout=120s")
        print(f"deployment Ready after {time.monotonic() - t0:.1f} s", file=sys.stderr)

        url = f"http://127.0.0.1:{HOSTPORT}/"
        deadline = time.monotonic() + 60
        last: object = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=3) as resp:
                    body = resp.read().decode()
                if token in body:
                    break
                last = body
            except (urllib.error.URLError, OSError) as exc:
                last = exc
            time.sleep(1)
        else:
            pytest.fail(f"NodePort {NODE_PORT} not answering on {url} with the expected page: {last!r}")
    finally:
        subprocess.run(["docker", "rmi", tag], capture_output=True)


def test_never_loaded_image_is_err_image_never_pull(kubeconfig: str, namespace: str) -> None:
    image = f"kti-lab/never-loaded:{uuid.uuid4().hex[:8]}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "never", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": image, "imagePullPolicy": "Never"}]},
    }
    kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps(pod))
    t0 = time.monotonic()
    reason = ""
    while time.monotonic() - t0 < 120:
        reason = kubectl(
            kubeconfig, "-n", namespace, "get", "pod", "never",
            "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}", check=False,
        ).strip()
        if reason == "ErrImageNeverPull":
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    print(f"ErrImageNeverPull after {elapsed:.1f} s (last reason {reason!r})", file=sys.stderr)
    assert reason == "ErrImageNeverPull", f"pod never reached ErrImageNeverPull in {elapsed:.0f} s: {reason!r}"
