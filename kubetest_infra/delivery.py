"""How a run's images reach a cluster: one small seam, two targets.

:class:`KindDelivery` is today's path: the Kind loader (:mod:`.load`) streams each image into every
node and verifies it there; manifests carry the run's tag with ``imagePullPolicy: Never``.

:class:`RegistryDelivery` serves any cluster that pulls from a registry: each DD-TEST-001 tag of the
run (``localhost/{image}:{suite}-{run_id}``) is tagged ``{host}[/{prefix}]/{image}:{suite}-{run_id}``,
pushed, and resolved to its repository digest (the push's own answer, checked against the registry's
``Docker-Content-Digest`` for the tag); manifests then carry ``{repo}@sha256:…`` with
``imagePullPolicy: IfNotPresent``, so a pod can only run the bytes this run pushed. The drift guard
treats the registry like ``localhost``: a reference to it that the run did not push is refused before
anything is applied.

Both return a :class:`Delivered` per image; the orchestrator renders, applies and waits the same way
whatever the target. Credentials come from the docker config (``docker login``) or
``$KTI_REGISTRY_USER``/``$KTI_REGISTRY_PASSWORD`` (fed to ``docker login --password-stdin``), never
from argv, and never appear in logs or errors (:func:`redact`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kubetest_infra.build import BuiltImage
from kubetest_infra.cluster import Cluster
from kubetest_infra.engine import Engine
from kubetest_infra.errors import ConfigError, KtiError
from kubetest_infra.load import Loader
from kubetest_infra.tags import parse_ref

__all__ = ["Delivered", "Delivery", "KindDelivery", "Registry", "RegistryClient", "RegistryDelivery",
           "RegistryError", "parse_registry"]

USER_ENV = "KTI_REGISTRY_USER"
PASSWORD_ENV = "KTI_REGISTRY_PASSWORD"  # noqa: S105 (a variable's name, not a secret)
MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"))
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?$")
_PREFIX = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_PUSH_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")
_SECRETISH = re.compile(r"(?i)(authorization:\s*\S+\s+|password[=:]\s*|token[=:]\s*|basic\s+)\S+")


class RegistryError(KtiError):
    """The registry is unreachable, refuses our credentials, is full, or answered something unexpected."""


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced."""
    return _SECRETISH.sub(lambda m: m.group(1) + "<redacted>", text)


@dataclass(frozen=True)
class Registry:
    """Where a run pushes: ``host[:port]`` and an optional repository prefix."""

    host: str
    prefix: str = ""

    @property
    def insecure(self) -> bool:
        """Plain HTTP for a registry on this machine (as docker and containerd treat localhost)."""
        return self.host.split(":")[0] in ("localhost", "127.0.0.1")

    def repository(self, path: str) -> str:
        return "/".join(p for p in (self.host, self.prefix, path) if p)

    def __str__(self) -> str:
        return "/".join(p for p in (self.host, self.prefix) if p)


def parse_registry(text: str) -> Registry:
    """``HOST[:PORT][/PREFIX]`` → :class:`Registry`; a typed error for anything else."""
    raw = text.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
    host, _, prefix = raw.partition("/")
    if not host or not _HOST.match(host) or (prefix and not _PREFIX.match(prefix)):
        raise ConfigError(f"registry {text!r} is not HOST[:PORT][/PREFIX]",
                          hint="e.g. --registry localhost:5001 or --registry ghcr.io/my-org/e2e "
                          "(lower-case prefix, no scheme, no tag)")
    return Registry(host, prefix)


@dataclass(frozen=True)
class Delivered:
    """One image as manifests must name it on the target cluster."""

    name: str
    ref: str  # what manifests carry (the run's tag, or repo@sha256:…)
    image_id: str  # the engine's image id (config digest)
    pull_policy: str  # "Never" (loaded into the nodes) or "IfNotPresent" (pulled by digest)
    pushed: str = ""  # the registry tag pushed, if any
    image: BuiltImage | None = None  # what was delivered (Kind: verified again once the cluster is Ready)


class Delivery(Protocol):
    """How images reach a cluster."""

    pull_policy: str

    @property
    def registries(self) -> tuple[str, ...]:
        """Registries whose references the drift guard refuses unless this run delivered them."""
        ...

    def deliver(self, image: BuiltImage, cluster: Cluster | None) -> Delivered: ...


