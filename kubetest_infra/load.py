"""Loading built images into every node of a Kind cluster, verified.

For each node, concurrently:

Image ids are read from the node's containerd with ``ctr`` (the manifest's config digest), not
``crictl``: crictl is not in every node image (the offline lab cannot build it).

- the node already resolves the reference to the expected image id → nothing to do (``present``);
- the node has the image id under another name (a reused image, retagged by a new run) → tag it in
  the node's containerd (``retagged``): no bytes move;
- otherwise the image is streamed: one ``docker save REF`` fanned out to ``docker exec -i NODE ctr -n
  k8s.io images import -`` on every node that needs it, with no temp file (``loaded``). Podman goes
  through an archive (``podman save -o``), removed after.

Then every node must resolve the exact reference to the expected image id, or a
:class:`LoadError` names the node and both ids. Per-node timings come back as values.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from kubetest_infra.build import BuiltImage
from kubetest_infra.engine import Engine
from kubetest_infra.errors import CommandError, KtiError
from kubetest_infra.tags import parse_ref

Action = Literal["present", "retagged", "loaded"]


class LoadError(KtiError):
    """An image did not reach a node intact."""


@dataclass(frozen=True)
class NodeLoad:
    node: str
    action: Action
    seconds: float


@dataclass(frozen=True)
class LoadedImage:
    ref: str
    image_id: str
    nodes: tuple[NodeLoad, ...]
    seconds: float

    @property
    def transferred(self) -> bool:
        return any(n.action == "loaded" for n in self.nodes)


_RESOLVE = (
    'd=$(ctr -n k8s.io images ls "name==$1" | awk \'NR==2 {print $3}\') && [ -n "$d" ] '
    '&& ctr -n k8s.io content get "$d"'
)


def _json_doc(text: str) -> dict[str, Any]:
    """A JSON object from ctr's output, or {} when there is none."""
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def normalize_ref(ref: str) -> str:
    """containerd's name for a reference: ``redis:7`` → ``docker.io/library/redis:7``."""
    parsed = parse_ref(ref)
    if parsed.domain:
        return ref
    path = parsed.path if "/" in parsed.path else f"library/{parsed.path}"
    tag = f":{parsed.tag}" if parsed.tag else ""
    digest = f"@{parsed.digest}" if parsed.digest else ""
    return f"docker.io/{path}{tag}{digest}"


