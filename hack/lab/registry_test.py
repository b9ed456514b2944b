"""End-to-end test of the lab registry (hack/lab/registry) with a cluster made by ``hack/lab/up --registry``.

Proves that a Kind node pulls from the lab registry and nothing else: an image built here and pushed
with ``docker push localhost:PORT/...`` is absent from every node before the pod starts, the pod
(``imagePullPolicy: Always``) runs it, and the pod's ``imageID`` is exactly the digest the push
reported. Self-contained like smoke_test.py: subprocess calls to docker and the lab's kubectl, urllib
for the registry API.

Environment:
  KTI_LAB_CACHE              lab cache (default /var/cache/kti-lab)
  KTI_LAB_REGISTRY_CLUSTER   cluster name (default kti-lab-reg); no host port is published
  KTI_LAB_SMOKE_DOWN=1       delete the cluster at the end (default: keep it for reuse)
  KTI_REQUIRE_TIERS          containing "registry": a missing registry fails instead of skipping
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.kind, pytest.mark.xdist_group("kind")]

LAB = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("KTI_LAB_CACHE", "/var/cache/kti-lab"))
CLUSTER = os.environ.get("KTI_LAB_REGISTRY_CLUSTER", "kti-lab-reg")
REGISTRY_CONTAINER = "kti-lab-registry"
PROBE_IMAGE = "kti-lab/probe:busybox-1"


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (LAB / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


KUBECTL = CACHE / "k8s" / _versions()["K8S_VERSION"] / "bin" / "kubectl"


def _absent(reason: str) -> None:
    """Loud skip, or a failure when CI requires the registry."""
    required = "registry" in {t.strip() for t in os.environ.get("KTI_REQUIRE_TIERS", "").split(",")}
    msg = f"LAB REGISTRY NOT AVAILABLE, registry test {'FAILED' if required else 'SKIPPED'}: {reason}"
    print(f"\n{'!' * 80}\n{msg}\n{'!' * 80}", file=sys.stderr)
    if required:
        pytest.fail(msg + " (KTI_REQUIRE_TIERS names registry: hack/lab/registry start)", pytrace=False)
    pytest.skip(msg)


def run(*args: str | Path, check: bool = True, input: str | None = None, timeout: float = 300) -> str:
    proc = subprocess.run([str(a) for a in args], input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, args))}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


@dataclass(frozen=True)
class Registry:
    host: str  # localhost:PORT, as docker and the pods name it

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.host.rpartition(':')[2]}/v2"


@pytest.fixture(scope="module")
def registry() -> Registry:
    if shutil.which("docker") is None:
        _absent("no docker CLI on PATH")
    proc = subprocess.run([str(LAB / "registry"), "status"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        _absent(f"hack/lab/registry status: {proc.stdout.strip()} {proc.stderr.strip()}".strip())
    match = re.search(r"^endpoint: (localhost:\d+) ", proc.stdout, re.MULTILINE)
    assert match, f"hack/lab/registry status printed no endpoint:\n{proc.stdout}"
    reg = Registry(match.group(1))
    with urllib.request.urlopen(f"{reg.api}/", timeout=5) as resp:
        assert resp.status == 200, f"{reg.api}/ answered {resp.status}"
    return reg


@pytest.fixture(scope="module")
def kubeconfig(registry: Registry) -> Iterator[str]:
    if not os.access(KUBECTL, os.X_OK):
        _absent(f"{KUBECTL} missing: run hack/lab/build")
    with tempfile.TemporaryDirectory() as tmp:
        # No published ports: this cluster only pulls.
        config = Path(tmp) / "kind.yaml"
        config.write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n  - role: control-plane\n")
        t0 = time.monotonic()
        out = run(LAB / "up", "--name", CLUSTER, "--config", config, "--registry", timeout=900)
    path = out.strip().splitlines()[-1]
    print(f"hack/lab/up --registry: {time.monotonic() - t0:.1f} s, kubeconfig {path}", file=sys.stderr)
    assert Path(path).is_file(), f"hack/lab/up did not print a kubeconfig path: {out!r}"
    yield path
    if os.environ.get("KTI_LAB_SMOKE_DOWN") == "1":
        run(LAB / "down", "--name", CLUSTER)


def kubectl(kubeconfig: str, *args: str, check: bool = True, input: str | None = None) -> str:
    return run(KUBECTL, "--kubeconfig", kubeconfig, *args, check=check, input=input)


def nodes(cluster: str) -> list[str]:
    names = run("docker", "ps", "--filter", f"label=io.x-k8s.kind.cluster={cluster}", "--format", "{{.Names}}")
    return names.split()


def node_images(node: str) -> str:
    """`ctr images ls` of the node's CRI namespace: every ref and the manifest digest it points to."""
    return run("docker", "exec", node, "ctr", "-n", "k8s.io", "images", "ls")


