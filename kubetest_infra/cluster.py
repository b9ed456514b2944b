"""Kind clusters from structured options: create, reuse, recreate, delete.

- The provider is the run's engine (``KIND_EXPERIMENTAL_PROVIDER=docker|podman``), the same engine
  that built the images.
- The kubeconfig goes to a file of its own (``<state>/clusters/<name>/kubeconfig``, mode 0600, its
  directory 0700); ``~/.kube/config`` is never read or written (``--kubeconfig`` on every kind call).
- Reuse needs the same name *and* the same config fingerprint (sha256 of the rendered kind config).
  A cluster this library did not create is never deleted or recreated: that is an error with a hint.
- Host ports of ``extraPortMappings`` are checked before ``kind create``: a port held by another
  process or another Kind node is a :class:`PortCollisionError` naming the holder.
- Transient ``kind create`` failures are retried (bounded, tenacity); real errors are not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from filelock import FileLock
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_fixed

from kubetest_infra.engine import Engine
from kubetest_infra.errors import CommandError, ConfigError, KtiError

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?$")
_TRANSIENT = ("context deadline exceeded", "connection reset", "tls handshake timeout", "i/o timeout",
              "failed to get api server endpoint", "etcdserver: request timed out")
STATE_ENV = "KTI_STATE_DIR"
KIND_ENV = "KTI_KIND"


class ClusterError(KtiError):
    """kind failed or a cluster is not usable."""


class KindNotFoundError(ClusterError):
    """No kind binary."""


class NodeImageMissingError(ClusterError):
    """The node image is not in the engine and cannot be pulled."""


class ClusterMissingError(ClusterError):
    """The named cluster does not exist."""


class PortCollisionError(ConfigError):
    """A host port of extraPortMappings is already taken."""


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int
    listen_address: str = "127.0.0.1"
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    read_only: bool = False


@dataclass(frozen=True)
class ClusterConfig:
    """What a Kind cluster looks like. Port mappings and mounts go on the control-plane node."""

    name: str
    node_image: str | None = None
    workers: int = 0
    port_mappings: tuple[PortMapping, ...] = ()
    mounts: tuple[Mount, ...] = ()
    kubeadm_patches: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_cluster_name(self.name)
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, not {self.workers}", hint="use 0 for a single-node cluster")
        ports = [(p.listen_address, p.host_port, p.protocol) for p in self.port_mappings]
        dupes = sorted({f"{a}:{p}/{proto}" for a, p, proto in ports if ports.count((a, p, proto)) > 1})
        if dupes:
            raise PortCollisionError(f"cluster {self.name}: host port mapped twice: {', '.join(dupes)}",
                                     hint="give every extraPortMappings entry its own hostPort")
        for p in self.port_mappings:
            if not (0 < p.host_port < 65536 and 0 < p.container_port < 65536):
                raise ConfigError(f"cluster {self.name}: invalid port mapping {p}", hint="ports are 1-65535")

    def kind_config(self) -> dict[str, Any]:
        control: dict[str, Any] = {"role": "control-plane"}
        if self.port_mappings:
            control["extraPortMappings"] = [
                {"containerPort": p.container_port, "hostPort": p.host_port, "listenAddress": p.listen_address,
                 "protocol": p.protocol} for p in self.port_mappings]
        if self.mounts:
            control["extraMounts"] = [{"hostPath": m.host_path, "containerPath": m.container_path,
                                       "readOnly": m.read_only} for m in self.mounts]
        if self.kubeadm_patches:
            control["kubeadmConfigPatches"] = list(self.kubeadm_patches)
        nodes = [control] + [{"role": "worker"} for _ in range(self.workers)]
        if self.node_image:
            for node in nodes:
                node["image"] = self.node_image
        return {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "name": self.name, "nodes": nodes}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.kind_config(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cluster:
    """A ready cluster of this library."""

    name: str
    kubeconfig: Path
    nodes: tuple[str, ...]
    provider: str
    reused: bool
    seconds: float
    fingerprint: str = field(default="")


def validate_cluster_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"invalid cluster name {name!r}",
                          hint="use 1-50 lowercase letters, digits and '-', starting and ending with a letter or digit")
    return name


def default_state_dir() -> Path:
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "kubetest-infra"


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, CommandError) and any(t in exc.stderr.lower() for t in _TRANSIENT)


class KindClusters:
    """Kind through its CLI, with the run's engine as provider."""

    def __init__(self, engine: Engine, state_dir: Path | None = None, kind_binary: str | None = None,
                 create_attempts: int = 2, wait: str = "120s") -> None:
        self.engine = engine
        self.runner = engine.runner
        self.state_dir = state_dir or default_state_dir()
        self.kind = kind_binary or os.environ.get(KIND_ENV) or "kind"
        self.create_attempts = create_attempts
        self.wait = wait

    # -- helpers ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        return {"KIND_EXPERIMENTAL_PROVIDER": self.engine.name}

    def _kind(self, *args: str, timeout: float | None = 120) -> str:
        if shutil.which(self.kind) is None and not Path(self.kind).is_file():
            raise KindNotFoundError(f"kind not found ({self.kind})",
                                    hint="install kind (go install sigs.k8s.io/kind@v0.30.0), set $KTI_KIND to its "
                                    "path; on the offline lab run hack/lab/build")
        return self.runner.run([self.kind, *args], env=self._env(), timeout=timeout).stdout

    def cluster_dir(self, name: str) -> Path:
        return self.state_dir / "clusters" / name

    def kubeconfig_path(self, name: str) -> Path:
        return self.cluster_dir(name) / "kubeconfig"

    def _state(self, name: str) -> dict[str, Any] | None:
        path = self.cluster_dir(name) / "state.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # -- queries ---------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        return name in self._kind("get", "clusters", timeout=60).split()

    def nodes(self, name: str) -> list[str]:
        out = self._kind("get", "nodes", "--name", name, timeout=60).split()
        if not out:
            raise ClusterMissingError(f"cluster {name!r} has no nodes (does it exist?)",
                                      hint=f"create it first (kti up / hack/lab/up --name {name})")
        return sorted(out)

    # -- changes ---------------------------------------------------------------------------
    def ensure(self, config: ClusterConfig, *, reuse: bool = True, recreate: bool = False) -> Cluster:
        """A ready cluster for ``config``: reused when name and fingerprint match, else (re)created.

        Serialised per cluster name with a file lock, so parallel processes (xdist workers, two
        terminals) never race to create the same cluster.
        """
        lock_dir = self.state_dir / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / f"{config.name}.lock")):
            return self._ensure(config, reuse=reuse, recreate=recreate)

    def _ensure(self, config: ClusterConfig, *, reuse: bool, recreate: bool) -> Cluster:
        started = time.monotonic()
        fingerprint = config.fingerprint()
        if self.exists(config.name):
            state = self._state(config.name)
            ours = state is not None and state.get("created_by") == "kubetest-infra"
            if ours and state is not None and state.get("fingerprint") == fingerprint and reuse and not recreate:
                self._write_kubeconfig(config.name)
                return Cluster(config.name, self.kubeconfig_path(config.name), tuple(self.nodes(config.name)),
                               self.engine.name, True, time.monotonic() - started, fingerprint)
            if not ours:
                raise ClusterError(
                    f"a Kind cluster named {config.name!r} exists but was not created by kubetest-infra",
                    hint=f"pick another name, or delete it yourself (kind delete cluster --name {config.name})")
            if not (recreate or reuse):
                raise ClusterError(f"cluster {config.name!r} exists", hint="pass reuse=True or recreate=True")
            self.delete(config.name)
        return self.create(config, started)

    def create(self, config: ClusterConfig, started: float | None = None) -> Cluster:
        started = started or time.monotonic()
        self._check_node_image(config)
        self._check_ports(config)
        cdir = self.cluster_dir(config.name)
        cdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(cdir, 0o700)
        cfg_path = cdir / "kind-config.yaml"
        cfg_path.write_text(yaml.safe_dump(config.kind_config(), sort_keys=False))
        kubeconfig = self.kubeconfig_path(config.name)
        args = ["create", "cluster", "--name", config.name, "--config", str(cfg_path), "--kubeconfig",
                str(kubeconfig), "--wait", self.wait]
        create = retry(retry=retry_if_exception(_transient), stop=stop_after_attempt(self.create_attempts),
                       wait=wait_fixed(2), reraise=True)(self._kind)
        try:
            create(*args, timeout=600)
        except CommandError as exc:
            shutil.rmtree(cdir, ignore_errors=True)  # kind removed its nodes; drop our files too
            raise ClusterError(f"kind create cluster {config.name} failed (exit {exc.returncode})\n"
                               + kind_error_summary(exc.stderr),
                               hint="read the kind output above; 'kind create cluster --retain' keeps the nodes "
                               "for 'kind export logs'") from exc
        os.chmod(kubeconfig, 0o600)
        fingerprint = config.fingerprint()
        (cdir / "state.json").write_text(json.dumps({
            "created_by": "kubetest-infra", "fingerprint": fingerprint, "config": asdict(config),
            "created": time.time()}, default=str))
        return Cluster(config.name, kubeconfig, tuple(self.nodes(config.name)), self.engine.name, False,
                       time.monotonic() - started, fingerprint)

    def delete(self, name: str) -> None:
        validate_cluster_name(name)
        kubeconfig = self.kubeconfig_path(name)
        kubeconfig.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        for attempt in range(3):
            try:
                self._kind("delete", "cluster", "--name", name, "--kubeconfig", str(kubeconfig), timeout=300)
                break
            except CommandError as exc:
                # The engine sometimes reports a removal "already in progress" under load: wait, check, retry.
                time.sleep(2 * (attempt + 1))
                if not self._kind("get", "nodes", "--name", name, timeout=60).split():
                    break
                if attempt == 2:
                    raise ClusterError(f"kind delete cluster {name} failed\n" + kind_error_summary(exc.stderr),
                                       hint=f"retry 'kind delete cluster --name {name}'; check 'docker ps -a'") from exc
        shutil.rmtree(self.cluster_dir(name), ignore_errors=True)

    def _write_kubeconfig(self, name: str) -> None:
        text = self._kind("get", "kubeconfig", "--name", name, timeout=60)
        path = self.kubeconfig_path(name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)

    def _check_node_image(self, config: ClusterConfig) -> None:
        if config.node_image and self.engine.inspect_image(config.node_image) is None:
            pulled = self.engine.run("pull", config.node_image, check=False, timeout=300)
            if pulled.returncode != 0:
                raise NodeImageMissingError(
                    f"node image {config.node_image} is not in the {self.engine.name} engine and cannot be pulled",
                    hint="build it (offline lab: hack/lab/build) or load it (docker load -i node.tar)")

    def _check_ports(self, config: ClusterConfig) -> None:
        holders = self._published_ports()
        for p in config.port_mappings:
            key = p.host_port
            if key in holders:
                raise PortCollisionError(
                    f"host port {p.host_port} is already published by container {holders[key]}",
                    hint="pick another hostPort in the suite's cluster ports, or delete that cluster")
            family = socket.AF_INET6 if ":" in p.listen_address else socket.AF_INET
            kind = socket.SOCK_DGRAM if p.protocol == "UDP" else socket.SOCK_STREAM
            with socket.socket(family, kind) as sock:
                # as docker-proxy does: connections in TIME_WAIT from earlier runs do not hold the port
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((p.listen_address, p.host_port))
                    if kind == socket.SOCK_STREAM:
                        sock.listen(1)
                except OSError as exc:
                    raise PortCollisionError(
                        f"host port {p.listen_address}:{p.host_port} is not free: {exc.strerror}",
                        hint="another process listens there (see 'ss -ltnp'); pick another hostPort") from exc

    def _published_ports(self) -> dict[int, str]:
        out = self.engine.run("ps", "--format", "{{.Names}}\t{{.Ports}}").stdout
        holders: dict[int, str] = {}
        for line in out.splitlines():
            name, _, ports = line.partition("\t")
            for m in re.finditer(r":(\d+)->", ports):
                holders[int(m.group(1))] = name
        return holders

    def export_logs(self, name: str, out_dir: Path) -> None:
        """``kind export logs`` of a cluster into ``out_dir`` (node journals, container logs)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self._kind("export", "logs", str(out_dir), "--name", name, timeout=300)

    def node_images(self, node: str) -> list[str]:
        """Image references in a node's containerd (for hints), without digest-only names."""
        out = self.engine.run("exec", node, "ctr", "-n", "k8s.io", "images", "ls", "-q", timeout=60).stdout
        return sorted(r for r in out.split() if "@sha256:" not in r and not r.startswith("sha256:"))


def kind_error_summary(stderr: str, limit: int = 25) -> str:
    """The useful part of kind's output: its ERROR line and the command output, without Go stack frames."""
    keep = []
    for line in stderr.splitlines():
        text = line.strip()
        if not text or line.startswith("\t") or ".go:" in text or text.startswith(("goroutine ", "runtime.")):
            continue
        if re.match(r"^[\w./-]+\.\(?\*?\w+\)?[.\w]*$", text) or re.match(r"^(main|k8s\.io|sigs\.k8s\.io)\.", text):
            continue  # a Go function name line of a stack trace
        keep.append(line.rstrip())
    errors = [line for line in keep if "ERROR" in line or "error" in line.lower() or "failed" in line.lower()]
    chosen = (errors[:5] + [line for line in keep if line not in errors])[:limit]
    return "\n".join(chosen)
