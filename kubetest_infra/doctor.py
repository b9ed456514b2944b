"""``kti doctor``: what this machine has for kubetest-infra, each problem with a hint."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubetest_infra import labenv
from kubetest_infra.cluster import DNSNAME_HINT, podman_network_problem
from kubetest_infra.engine import get_engine
from kubetest_infra.errors import KtiError
from kubetest_infra.runner import Runner, SubprocessRunner
from kubetest_infra.sources import HELM_ENV, HELM_HINT, KUBECTL_ENV, KUBECTL_HINT

MIN_FREE_GB = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = True


def _version(runner: Runner, argv: list[str]) -> str:
    try:
        result = runner.run(argv, check=False, timeout=20)
    except KtiError:
        return ""
    text = (result.stdout or result.stderr).strip()
    return ", ".join(line.strip() for line in text.splitlines()[:2]) if text else ""


def _tool(runner: Runner, name: str, args: list[str], *, variable: str | None, hint: str, required: bool = False,
          env: Mapping[str, str] | None = None) -> Check:
    """A tool as the library finds it: ``$variable`` when set, else ``name`` on PATH; with its version."""
    env = os.environ if env is None else env
    explicit = env.get(variable) if variable else None
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            return Check(name, False, f"${variable}={explicit} is not an executable file", hint, required)
        path, how = explicit, f"${variable}"
    else:
        found = shutil.which(name, path=env.get("PATH"))
        if found is None:
            unset = f" (${variable} not set)" if variable else ""
            return Check(name, False, f"not found on PATH{unset}", hint, required)
        path, how = found, "PATH"
    return Check(name, True, f"{path} ({how}): {_version(runner, [path, *args]) or 'version unknown'}",
                 required=required)


def lab_settings() -> Check:
    """Which lab settings file (``.kti/env``) fills variables the environment does not set."""
    path, values = labenv.settings()
    if path is None:
        return Check("lab settings", True, "no .kti/env here or above, none in the checkout, $KTI_ENV_FILE unset",
                     required=False)
    if not path.is_file():
        return Check("lab settings", False, f"$KTI_ENV_FILE={path} does not exist",
                     "point KTI_ENV_FILE at the lab's .kti/env (hack/setup writes it), or unset it", required=False)
    shown = ", ".join(sorted(values)) or "none (all set in the environment)"
    return Check("lab settings", True, f"{path}; used for: {shown}", required=False)


def _disk(label: str, path: str) -> Check:
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return Check(f"disk ({label})", False, f"{path}: {exc.strerror}", "check the path", required=False)
    free = usage.free / 1e9
    ok = free >= MIN_FREE_GB
    return Check(f"disk ({label})", ok, f"{path}: {free:.1f} GB free of {usage.total / 1e9:.0f} GB",
                 "" if ok else f"free space: images and Kind nodes need about {MIN_FREE_GB:.0f} GB "
                 "(try 'kti gc --older-than 1d')", required=False)


INOTIFY_MIN = {"max_user_instances": 512, "max_user_watches": 524288}


def inotify(proc: Path = Path("/proc/sys/fs/inotify")) -> Check:
    """kind's known issue: low inotify limits keep a further cluster's kubelet from starting."""
    low = []
    for key, want in INOTIFY_MIN.items():
        try:
            have = int((proc / key).read_text())
        except (OSError, ValueError):
            return Check("inotify limits", True, "not Linux, or not readable: not checked", required=False)
        if have < want:
            low.append((key, have, want))
    if not low:
        return Check("inotify limits", True, ", ".join(f"{k} >= {v}" for k, v in INOTIFY_MIN.items()),
                     required=False)
    return Check("inotify limits", False, "; ".join(f"fs.inotify.{k} = {h} (want {w})" for k, h, w in low),
                 "several Kind clusters at once exhaust them and a new node's kubelet cannot start: "
                 + " && ".join(f"sudo sysctl -w fs.inotify.{k}={w}" for k, _, w in low), required=False)


def run_checks(engine_name: str | None = None, runner: Runner | None = None,
               env: Mapping[str, str] | None = None) -> list[Check]:
    """``env``: where tools are looked up (default: the environment over the lab settings, docs/labs.md)."""
    env = labenv.environ() if env is None else env
    runner = runner or SubprocessRunner()
    checks: list[Check] = []
    root = ""
    try:
        engine = get_engine(engine_name, runner)
        info = engine.info()
        root = info.root_dir
        builder = ("BuildKit" if info.buildkit else "classic builder (no buildx plugin)") if info.name == "docker" \
            else "Buildah"
        mode = {True: "rootless", False: "rootful", None: "rootful/rootless unknown"}[info.rootless]
        checks.append(Check("engine", True, f"{info.name} {info.version}, {builder}, {mode}, storage "
                            f"{info.storage_driver or 'unknown'} at {root or 'unknown'}; Kind provider {info.name}"))
        if engine.name == "podman":
            problem = podman_network_problem(engine)
            checks.append(Check("podman network", problem is None, problem or "container names resolve on the "
                                "kind network (Kind's podman provider can join workers)", DNSNAME_HINT if problem
                                else "", required=False))
    except KtiError as exc:
        checks.append(Check("engine", False, exc.message, exc.hint))
    checks.append(lab_settings())
    checks.append(_tool(runner, "kind", ["version"], variable="KTI_KIND", env=env,
                        hint="install kind (go install sigs.k8s.io/kind@v0.30.0) or set $KTI_KIND to its path; in "
                        "the offline lab hack/setup writes it to .kti/env (docs/labs.md)"))
    checks.append(_tool(runner, "kubectl", ["version", "--client"], variable=KUBECTL_ENV, env=env,
                        hint=f"{KUBECTL_HINT} (Kustomize overlays need it)"))
    checks.append(_tool(runner, "helm", ["version", "--short"], variable=HELM_ENV, env=env,
                        hint=f"{HELM_HINT} (Helm charts need it)"))
    checks.append(_tool(runner, "git", ["--version"], variable=None, env=env,
                        hint="install git for image provenance labels"))
    if root and os.path.isdir(root):
        checks.append(_disk("engine storage", root))
    elif root:
        checks.append(Check("disk (engine storage)", False, f"{root} is not visible from here (a remote engine or "
                            "a podman machine VM)", "check its free space inside the engine: 'docker system df' / "
                            "'podman system df' (a full podman machine disk blocks even 'kind delete')",
                            required=False))
    checks.append(_disk("working directory", str(Path.cwd())))
    checks.append(inotify())
    return checks