class Loader:
    """Loads images into Kind nodes through the run's engine."""

    def __init__(self, engine: Engine, snapshotter: str = "overlayfs", timeout: float = 600) -> None:
        self.engine = engine
        self.snapshotter = snapshotter
        self.timeout = timeout

    def node_images(self, node: str) -> dict[str, str]:
        """Normalised reference → target (manifest) digest, from the node's containerd."""
        out = self.engine.run("exec", node, "ctr", "-n", "k8s.io", "images", "ls", timeout=60).stdout
        images: dict[str, str] = {}
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[2].startswith("sha256:"):
                images[parts[0]] = parts[2]
        return images

    def config_digest(self, node: str, target: str) -> str | None:
        """The image id (config digest) behind a manifest or index digest in the node's content store."""
        res = self.engine.run("exec", node, "ctr", "-n", "k8s.io", "content", "get", target, check=False,
                              timeout=60)
        doc = _json_doc(res.stdout) if res.returncode == 0 else {}
        if isinstance(doc.get("config"), dict):
            return str(doc["config"].get("digest"))
        for entry in doc.get("manifests") or []:  # an index: the linux/amd64 (or only) manifest
            platform = entry.get("platform") or {}
            if platform.get("os", "linux") == "linux" and platform.get("architecture", "amd64") == "amd64":
                return self.config_digest(node, str(entry.get("digest")))
        return None

    def node_image_id(self, node: str, ref: str) -> str | None:
        """The image id the node's containerd resolves ``ref`` to, or None (one exec per call)."""
        # The reference is a positional parameter of a fixed script, never part of the script text.
        res = self.engine.run("exec", node, "sh", "-c", _RESOLVE, "kti", normalize_ref(ref), check=False, timeout=60)
        doc = _json_doc(res.stdout) if res.returncode == 0 else {}
        if not doc:
            return None
        if isinstance(doc.get("config"), dict):
            return str(doc["config"].get("digest"))
        target = self.node_images(node).get(normalize_ref(ref))  # an index: resolve its platform manifest
        return self.config_digest(node, target) if target else None

    def node_tags(self, node: str, image_id: str, ref: str) -> list[str]:
        """Other tags of the same repository on the node that point at ``image_id``."""
        repo = normalize_ref(ref).rsplit(":", 1)[0]
        seen: dict[str, str | None] = {}
        found = []
        for name, target in self.node_images(node).items():
            if not name.startswith(repo + ":") or name == normalize_ref(ref):
                continue
            if target not in seen:
                seen[target] = self.config_digest(node, target)
            if seen[target] == image_id:
                found.append(name)
        return found

    def load(self, image: BuiltImage, nodes: Sequence[str]) -> LoadedImage:
        """Load one image into ``nodes`` (all concurrently) and verify every node."""
        if not nodes:
            raise LoadError(f"no nodes to load {image.ref} into", hint="create the cluster first")
        started = time.monotonic()
        local = self.engine.inspect_image(image.ref)
        if local is None or local.id != image.image_id:
            raise LoadError(
                f"{image.ref} does not resolve to the built image {image.image_id[:19]} in the {self.engine.name} "
                f"engine (found {local.id[:19] if local else 'nothing'})",
                hint="the tag was removed or overwritten after the build; build again and load the returned ref")
        with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="kti-load") as pool:
            checked = list(pool.map(lambda n: self._reuse_on_node(image, n), nodes))
        pending = [n for n, r in zip(nodes, checked, strict=True) if r is None]
        transfer = self._transfer(image, pending) if pending else {}
        results = [r if r is not None else transfer[n] for n, r in zip(nodes, checked, strict=True)]
        # "present" was just read from the node itself; verify what changed
        self.verify(image, [r.node for r in results if r.action != "present"])
        return LoadedImage(image.ref, image.image_id, tuple(results), time.monotonic() - started)

    def verify(self, image: BuiltImage, nodes: Sequence[str]) -> None:
        if not nodes:
            return
        with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="kti-verify") as pool:
            found = list(pool.map(lambda n: self.node_image_id(n, image.ref), nodes))
        bad = [f"{node}: {got or 'missing'}" for node, got in zip(nodes, found, strict=True) if got != image.image_id]
        if bad:
            raise LoadError(f"{image.ref} (expected {image.image_id}) is not intact on: " + "; ".join(bad),
                            hint="load it again; if it keeps failing check the node's disk ('kti doctor')")

    def _reuse_on_node(self, image: BuiltImage, node: str) -> NodeLoad | None:
        """``present`` or ``retagged`` when no bytes need to move to this node, else None."""
        t0 = time.monotonic()
        if self.node_image_id(node, image.ref) == image.image_id:
            return NodeLoad(node, "present", time.monotonic() - t0)
        others = self.node_tags(node, image.image_id, image.ref)
        if others:
            res = self.engine.run("exec", node, "ctr", "-n", "k8s.io", "images", "tag", "--force", others[0],
                                  normalize_ref(image.ref), check=False, timeout=60)
            if res.returncode == 0 and self.node_image_id(node, image.ref) == image.image_id:
                return NodeLoad(node, "retagged", time.monotonic() - t0)
        return None

    def _transfer(self, image: BuiltImage, nodes: Sequence[str]) -> dict[str, NodeLoad]:
        """One ``save``, streamed into every node's importer at once (podman: through an archive)."""
        t0 = time.monotonic()
        importers = [[self.engine.binary, "exec", "-i", node, "ctr", "-n", "k8s.io", "images", "import",
                      "--platform", "linux/amd64", f"--snapshotter={self.snapshotter}", "-"] for node in nodes]
        archive = self._save_archive(image.ref) if self.engine.name == "podman" else None
        try:
            producer = ["cat", archive] if archive else [self.engine.binary, "save", image.ref]
            results = self.engine.runner.pipe(producer, importers, timeout=self.timeout)
        except CommandError as exc:
            raise LoadError(f"saving {image.ref} from the {self.engine.name} engine failed: {exc.message}",
                            hint="check the engine ('kti doctor') and its free disk space") from exc
        finally:
            if archive:
                os.unlink(archive)
        failed = [f"{node}: {r.stderr.strip()[-300:] or f'exit {r.returncode}'}"
                  for node, r in zip(nodes, results, strict=True) if r.returncode != 0]
        if failed:
            raise LoadError(f"loading {image.ref} failed on " + "; ".join(failed),
                            hint="check the nodes are running ('kind get nodes') and have disk space")
        seconds = time.monotonic() - t0
        return {node: NodeLoad(node, "loaded", seconds) for node in nodes}

    def _save_archive(self, ref: str) -> str:
        fd, path = tempfile.mkstemp(prefix="kti-image-", suffix=".tar")
        os.close(fd)
        try:
            self.engine.run("save", "--format", "docker-archive", "-o", path, ref, timeout=self.timeout)
        except BaseException:
            os.unlink(path)
            raise
        return path