class KindDelivery:
    """Load into every Kind node (verified), reference by the run's tag."""

    pull_policy = "Never"

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    @property
    def registries(self) -> tuple[str, ...]:
        return ("localhost",)

    def deliver(self, image: BuiltImage, cluster: Cluster | None) -> Delivered:
        if cluster is None:
            raise ConfigError(f"no cluster to load {image.ref} into", hint="create the cluster first")
        self.loader.load(image, cluster.nodes)
        return Delivered(image.name, image.ref, image.image_id, self.pull_policy, image=image)


Record = Callable[[str, str], None]  # (kind "image"|"tag", name) noted *before* it is created


class RegistryDelivery:
    """Push the run's tags to ``registry`` and reference each by its repository digest."""

    pull_policy = "IfNotPresent"

    def __init__(self, engine: Engine, registry: Registry, *, record: Record | None = None,
                 env: Mapping[str, str] | None = None, docker_config: Path | None = None,
                 timeout: float = 600) -> None:
        self.engine = engine
        self.registry = registry
        self.record = record or (lambda _kind, _name: None)
        self.env = os.environ if env is None else env
        self.client = RegistryClient(registry, env=self.env, docker_config=docker_config)
        self.timeout = timeout
        self._logged_in = False

    @property
    def registries(self) -> tuple[str, ...]:
        return ("localhost", self.registry.host)

    def target(self, ref: str) -> str:
        """The registry tag of a run's reference (``localhost/x:t`` → ``HOST/PREFIX/x:t``)."""
        parsed = parse_ref(ref)
        if parsed.tag is None:
            raise ConfigError(f"cannot push {ref}: it has no tag", hint="only the run's tagged images are pushed")
        return f"{self.registry.repository(parsed.path)}:{parsed.tag}"

    def deliver(self, image: BuiltImage, cluster: Cluster | None) -> Delivered:
        del cluster  # the cluster pulls; nothing is done on its nodes
        self._login()
        tag = self.target(image.ref)
        if self.engine.inspect_image(tag) is None:
            self.record("image", tag)
        self.engine.run("tag", image.ref, tag, timeout=60)
        self.record("tag", tag)
        res = self.engine.run("push", tag, check=False, timeout=self.timeout)
        if res.returncode != 0:
            raise self._push_error(tag, res.stderr + res.stdout)
        m = _PUSH_DIGEST.search(res.stdout)
        digest = m.group(1) if m else ""
        remote = self.client.resolve(tag)
        if digest and remote != digest:
            raise RegistryError(f"the registry says {tag} is {remote}, but the push reported {digest}",
                                hint="another writer moved the tag during the push; run again with a new run id")
        pinned = f"{tag.rsplit(':', 1)[0]}@{remote}"
        return Delivered(image.name, pinned, image.image_id, self.pull_policy, tag)

    def _login(self) -> None:
        user, password = self.env.get(USER_ENV), self.env.get(PASSWORD_ENV)
        if self._logged_in or not (user and password):
            return
        res = self.engine.run("login", "--username", user, "--password-stdin", self.registry.host,
                              input=password.encode(), check=False, timeout=60)
        if res.returncode != 0:
            raise self._auth_error(self.registry.host)
        self._logged_in = True

    def _auth_error(self, what: str) -> RegistryError:
        return auth_error(self.registry, what)

    def _push_error(self, tag: str, output: str) -> RegistryError:
        text = redact(output).strip().splitlines()
        last = text[-1] if text else "no output"
        low = output.lower()
        if "unauthorized" in low or "denied" in low or "authentication required" in low:
            return self._auth_error(tag)
        if "no space" in low or "quota" in low or ("storage" in low and "full" in low):
            return RegistryError(f"registry {self.registry.host} is out of space pushing {tag}: {last}",
                                 hint="free space there ('kti gc --registry' removes old run tags) and run again")
        if "connection refused" in low or "no such host" in low or "timeout" in low or "dial tcp" in low:
            return RegistryError(f"registry {self.registry.host} is unreachable pushing {tag}: {last}",
                                 hint="check --registry and that the registry runs (lab: hack/lab/registry status)")
        return RegistryError(f"pushing {tag} failed: {last}", hint="see the engine's message above")


def auth_error(registry: Registry, what: str) -> RegistryError:
    return RegistryError(f"registry {registry.host} refused our credentials for {what}",
                         hint=f"docker login {registry.host}, or set ${USER_ENV} and ${PASSWORD_ENV}")


