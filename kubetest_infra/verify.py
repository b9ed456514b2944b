"""What runs: each container's spec reference and the image id the kubelet runs, against the run's.

``status.containerStatuses[].image`` is not evidence: the runtime may report any tag that points at
the same image id. What proves that a pod runs the image this run built is the pair

- ``spec.containers[].image`` — the exact reference render wrote (``localhost/app:suite-RUNID``), and
- ``status.containerStatuses[].imageID`` — the id of the image the container was started from,

compared with :attr:`Environment.images` and :attr:`Environment.image_ids`. Usage in a test::

    from kubetest_infra.verify import verify_running_images

    def test_runs_what_was_built(kti_env):
        verify_running_images(kti_env, "app=web")   # raises ImageMismatchError otherwise
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubernetes import client

from kubetest_infra.errors import KtiError

if TYPE_CHECKING:
    from kubetest_infra.state import Environment


class ImageMismatchError(KtiError):
    """A container of the run's namespace does not run the image the run built for its reference."""


@dataclass(frozen=True)
class RunningImage:
    pod: str
    container: str
    spec_image: str  # what the manifest (as rendered) asks for
    status_image: str  # what the kubelet reports: any tag of the same id
    image_id: str  # the id the container runs ("" before it started)
    image: str | None  # the run's image name whose reference spec_image is, else None (not ours)
    expected_id: str | None  # that image's id in the run

    @property
    def ok(self) -> bool:
        """Not one of the run's references, or started from exactly the run's image id."""
        return self.expected_id is None or (bool(self.image_id) and same_id(self.image_id, self.expected_id))


def same_id(a: str, b: str) -> bool:
    """``sha256:abc``, ``docker.io/x@sha256:abc`` and ``abc`` name the same image."""
    return a.rsplit("sha256:", 1)[-1] == b.rsplit("sha256:", 1)[-1] != ""


def running_images(env: Environment, selector: str = "", core: Any = None) -> list[RunningImage]:
    """Every started container of the live (not terminating) pods in the run's namespace, optionally only
    those matching a label ``selector`` (``app=web``)."""
    if core is None:
        core = client.CoreV1Api(env.api_client())
    by_ref = {ref: name for name, ref in env.images.items()}
    out: list[RunningImage] = []
    for pod in core.list_namespaced_pod(env.namespace, label_selector=selector or None, _request_timeout=30).items:
        if pod.metadata.deletion_timestamp is not None:
            continue
        statuses = {s.name: s for s in (pod.status.container_statuses or [])}
        for c in pod.spec.containers:
            s = statuses.get(c.name)
            name = by_ref.get(c.image)
            out.append(RunningImage(pod.metadata.name, c.name, c.image, getattr(s, "image", "") or "",
                                    getattr(s, "image_id", "") or "", name,
                                    env.image_ids.get(name) if name else None))
    return out


def verify_running_images(env: Environment, selector: str = "", core: Any = None) -> list[RunningImage]:
    """:func:`running_images`, raising :class:`ImageMismatchError` unless at least one container runs a
    reference of the run and every such container runs exactly the run's image id."""
    found = running_images(env, selector, core)
    ours = [r for r in found if r.image is not None]
    where = f"namespace {env.namespace}" + (f", pods {selector}" if selector else "")
    if not ours:
        raise ImageMismatchError(f"no container in {where} runs an image of run {env.run_id} "
                                 f"(containers: {', '.join(f'{r.pod}/{r.container}={r.spec_image}' for r in found)})",
                                 hint="deploy ${image:NAME} placeholders so render writes the run's references; "
                                      "check the label selector")
    bad = [r for r in ours if not r.ok]
    if bad:
        lines = [f"{r.pod}/{r.container}: spec {r.spec_image}, runs {r.image_id or '(not started)'}, "
                 f"built {r.expected_id}" for r in bad]
        raise ImageMismatchError(f"{len(bad)} container(s) in {where} do not run the image this run built:\n  "
                                 + "\n  ".join(lines),
                                 hint="the node holds another image under the run's reference: reload it "
                                      "(kti up rebuilds and reloads), and read the image-ids annotation rollout")
    return found
