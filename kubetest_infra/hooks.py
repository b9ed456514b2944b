"""Helm hooks on the one pipeline: phases in order, waited for, delete policies, re-run only on change.

A chart's objects become phases (:func:`plan`), which the orchestrator applies and waits for one after
the other with the same applier and waiter as any manifest — hook Jobs are waited for like any Job
(the gap of tilt #6315, where ``tilt ci`` returned before a chart's Jobs had run)::

    pre hooks     each alone, by helm.sh/hook-weight, then kind (apply order), then name
    the release   every other object at once (apply's rank order), waited for together
    post hooks    as the pre hooks

As in ``helm install`` (``pkg/action/hooks.go``): a hook without ``helm.sh/hook-delete-policy`` gets
``before-hook-creation`` (the old object is deleted, and its deletion waited for, before the new one
is created); ``hook-failed`` deletes a hook whose wait failed, before the error is raised;
``hook-succeeded`` deletes the event's hooks once all of them succeeded, last one first; a
CustomResourceDefinition is never deleted.

Unlike ``helm``, hooks run again only when they changed. Each hook's digest (its rendered object,
whose pod template carries the image-id annotation render adds, so a rebuilt image changes it) is
recorded, after its event's hooks succeeded, in the ConfigMap ``kti-hooks-RELEASE`` of the suite's
namespace. No record: the release is installed (``pre-install``/``post-install`` hooks run); a
record: it is upgraded (``pre-upgrade``/``post-upgrade``), and an event whose hooks all have their
recorded digest is skipped (not applied, not waited for); if one of them changed, all of that
event's hooks run again in order (they may use each other's objects). The record lives and dies with the namespace, like
helm's release secret. ``test``, ``pre-delete``, ``post-delete`` and rollback hooks are never run
(``kti`` neither tests, uninstalls nor rolls back a release: removing the namespace removes it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetest_infra.apply import Applied, Applier, rank

Obj = dict[str, Any]

HOOK = "helm.sh/hook"
WEIGHT = "helm.sh/hook-weight"
DELETE_POLICY = "helm.sh/hook-delete-policy"
BEFORE_CREATION = "before-hook-creation"
SUCCEEDED = "hook-succeeded"
FAILED = "hook-failed"
POLICIES = (BEFORE_CREATION, SUCCEEDED, FAILED)
RUN_EVENTS = ("pre-install", "post-install", "pre-upgrade", "post-upgrade")
KNOWN_EVENTS = (*RUN_EVENTS, "pre-delete", "post-delete", "pre-rollback", "post-rollback", "test", "test-success")
RECORD_PREFIX = "kti-hooks-"
DIGEST_ANNOTATION = "kubetest-infra.io/hook-digest"


@dataclass(frozen=True)
class Hook:
    """A hook's annotations, read as helm reads them."""

    events: tuple[str, ...]
    weight: int = 0
    delete_policies: tuple[str, ...] = ()

    @property
    def policies(self) -> tuple[str, ...]:
        """The delete policies in effect (helm's default: ``before-hook-creation``)."""
        return self.delete_policies or (BEFORE_CREATION,)

    @property
    def runs(self) -> bool:
        """Does kti ever run it (an install or upgrade event)?"""
        return any(e in RUN_EVENTS for e in self.events)


def hook_of(obj: Mapping[str, Any]) -> Hook | None:
    """The hook an object declares (``helm.sh/hook``), or None for an ordinary release object.

    Like helm: events and policies are comma-separated and case-insensitive; a weight that is not an
    integer counts as 0; an unknown event makes the whole object no hook helm would keep.
    """
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(HOOK)
    if not isinstance(raw, str) or not raw.strip():
        return None
    events = tuple(e.strip().lower() for e in raw.split(",") if e.strip())
    try:
        weight = int(str(annotations.get(WEIGHT, "0")).strip())
    except ValueError:
        weight = 0
    policies = tuple(p.strip().lower() for p in str(annotations.get(DELETE_POLICY, "")).split(",") if p.strip())
    return Hook(events, weight, policies)


def problems(hook: Hook, label: str) -> list[str]:
    """What kti cannot honour in a hook's annotations (reported before anything starts)."""
    out = []
    unknown = [e for e in hook.events if e not in KNOWN_EVENTS]
    if unknown:
        out.append(f"{label}: unknown helm.sh/hook event(s) {', '.join(unknown)} (known: {', '.join(KNOWN_EVENTS)})")
    bad = [p for p in hook.delete_policies if p not in POLICIES]
    if bad:
        out.append(f"{label}: unknown helm.sh/hook-delete-policy {', '.join(bad)} (known: {', '.join(POLICIES)})")
    return out


def key_of(obj: Mapping[str, Any]) -> str:
    """The record key of a hook object: ``Kind.name`` (valid as a ConfigMap data key)."""
    return f"{obj.get('kind')}.{(obj.get('metadata') or {}).get('name')}"


