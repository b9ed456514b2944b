"""Kind clusters from structured options: create, reuse, recreate, delete.

- The provider is the run's engine (``KIND_EXPERIMENTAL_PROVIDER=docker|podman``), the same engine
  that built the images. The record names it; a cluster of ours under the other provider is refused
  (:class:`EngineMismatchError`), never forgotten or shadowed by a second cluster of the same name.
- The kubeconfig goes to a file of its own (``<state>/clusters/<name>/kubeconfig``, mode 0600, its
  directory 0700); ``~/.kube/config`` is never read or written (``--kubeconfig`` on every kind call).
- Reuse needs the same name *and* the same config fingerprint (sha256 of the rendered kind config).
- Ownership: the cluster record (``state.json``: creator, owner process, fingerprint, phase) is written
  *before* ``kind create`` runs, so a creation cut short (SIGKILL, a CI cancel, a timeout) is recognised
  by the next ``ensure``/``delete``/``kti gc`` and removed. A cluster with no record was not created by
  this library: it is never deleted or recreated (unless the user forces it), that is an error with a hint.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_fixed

from kubetest_infra import labenv
from kubetest_infra.engine import Engine
from kubetest_infra.errors import CommandError, ConfigError, KtiError
from kubetest_infra.state import Owner, atomic_write, default_state_dir, locked, read_json, write_json

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?$")
_TRANSIENT = ("context deadline exceeded", "connection reset", "tls handshake timeout", "i/o timeout",
              "failed to get api server endpoint", "etcdserver: request timed out",
              # slowness, not a wrong config: a loaded machine's kubelet or join can miss kubeadm's deadline
              "kubelet-wait-bootstrap", "wait-control-plane", "timed out waiting for the condition")
KIND_ENV = "KTI_KIND"
CREATED_BY = "kubetest-infra"
KIND_CLUSTER_LABEL = "io.x-k8s.kind.cluster"  # what kind labels each node container with


class ClusterError(KtiError):
    """kind failed or a cluster is not usable."""


class KindNotFoundError(ClusterError):
    """No kind binary."""


class EngineMismatchError(ClusterError):
    """The cluster's nodes run under another engine (provider) than the run's."""


class NodeImageMissingError(ClusterError):
    """The node image is not in the engine and cannot be pulled."""


class ClusterMissingError(ClusterError):
    """The named cluster does not exist."""


class PortCollisionError(ConfigError):
    """A host port of extraPortMappings is already taken."""


class NotOwnedError(ClusterError):
    """A cluster this library has no ownership record for: never deleted or recreated without --force."""


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
    context: str | None = None  # a kubeconfig context (clusters reached by kubeconfig, :mod:`.remote`)


def validate_cluster_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"invalid cluster name {name!r}",
                          hint="use 1-50 lowercase letters, digits and '-', starting and ending with a letter or digit")
    return name




def _transient(exc: BaseException) -> bool:
    return isinstance(exc, CommandError) and any(t in exc.stderr.lower() for t in _TRANSIENT)


CNI_PLUGIN_DIRS = ("/usr/lib/cni", "/usr/libexec/cni", "/opt/cni/bin", "/usr/local/libexec/cni")
DNSNAME_HINT = ("install the CNI dnsname plugin (Debian/Ubuntu: apt-get install "
                "golang-github-containernetworking-plugin-dnsname; hack/lab/podman setup does it), then "
                "'podman network rm kind' so kind recreates its network with DNS")


def podman_network_problem(engine: Engine, network: str = "kind") -> str | None:
    """Why Kind's podman provider cannot join workers here, or None.

    Kind nodes find the control plane by container name (``<cluster>-control-plane:6443``): the network
    must resolve names. With podman's CNI backend that takes the ``dnsname`` plugin (Debian's podman only
    recommends it); without it ``kubeadm join`` fails with "lookup …-control-plane …: no such host". A
    ``kind`` network created before the plugin was installed keeps DNS off until it is recreated.
    """
    if engine.name != "podman":
        return None
    backend = engine.run("info", "--format", "{{.Host.NetworkBackend}}", check=False, timeout=30).stdout.strip()
    net = engine.run("network", "inspect", network, "--format", "{{.DNSEnabled}}", check=False, timeout=30)
    if net.returncode == 0 and net.stdout.strip() == "false":
        return f"podman network {network!r} has DNS disabled (container names do not resolve)"
    if backend == "cni" and net.returncode != 0 and not any(os.path.exists(os.path.join(d, "dnsname"))
                                                             for d in CNI_PLUGIN_DIRS):
        return "podman uses the CNI network backend without the dnsname plugin (container names do not resolve)"
    return None


class KindClusters:
    """Kind through its CLI, with the run's engine as provider."""

    def __init__(self, engine: Engine, state_dir: Path | None = None, kind_binary: str | None = None, *,
                 create_attempts: int = 2, wait: str = "120s", create_timeout: float = 600) -> None:
        self.engine = engine
        self.runner = engine.runner
        self.state_dir = state_dir or default_state_dir()
        self.kind = kind_binary or labenv.get(KIND_ENV) or "kind"
        self.create_attempts = create_attempts
        self.wait = wait
        self.create_timeout = create_timeout

    # -- helpers ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        return {"KIND_EXPERIMENTAL_PROVIDER": self.engine.name}

    def _kind(self, *args: str, timeout: float | None = 120) -> str:
        if shutil.which(self.kind) is None and not Path(self.kind).is_file():
            raise KindNotFoundError(f"kind not found ({self.kind})",
                                    hint="install kind (go install sigs.k8s.io/kind@v0.30.0) or set $KTI_KIND to its "
                                    "path; in the offline lab, hack/setup writes KTI_KIND to .kti/env, read from "
                                    "the working directory up or $KTI_ENV_FILE (docs/labs.md)")
        return self.runner.run([self.kind, *args], env=self._env(), timeout=timeout).stdout

    def cluster_dir(self, name: str) -> Path:
        return self.state_dir / "clusters" / name

    def kubeconfig_path(self, name: str) -> Path:
        return self.cluster_dir(name) / "kubeconfig"

    def record(self, name: str) -> dict[str, Any] | None:
        """The cluster record (None: no record, so not ours); a corrupt one is a StateError."""
        data = read_json(self.cluster_dir(name) / "state.json", "cluster record")
        if data is None or data.get("created_by") != CREATED_BY:
            return None
        return data

    _state = record  # the old private name, still used by kti status

    def interrupted(self, name: str) -> bool:
        """Was this cluster's creation cut short (record still ``creating``, its creator gone)?"""
        rec = self.record(name)
        if rec is None or rec.get("phase", "ready") != "creating":
            return False
        owner = rec.get("owner")
        return owner is None or not Owner.from_json(owner).alive()

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
    def ensure(self, config: ClusterConfig, *, reuse: bool = True, recreate: bool = False,
               on_create: Callable[[], None] | None = None) -> Cluster:
        """A ready cluster for ``config``: reused when name and fingerprint match, else (re)created.

        Serialised per cluster name with a file lock (bounded wait), so parallel processes (xdist
        workers, two terminals) never race to create the same cluster. ``on_create`` runs just before
        a cluster is created (a run records its intent there); it is not called when one is reused.
        """
        with locked(self.state_dir / "locks" / f"{config.name}.lock", f"cluster {config.name}"):
            return self._ensure(config, reuse=reuse, recreate=recreate, on_create=on_create)

    def check_provider(self, name: str) -> None:
        """Refuse a cluster of ours whose record names another provider than the run's engine.

        ``kind get clusters`` only sees the provider it is run with, so a docker cluster looks absent to
        a podman run: without this check its record would be forgotten and a second cluster of the same
        name created under the other engine (images built by one engine, nodes run by the other).
        Records written before the provider was recorded are docker's (the only provider used then).
        """
        rec = self.record(name)
        provider = (rec or {}).get("provider", "docker")
        if rec is not None and provider != self.engine.name:
            raise EngineMismatchError(
                f"cluster {name!r} was created with the {provider} provider, but this run's engine is "
                f"{self.engine.name}: its images could not reach that cluster's nodes",
                hint=f"use one engine per run: pass --engine {provider} (or KTI_ENGINE={provider}), "
                f"or pick another cluster name for the {self.engine.name} run")

    def _ensure(self, config: ClusterConfig, *, reuse: bool, recreate: bool,
                on_create: Callable[[], None] | None) -> Cluster:
        started = time.monotonic()
        fingerprint = config.fingerprint()
        self.check_provider(config.name)
        if self.exists(config.name):
            rec = self.record(config.name)
            if rec is None:
                raise NotOwnedError(
                    f"a Kind cluster named {config.name!r} exists but was not created by kubetest-infra",
                    hint=f"pick another cluster name in the suite, or delete it yourself "
                    f"(kind delete cluster --name {config.name}; kti down --force)")
            if self.interrupted(config.name):
                self.delete(config.name)  # ours, but its creation was cut short: start again
            elif rec.get("fingerprint") == fingerprint and reuse and not recreate:
                self._write_kubeconfig(config.name)
                return Cluster(config.name, self.kubeconfig_path(config.name), tuple(self.nodes(config.name)),
                               self.engine.name, True, time.monotonic() - started, fingerprint)
            elif not (recreate or reuse):
                raise ClusterError(f"cluster {config.name!r} exists", hint="pass reuse=True or recreate=True")
            else:
                self.delete(config.name)
        elif (self.cluster_dir(config.name) / "state.json").exists():
            self.forget(config.name)  # a record of ours for a cluster that is gone
        if on_create is not None:
            on_create()
        return self.create(config, started)

    def create(self, config: ClusterConfig, started: float | None = None) -> Cluster:
        started = started or time.monotonic()
        problem = podman_network_problem(self.engine)
        if problem is not None:
            raise ClusterError(f"cannot create {config.name!r} with Kind's podman provider: {problem}; worker "
                               "nodes would fail to join ('lookup <cluster>-control-plane: no such host')",
                               hint=DNSNAME_HINT)
        self._check_node_image(config)
        self._check_ports(config)
        cdir = self.cluster_dir(config.name)
        cdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(cdir, 0o700)
        fingerprint = config.fingerprint()
        record = {"created_by": CREATED_BY, "fingerprint": fingerprint, "provider": self.engine.name,
                  "config": asdict(config),
                  "created": time.time(), "phase": "creating", "owner": Owner.current("kind create").to_json()}
        write_json(cdir / "state.json", record)  # intent first: an interrupted create is recognised later
        cfg_path = cdir / "kind-config.yaml"
        atomic_write(cfg_path, yaml.safe_dump(config.kind_config(), sort_keys=False))
        kubeconfig = self.kubeconfig_path(config.name)
        args = ["create", "cluster", "--name", config.name, "--config", str(cfg_path), "--kubeconfig",
                str(kubeconfig), "--wait", self.wait]
        create = retry(retry=retry_if_exception(_transient), stop=stop_after_attempt(self.create_attempts),
                       wait=wait_fixed(2), reraise=True,
                       before_sleep=lambda _: self._delete_nodes(config.name))(self._kind)
        try:
            create(*args, timeout=self.create_timeout)
        except BaseException as exc:  # a failure, a timeout or an interrupt: remove what kind left
            self._remove_failed(config.name)
            if isinstance(exc, CommandError):
                raise ClusterError(f"kind create cluster {config.name} failed (exit {exc.returncode})\n"
                                   + kind_error_summary(exc.stderr),
                                   hint="read the kind output above; 'kind create cluster --retain' keeps the "
                                   "nodes for 'kind export logs'") from exc
            raise
        os.chmod(kubeconfig, 0o600)
        write_json(cdir / "state.json", {**record, "phase": "ready"})
        return Cluster(config.name, kubeconfig, tuple(self.nodes(config.name)), self.engine.name, False,
                       time.monotonic() - started, fingerprint)

    def _delete_nodes(self, name: str) -> None:
        """Delete the nodes a failed ``kind create`` left (kind removes them itself unless it was killed)."""
        if self._kind("get", "nodes", "--name", name, timeout=60).split():
            self._kind("delete", "cluster", "--name", name, "--kubeconfig", str(self.kubeconfig_path(name)),
                       timeout=300)

    def node_containers(self, name: str) -> list[str]:
        """The engine's containers of cluster ``name`` in any state (kind's label), without asking kind."""
        res = self.engine.run("ps", "-a", "--filter", f"label={KIND_CLUSTER_LABEL}={name}", "--format",
                              "{{.Names}}", check=False, timeout=60)
        return res.stdout.split()

    def _remove_failed(self, name: str, settle: float = 5.0, timeout: float = 120.0) -> None:
        """After a failed or cut-short ``kind create``: delete its nodes (if any) and our files.

        A stopped kind can leave its own ``docker run`` children finishing a node container a moment
        later, so the engine is asked until no container of the cluster has been seen for ``settle``
        seconds. The record goes only when none is left; otherwise it stays, and the next
        ``kti up``/``down``/``gc`` sees an interrupted creation and finishes it.
        """
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        try:
            while time.monotonic() < deadline:
                if self.node_containers(name):
                    self._delete_nodes(name)
                    if self.node_containers(name):  # kind did not see them (no name yet): remove them ourselves
                        self.engine.run("rm", "-f", "-v", *self.node_containers(name), check=False, timeout=120)
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= settle:
                    break
                time.sleep(0.5)
            if self.node_containers(name):
                return
        except KtiError:
            return
        self.forget(name)

    def forget(self, name: str) -> None:
        """Drop our files of a cluster that no longer exists (record, kubeconfig, environment)."""
        shutil.rmtree(self.cluster_dir(name), ignore_errors=True)

    def delete(self, name: str, *, force: bool = False) -> None:
        """Delete a cluster this library created (its record says so); ``force`` deletes any Kind cluster."""
        validate_cluster_name(name)
        if not force and self.record(name) is None:
            raise NotOwnedError(f"cluster {name!r} has no kubetest-infra ownership record; not deleting it",
                                hint=f"it was not created by kubetest-infra (or its state directory "
                                f"{self.cluster_dir(name)} was removed); delete it yourself with "
                                f"'kind delete cluster --name {name}', or pass --force")
        self.check_provider(name)
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
        self.forget(name)

    def _write_kubeconfig(self, name: str) -> None:
        text = self._kind("get", "kubeconfig", "--name", name, timeout=60)
        atomic_write(self.kubeconfig_path(name), text, mode=0o600)

    def _check_node_image(self, config: ClusterConfig) -> None:
        first, slash, _ = (config.node_image or "").partition("/")
        if self.engine.name == "podman" and config.node_image and not (
                slash and ("." in first or ":" in first or first == "localhost")):
            # podman itself finds kti-lab/node:x as localhost/kti-lab/node:x, but kind's podman provider
            # rewrites an unqualified name to docker.io/... and tries to pull it (offline: fails deep in kind)
            local = self.engine.inspect_image(config.node_image)
            name = next((t for t in (local.repo_tags if local else ()) if t.endswith(config.node_image)),
                        f"docker.io/{config.node_image}" if slash else f"docker.io/library/{config.node_image}")
            raise NodeImageMissingError(
                f"node image {config.node_image!r} is unqualified: Kind's podman provider reads it as "
                f"docker.io/{config.node_image if slash else 'library/' + config.node_image}",
                hint=f"give the fully qualified name, here {name} (KTI_NODE_IMAGE=localhost/... for an image "
                "podman holds locally; hack/lab/podman setup prints KTI_PODMAN_NODE_IMAGE)")
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
