"""Helm hooks as phases (pure planning) and their delete policies and record (a recording applier)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from kubetest_infra import hooks
from kubetest_infra.apply import Applied
from kubetest_infra.hooks import Hook, Phase, Release, hook_of, plan

Obj = dict[str, Any]


def obj(kind: str, name: str, hook: str | None = None, weight: str | None = None, policy: str | None = None,
        image: str = "localhost/app:s-1") -> Obj:
    annotations = {k: v for k, v in (("helm.sh/hook", hook), ("helm.sh/hook-weight", weight),
                                      ("helm.sh/hook-delete-policy", policy)) if v is not None}
    o: Obj = {"apiVersion": "batch/v1" if kind == "Job" else "v1", "kind": kind,
              "metadata": {"name": name, "annotations": annotations}}
    if kind == "Job":
        o["spec"] = {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}
    return o


def hooks_of(objects: Sequence[Obj]) -> list[Hook | None]:
    return [hook_of(o) for o in objects]


def labels(phases: Sequence[Phase]) -> list[str]:
    return [p.label for p in phases]


@pytest.mark.parametrize(("annotations", "expected"), [
    ({}, None),
    ({"helm.sh/hook": "pre-install"}, Hook(("pre-install",))),
    ({"helm.sh/hook": " Pre-Install , pre-upgrade ", "helm.sh/hook-weight": "-5"},
     Hook(("pre-install", "pre-upgrade"), -5)),
    ({"helm.sh/hook": "post-install", "helm.sh/hook-weight": "heavy"}, Hook(("post-install",), 0)),
    ({"helm.sh/hook": "pre-install", "helm.sh/hook-delete-policy": "hook-succeeded, Hook-Failed"},
     Hook(("pre-install",), 0, ("hook-succeeded", "hook-failed"))),
])
def test_hook_annotations_are_read_as_helm_reads_them(annotations: dict[str, str], expected: Hook | None) -> None:
    assert hook_of({"metadata": {"annotations": annotations}}) == expected


def test_without_a_delete_policy_before_hook_creation_applies() -> None:
    assert Hook(("pre-install",)).policies == ("before-hook-creation",)
    assert Hook(("pre-install",), 0, ("hook-succeeded",)).policies == ("hook-succeeded",)


def test_unknown_events_and_policies_are_reported() -> None:
    found = hooks.problems(Hook(("pre-instal",), 0, ("on-success",)), "Job/x")
    assert any("unknown helm.sh/hook event(s) pre-instal" in p for p in found)
    assert any("unknown helm.sh/hook-delete-policy on-success" in p for p in found)
    assert hooks.problems(Hook(("test",)), "x") == [] and not Hook(("test",)).runs


def test_phases_pre_hooks_by_weight_kind_and_name_then_the_release_then_post_hooks() -> None:
    objects = [obj("Deployment", "web"),
               obj("Job", "migrate", "pre-install", "-5"),
               obj("Job", "seed", "post-install"),
               obj("ConfigMap", "settings", "pre-install", "-5"),
               obj("Job", "b-check", "pre-install,pre-upgrade", "1"),
               obj("Job", "a-check", "pre-install", "1"),
               obj("Service", "web"),
               obj("Pod", "smoke", "test")]
    p = plan(objects, hooks_of(objects), record=None)
    assert p.install
    assert labels(p.phases) == [
        "pre-install hook ConfigMap/settings (weight -5)",  # same weight: kind (apply order) first
        "pre-install hook Job/migrate (weight -5)",
        "pre-install hook Job/a-check (weight 1)",  # same weight and kind: name
        "pre-install hook Job/b-check (weight 1)",
        "release",
        "post-install hook Job/seed (weight 0)",
    ]
    assert [o["kind"] for o in p.phases[4].objects] == ["Deployment", "Service"]
    assert p.dropped == ("Pod/smoke (test)",)
    assert all(ph.run for ph in p.phases)


def test_with_a_record_the_upgrade_hooks_run_and_an_unchanged_event_is_skipped() -> None:
    objects = [obj("Job", "migrate", "pre-install,pre-upgrade"), obj("Job", "only-install", "pre-install"),
               obj("Deployment", "web"), obj("Job", "notify", "post-upgrade")]
    first = plan(objects, hooks_of(objects), record=None)
    record = {ph.key: ph.digest for ph in first.phases if ph.hook is not None}
    record["Job.notify"] = hooks.digest(objects[3])
    again = plan(objects, hooks_of(objects), record=record)
    assert not again.install
    assert labels(again.phases) == ["pre-upgrade hook Job/migrate (weight 0)", "release",
                                    "post-upgrade hook Job/notify (weight 0)"]
    assert [ph.run for ph in again.phases] == [False, True, False], "unchanged hooks are not run again"


def test_a_changed_image_reruns_its_event_and_every_hook_of_that_event() -> None:
    objects = [obj("ConfigMap", "settings", "pre-install,pre-upgrade", "-10"),
               obj("Job", "migrate", "pre-install,pre-upgrade", "-5"), obj("Deployment", "web")]
    record = {ph.key: ph.digest for ph in plan(objects, hooks_of(objects), None).phases if ph.hook}
    changed = [objects[0], obj("Job", "migrate", "pre-install,pre-upgrade", "-5", image="localhost/app:s-2"),
               objects[2]]
    again = plan(changed, hooks_of(changed), record=record)
    assert [ph.run for ph in again.phases] == [True, True, True], "the ConfigMap the Job reads is applied again too"


# -- running: a recording applier stands in for the API (the real one runs in the kind tier) --------------
class Recorder:
    def __init__(self, fail: set[str] | None = None, record: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail or set()
        self.live: dict[str, Obj] = {}
        if record is not None:
            self.live["ConfigMap/kti-hooks-rel"] = {"data": record}

    def get(self, o: Obj, namespace: str | None = None) -> Obj | None:
        return self.live.get(f"{o['kind']}/{o['metadata']['name']}")

    def apply(self, objects: Sequence[Obj], namespace: str | None = None) -> list[Applied]:
        for o in objects:
            name = f"{o['kind']}/{o['metadata']['name']}"
            self.calls.append(("apply", name))
            self.live[name] = o
        return [Applied(o["kind"], o["metadata"]["name"], namespace, o["apiVersion"]) for o in objects]

    def delete(self, objects: Sequence[Obj], namespace: str | None = None, *, wait: float | None = None) -> list[str]:
        assert wait is not None, "a hook's deletion is waited for"
        out = []
        for o in objects:
            name = f"{o['kind']}/{o['metadata']['name']}"
            self.calls.append(("delete", name))
            if self.live.pop(name, None) is not None:
                out.append(name)
        return out

    def waited(self, objects: Sequence[Obj]) -> list[Applied]:
        applied = self.apply(objects)
        for o in objects:
            name = f"{o['kind']}/{o['metadata']['name']}"
            self.calls.append(("wait", name))
            if name in self.fail:
                raise RuntimeError(f"{name} failed")
        return applied


def release(rec: Recorder, name: str | None = "rel") -> Release:
    return Release(rec, "ns", name, rec.waited)  # type: ignore[arg-type]


def test_policies_before_creation_succeeded_and_the_record() -> None:
    objects = [obj("Job", "migrate", "pre-install,pre-upgrade", "-1"),
               obj("Job", "cleanup", "pre-install,pre-upgrade", "0", "hook-succeeded"),
               obj("Deployment", "web"),
               obj("Job", "notify", "post-install,post-upgrade", None, "hook-succeeded,hook-failed")]
    rec = Recorder()
    r = release(rec)
    outcome = r.run(plan(objects, hooks_of(objects), r.record()))
    assert rec.calls == [
        ("delete", "Job/migrate"), ("apply", "Job/migrate"), ("wait", "Job/migrate"),  # before-hook-creation
        ("apply", "Job/cleanup"), ("wait", "Job/cleanup"),
        ("delete", "Job/cleanup"),  # hook-succeeded, once every pre-install hook succeeded
        ("apply", "ConfigMap/kti-hooks-rel"),
        ("apply", "Deployment/web"), ("wait", "Deployment/web"),
        ("apply", "Job/notify"), ("wait", "Job/notify"), ("delete", "Job/notify"),
        ("apply", "ConfigMap/kti-hooks-rel"),
    ]
    assert outcome.hooks == {"Job.migrate": "ran", "Job.cleanup": "ran", "Job.notify": "ran"}
    assert set(rec.live["ConfigMap/kti-hooks-rel"]["data"]) == {"Job.migrate", "Job.cleanup", "Job.notify"}

    rec.calls.clear()  # a warm re-run: nothing changed, so no hook is applied, deleted or waited for
    outcome = r.run(plan(objects, hooks_of(objects), r.record()))
    assert rec.calls == [("apply", "Deployment/web"), ("wait", "Deployment/web")]
    assert set(outcome.hooks.values()) == {"unchanged"}


def test_a_failed_hook_is_deleted_under_hook_failed_and_the_error_stays_and_nothing_is_recorded() -> None:
    objects = [obj("Job", "migrate", "pre-install", None, "hook-failed"), obj("Deployment", "web")]
    rec = Recorder(fail={"Job/migrate"})
    with pytest.raises(RuntimeError, match="Job/migrate failed"):
        release(rec).run(plan(objects, hooks_of(objects), None))
    assert rec.calls == [("apply", "Job/migrate"), ("wait", "Job/migrate"), ("delete", "Job/migrate")]
    assert "ConfigMap/kti-hooks-rel" not in rec.live, "a failed event is not recorded: the next run tries again"


def test_a_custom_resource_definition_hook_is_never_deleted() -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "things.example.com", "annotations": {"helm.sh/hook": "pre-install",
                                                                      "helm.sh/hook-delete-policy": "hook-succeeded"}}}
    rec = Recorder()
    release(rec).run(plan([crd], [hook_of(crd)], None))
    assert ("delete", "CustomResourceDefinition/things.example.com") not in rec.calls


def test_plain_objects_are_one_phase_without_any_record() -> None:
    objects = [obj("Deployment", "web"), obj("Service", "web")]
    rec = Recorder()
    r = release(rec, None)
    assert r.record() is None
    r.run(plan(objects, [None, None], None))
    assert rec.calls == [("apply", "Deployment/web"), ("apply", "Service/web"), ("wait", "Deployment/web"),
                         ("wait", "Service/web")]