def digest(obj: Mapping[str, Any]) -> str:
    """A digest of a rendered hook object (its image-id annotation included)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def hook_order(obj: Mapping[str, Any], hook: Hook) -> tuple[int, int, str]:
    """helm's order within an event: weight, then kind (kti's apply order), then name."""
    return hook.weight, rank(dict(obj)), str((obj.get("metadata") or {}).get("name"))


@dataclass(frozen=True)
class Phase:
    """Objects applied together, then waited for, before the next phase starts."""

    label: str  # "pre-install hook Job/migrate (weight -5)" or "release"
    objects: tuple[Obj, ...]
    hook: Hook | None = None
    event: str = ""
    key: str = ""  # record key of a hook
    digest: str = ""
    run: bool = True  # False: unchanged since it last succeeded (skipped)


@dataclass(frozen=True)
class Plan:
    install: bool  # no record yet: install events, else upgrade events
    phases: tuple[Phase, ...]
    dropped: tuple[str, ...] = field(default=())  # hooks of events kti never runs


def plan(objects: Sequence[Obj], hooks: Sequence[Hook | None], record: Mapping[str, str] | None) -> Plan:
    """The phases of a release (pure). ``record``: the recorded hook digests, None when none exists."""
    install = record is None
    pre, post = ("pre-install", "post-install") if install else ("pre-upgrade", "post-upgrade")
    release: list[Obj] = []
    before: list[tuple[Obj, Hook]] = []
    after: list[tuple[Obj, Hook]] = []
    dropped: list[str] = []
    for obj, hook in zip(objects, hooks, strict=True):
        if hook is None:
            release.append(obj)
        elif pre in hook.events:
            before.append((obj, hook))
        elif post in hook.events:
            after.append((obj, hook))
        else:
            dropped.append(f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')} "
                           f"({', '.join(hook.events)})")

    def hook_phases(items: list[tuple[Obj, Hook]], event: str) -> list[Phase]:
        ordered = [(obj, hook, key_of(obj), digest(obj)) for obj, hook in sorted(items, key=lambda i: hook_order(*i))]
        # An event's hooks may need each other's objects (a ConfigMap hook for a Job hook): one changed,
        # all of the event run again, in order, as helm runs them.
        run = install or any((record or {}).get(key) != dig for _, _, key, dig in ordered)
        return [Phase(f"{event} hook {key.replace('.', '/', 1)} (weight {hook.weight})", (obj,), hook, event, key,
                      dig, run) for obj, hook, key, dig in ordered]

    phases = [*hook_phases(before, pre)]
    if release:
        phases.append(Phase("release", tuple(release)))
    phases += hook_phases(after, post)
    return Plan(install, tuple(phases), tuple(dropped))


# -- running the phases ---------------------------------------------------------------------------
ApplyAndWait = Callable[[Sequence[Obj]], list[Applied]]


@dataclass(frozen=True)
class Outcome:
    """What a release run did: the applied objects and, per hook, ``ran`` or ``unchanged``."""

    applied: tuple[Applied, ...]
    hooks: Mapping[str, str]
    deleted: tuple[str, ...] = ()


class Release:
    """Runs a :class:`Plan` with the orchestrator's applier, waiter and hook record.

    ``apply_and_wait(objects)`` applies objects and waits for their workloads (the orchestrator's own
    apply and waiter); this class adds the order, the delete policies and the record.
    """

    def __init__(self, applier: Applier, namespace: str, release: str | None, apply_and_wait: ApplyAndWait,
                 delete_timeout: float = 120.0) -> None:
        self.applier = applier
        self.namespace = namespace
        self.release = release
        self.apply_and_wait = apply_and_wait
        self.delete_timeout = delete_timeout

    @property
    def record_name(self) -> str:
        return f"{RECORD_PREFIX}{self.release}"

    def record(self) -> dict[str, str] | None:
        """The recorded hook digests (None: no record, the release is installed)."""
        if self.release is None:
            return None
        live = self.applier.get({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": self.record_name}}, self.namespace)
        if live is None:
            return None
        return {str(k): str(v) for k, v in (live.get("data") or {}).items()}

    def run(self, p: Plan) -> Outcome:
        applied: list[Applied] = []
        outcome: dict[str, str] = {}
        deleted: list[str] = []
        group: list[Phase] = []
        for phase in p.phases:
            if phase.hook is None:
                self._finish(group, p, deleted)
                group = []
                applied += self.apply_and_wait(list(phase.objects))
                continue
            if group and group[-1].event != phase.event:
                self._finish(group, p, deleted)
                group = []
            group.append(phase)
            if not phase.run:
                outcome[phase.key] = "unchanged"
                continue
            if BEFORE_CREATION in phase.hook.policies:
                deleted += self._delete(phase)
            try:
                applied += self.apply_and_wait(list(phase.objects))
            except BaseException:
                if FAILED in phase.hook.policies:
                    deleted += self._delete(phase)
                raise
            outcome[phase.key] = "ran"
        self._finish(group, p, deleted)
        return Outcome(tuple(applied), outcome, tuple(deleted))

    def _delete(self, phase: Phase) -> list[str]:
        objs = [o for o in phase.objects if o.get("kind") != "CustomResourceDefinition"]
        return self.applier.delete(objs, namespace=self.namespace, wait=self.delete_timeout) if objs else []

    def _finish(self, group: list[Phase], p: Plan, deleted: list[str]) -> None:
        """An event's hooks all succeeded: delete the ``hook-succeeded`` ones, last first; record them."""
        if not any(phase.run for phase in group) or self.release is None:
            return  # nothing ran: nothing to delete, the record already says so
        for phase in reversed(group):
            if phase.run and phase.hook is not None and SUCCEEDED in phase.hook.policies:
                deleted += self._delete(phase)
        data = dict(self.record() or {})
        data.update({ph.key: ph.digest for ph in group})
        self.applier.apply([{"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": self.record_name,
                                          "labels": {"app.kubernetes.io/managed-by": "kubetest-infra"},
                                          "annotations": {"kubetest-infra.io/release": self.release,
                                                          "kubetest-infra.io/last-events":
                                                              "install" if p.install else "upgrade"}},
                             "data": data}], namespace=self.namespace)