class RegistryClient:
    """The few calls of the distribution API a run needs: resolve a tag, delete it, list tags."""

    def __init__(self, registry: Registry, *, env: Mapping[str, str] | None = None,
                 docker_config: Path | None = None) -> None:
        self.registry = registry
        self.env = os.environ if env is None else env
        self.docker_config = docker_config

    def _auth_error(self, what: str) -> RegistryError:
        return auth_error(self.registry, what)

    # -- the registry's HTTP API (distribution spec) ------------------------------------------------
    def _url(self, repo_path: str, reference: str) -> str:
        scheme = "http" if self.registry.insecure else "https"
        return f"{scheme}://{self.registry.host}/v2/{repo_path}/manifests/{reference}"

    def _split(self, tag: str) -> tuple[str, str]:
        parsed = parse_ref(tag)
        return parsed.path, parsed.tag or parsed.digest or ""

    def _request(self, method: str, url: str) -> tuple[int, Mapping[str, str]]:
        req = urllib.request.Request(url, method=method, headers={"Accept": MANIFEST_TYPES})  # noqa: S310
        auth = self.basic_auth()
        if auth:
            req.add_header("Authorization", f"Basic {auth}")
        try:
            with urllib.request.urlopen(req, timeout=30, context=ssl.create_default_context()) as resp:  # noqa: S310
                return int(resp.status), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return int(exc.code), dict(exc.headers or {})
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"registry {self.registry.host} is unreachable: {redact(str(exc))}",
                                hint="check --registry and that the registry runs (lab: hack/lab/registry status)"
                                ) from None

    def resolve(self, tag: str) -> str:
        """The repository digest ``tag`` names now (``Docker-Content-Digest`` of a HEAD)."""
        path, ref = self._split(tag)
        status, headers = self._request("HEAD", self._url(path, ref))
        digest = {k.lower(): v for k, v in headers.items()}.get("docker-content-digest", "")
        if status in (401, 403):
            raise self._auth_error(tag)
        if status != 200 or not digest.startswith("sha256:"):
            raise RegistryError(f"registry {self.registry.host} did not resolve {tag} (HTTP {status})",
                                hint="the push may have failed half-way; run again")
        return digest

    def delete(self, tag: str) -> str:
        """Remove ``tag``'s manifest (by the digest it names now); a message when the registry does not
        allow deletion. A tag already gone counts as removed."""
        path, ref = self._split(tag)
        status, headers = self._request("HEAD", self._url(path, ref))
        if status == 404:
            return ""
        digest = {k.lower(): v for k, v in headers.items()}.get("docker-content-digest", "")
        if status != 200 or not digest:
            raise RegistryError(f"cannot resolve {tag} to delete it (HTTP {status})", hint="run 'kti gc' later")
        status, _ = self._request("DELETE", self._url(path, digest))
        if status in (200, 202, 404):
            return ""
        if status == 405:
            return f"registry {self.registry.host} does not allow deletion: {tag} stays"
        if status in (401, 403):
            raise self._auth_error(tag)
        raise RegistryError(f"deleting {tag} failed (HTTP {status})", hint="run 'kti gc --registry' later")

    def tags(self, repo_path: str) -> list[str]:
        """The tags of one repository of the registry (``/v2/<name>/tags/list``)."""
        scheme = "http" if self.registry.insecure else "https"
        req = urllib.request.Request(f"{scheme}://{self.registry.host}/v2/{repo_path}/tags/list")  # noqa: S310
        auth = self.basic_auth()
        if auth:
            req.add_header("Authorization", f"Basic {auth}")
        try:
            with urllib.request.urlopen(req, timeout=30, context=ssl.create_default_context()) as resp:  # noqa: S310
                data = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise RegistryError(f"listing tags of {repo_path} failed (HTTP {exc.code})",
                                hint="check the credentials (docker login)") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"registry {self.registry.host} is unreachable: {redact(str(exc))}",
                                hint="check --registry") from None
        return [str(t) for t in data.get("tags") or []]

    # -- credentials ----------------------------------------------------------------------------------
    def basic_auth(self) -> str:
        """base64 ``user:password`` from the env or the docker config's ``auths`` (never logged)."""
        user, password = self.env.get(USER_ENV), self.env.get(PASSWORD_ENV)
        if user and password:
            return base64.b64encode(f"{user}:{password}".encode()).decode()
        cfg = self.docker_config or Path(self.env.get("DOCKER_CONFIG", str(Path.home() / ".docker"))) / "config.json"
        try:
            auths = json.loads(cfg.read_text()).get("auths") or {}
        except (OSError, ValueError):
            return ""
        for key in (self.registry.host, f"https://{self.registry.host}", f"http://{self.registry.host}"):
            entry = auths.get(key) or {}
            if isinstance(entry, dict) and entry.get("auth"):
                return str(entry["auth"])
        return ""


def delivered_refs(delivered: Sequence[Delivered]) -> dict[str, str]:
    return {d.name: d.ref for d in delivered}