def test_docker_treats_loopback_registries_as_insecure() -> None:
    # Why `docker push localhost:PORT/...` works over plain HTTP without daemon configuration.
    info = json.loads(run("docker", "info", "--format", "{{json .RegistryConfig.InsecureRegistryCIDRs}}"))
    assert "127.0.0.0/8" in info, f"docker would refuse plain HTTP to localhost: insecure CIDRs {info}"


def test_cluster_announces_the_registry(kubeconfig: str, registry: Registry) -> None:
    data = json.loads(kubectl(kubeconfig, "-n", "kube-public", "get", "configmap", "local-registry-hosting",
                              "-o", "json"))["data"]["localRegistryHosting.v1"]
    assert f'host: "{registry.host}"' in data, data
    assert f'hostFromContainerRuntime: "{REGISTRY_CONTAINER}:5000"' in data, data
    for node in nodes(CLUSTER):
        hosts = run("docker", "exec", node, "cat", f"/etc/containerd/certs.d/{registry.host}/hosts.toml")
        assert f'[host."http://{REGISTRY_CONTAINER}:5000"]' in hosts, f"{node}: {hosts}"
        dump = run("docker", "exec", node, "containerd", "config", "dump")
        assert 'config_path = "/etc/containerd/certs.d"' in dump, f"{node}: containerd does not read certs.d"


def test_node_pulls_pushed_image_by_digest(kubeconfig: str, registry: Registry) -> None:
    token = uuid.uuid4().hex
    repo = f"{registry.host}/kti-lab-test/pull-{token[:8]}"
    ref = f"{repo}:t1"
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        (ctx / "token").write_text(token + "\n")
        (ctx / "Dockerfile").write_text(f"FROM {PROBE_IMAGE}\nCOPY token /token\n")
        env = dict(os.environ)
        if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode != 0:
            env["DOCKER_BUILDKIT"] = "0"  # classic builder (no buildx plugin, as on the lab VMs)
        proc = subprocess.run(["docker", "build", "-t", ref, str(ctx)], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, f"docker build failed:\n{proc.stdout}\n{proc.stderr}"
    namespace = f"kti-lab-reg-{token[:6]}"
    digest = ""
    try:
        t0 = time.monotonic()
        pushed = run("docker", "push", ref)
        match = re.search(r"digest: (sha256:[0-9a-f]{64})", pushed)
        assert match, f"docker push printed no digest:\n{pushed}"
        digest = match.group(1)
        print(f"docker push: {time.monotonic() - t0:.1f} s, {digest}", file=sys.stderr)
        req = urllib.request.Request(
            f"{registry.api}/{repo.split('/', 1)[1]}/manifests/t1", method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.headers["Docker-Content-Digest"] == digest, "registry serves another manifest for the tag"

        for node in nodes(CLUSTER):
            listed = node_images(node)
            assert repo not in listed and digest not in listed, f"{node} has the image before the pull:\n{listed}"

        kubectl(kubeconfig, "create", "namespace", namespace)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pull", "namespace": namespace},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": ref, "imagePullPolicy": "Always",
                                "command": ["/bin/cat", "/token"]}],
            },
        }
        kubectl(kubeconfig, "apply", "-f", "-", input=json.dumps(pod))
        t0 = time.monotonic()
        obj: dict[str, Any] = {}
        status: dict[str, Any] = {}
        while time.monotonic() - t0 < 120:
            obj = json.loads(kubectl(kubeconfig, "-n", namespace, "get", "pod", "pull", "-o", "json"))
            status = obj["status"]
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(1)
        print(f"pod finished after {time.monotonic() - t0:.1f} s: {status.get('phase')}", file=sys.stderr)
        assert status.get("phase") == "Succeeded", f"pod did not succeed: {json.dumps(status)[:2000]}"
        assert kubectl(kubeconfig, "-n", namespace, "logs", "pull").strip() == token
        container = status["containerStatuses"][0]
        assert container["imageID"] == f"{repo}@{digest}", f"pod ran {container['imageID']}, pushed {repo}@{digest}"
        events = kubectl(kubeconfig, "-n", namespace, "get", "events", "--field-selector", "involvedObject.name=pull",
                         "-o", "jsonpath={range .items[*]}{.reason} {.message}{'\\n'}{end}")
        assert re.search(rf"Pulled .*{re.escape(ref)}", events), f"no pull event for {ref}:\n{events}"
        node = obj["spec"]["nodeName"]
        assert digest in node_images(node), f"{node} ran the pod but does not list {digest} after the pull"
    finally:
        kubectl(kubeconfig, "delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
        if digest:  # the registry runs with deletes enabled: remove what this test pushed
            req = urllib.request.Request(f"{registry.api}/{repo.split('/', 1)[1]}/manifests/{digest}", method="DELETE")
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 202, f"manifest delete answered {resp.status}"
        subprocess.run(["docker", "rmi", ref], capture_output=True)
