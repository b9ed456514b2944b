"""Sessions: one ``kti up`` or one pytest session using a suite's environment (see :mod:`.state`).

``Session.up`` holds the environment's lock while it decides and brings the suite up, so two sessions
of one suite never race: the second waits, then **attaches** to what the first made — it takes the
environment's run id (unchanged images are neither rebuilt, retagged nor reloaded; unchanged
workloads do not roll out) and registers a lease. If the second session's sources or manifests differ
from what a still-running session is testing, it fails at once with :class:`EnvironmentBusyError`
instead of rolling new code out under the other session's tests.

Who removes what:

============================== ==================================================================
``kti up``                     the environment is *kept*: it stays until ``kti down``
pytest, created it             removed at the session's end (``--kti-keep-cluster`` keeps it);
                               if other sessions are still attached, the last one out removes it
pytest, attached               leaves it as it was found (only its own additions are recorded)
``kti down``                   removes everything the environment owns; refuses while a live
                               session uses it (``--force`` overrides)
``kti gc``                     finishes what crashed runs left: ledgers of dead processes,
                               interrupted cluster creations, ephemeral environments nobody uses
============================== ==================================================================
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import replace

from kubetest_infra.build import LABEL_CONSUMER, LABEL_MANAGED, LABEL_RUN, Builder, BuildSpec
from kubetest_infra.cluster import KindClusters
from kubetest_infra.delivery import Registry
from kubetest_infra.engine import Engine
from kubetest_infra.errors import KtiError
from kubetest_infra.graph import Listener
from kubetest_infra.load import Loader
from kubetest_infra.orchestrate import Orchestrator
from kubetest_infra.remote import RemoteCluster, run_namespace
from kubetest_infra.sources import input_files
from kubetest_infra.state import (
    Environment,
    EnvironmentStore,
    EnvRecord,
    Ledger,
    Owner,
    StateError,
    ledgers,
    teardown_decision,
)
from kubetest_infra.suite import Suite
from kubetest_infra.tags import new_run_id, resolve_run_id
from kubetest_infra.teardown import Removed, remove_items
from kubetest_infra.wait import WaitPolicy


class EnvironmentBusyError(KtiError):
    """Another live session uses the environment and this one would change it (or remove it)."""


def session_key(prefix: str, ident: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{prefix}-{ident}")[:80]


class Session:
    """One session's use of one suite's environment (cluster ``suite.cluster.name``)."""

    def __init__(self, suite: Suite, engine: Engine, *, clusters: KindClusters | None = None,
                 key: str | None = None, owner: Owner | None = None, command: str = "kti up",
                 remote: RemoteCluster | None = None, registry: Registry | None = None, run_id: str | None = None,
                 namespace: str | None = None) -> None:
        """``remote``: a cluster reached by kubeconfig (never created or deleted); the run then has its own
        id now (``run_id`` or a new one), its own namespace (``namespace`` template, default
        ``{suite}-{run_id}``) and its own environment record ``remote-{namespace}``. ``registry``: images
        are pushed there and pulled by digest (:mod:`.delivery`) instead of loaded into Kind nodes."""
        self.remote = remote
        self.registry = registry
        self.run_id: str | None = None
        env_name = suite.cluster.name
        if remote is not None:
            self.run_id = resolve_run_id(run_id)
            suite = replace(suite, namespace=run_namespace(suite.name, self.run_id, namespace))
            env_name = f"remote-{suite.namespace}"
        self.env_name = env_name
        self.suite = suite
        self.engine = engine
        self.clusters = clusters or KindClusters(engine)
        self.owner = owner or Owner.current(command)
        self.key = key or session_key(command.split(maxsplit=1)[0], f"{self.owner.pid}-{new_run_id()[:6]}")
        self.store = EnvironmentStore(self.clusters.state_dir, env_name)
        self.attached = False
        self.recovered: list[str] = []  # what up removed of killed earlier runs of this suite (their ledgers)

    # -- reading ---------------------------------------------------------------------------------
    def record(self) -> EnvRecord | None:
        """The environment's record, or None (none, or its cluster is gone: then its files are dropped)."""
        rec = self.store.read()
        if rec is not None and self.remote is None and not self.clusters.exists(rec.env.cluster):
            self.store.remove()
            return None
        return rec

    def _others(self, rec: EnvRecord | None) -> list[str]:
        """Live sessions other than this one using the environment (their descriptions)."""
        if rec is None:
            return []
        out = [lease.owner.describe() for lease in self.store.live_leases(exclude=self.key)]
        if rec.owner is not None and rec.owner.alive() and not self._is_me(rec.owner):
            out.insert(0, rec.owner.describe())
        return out

    def _is_me(self, owner: Owner) -> bool:
        return (owner.pid, owner.start, owner.host) == (self.owner.pid, self.owner.start, self.owner.host)

    def plan_digest(self, run_id: str) -> str:
        """A digest of everything that decides what the environment runs: suite, the services' sources
        (manifests; a chart's files and values files; an overlay's files and its bases'), image inputs."""
        h = hashlib.sha256(self.suite.path.read_bytes())
        for svc in sorted(self.suite.services.values(), key=lambda s: s.name):
            for f in input_files(svc):
                if svc.source != "manifests":
                    h.update(str(f).encode())  # a renamed template or values file renders differently
                h.update(f.read_bytes())
        builder = Builder(self.engine, run_id, self.suite.name)
        specs = {n: (i.context, i.dockerfile, i.build_args, i.target) for n, i in self.suite.images.items()}
        specs.update({n: (e.build.context, e.build.dockerfile, e.build.build_args, e.build.target)
                      for n, e in self.suite.external_images.items() if e.build is not None})
        for name, (ctx, df, args, target) in sorted(specs.items()):
            h.update(builder.digest(BuildSpec(name, ctx, df, args, target)).digest.encode())
        return h.hexdigest()[:32]

    # -- up ----------------------------------------------------------------------------------------
    def up(self, *, run_id: str | None = None, reuse: bool = True, keep_env: bool = True,
           keep_on_failure: bool = False, no_cache: bool = False, on_event: Listener | None = None,
           wait_policy: WaitPolicy | None = None, node_image: str | None = None,
           max_workers: int = 4, handover: bool = True, pull: bool = False,
           loader: Loader | None = None) -> Environment:
        """Bring the suite up or attach to it; see the module docstring.

        ``keep_env``: the environment outlives this session (``kti up``); otherwise this session removes
        it at :meth:`end` if it created it. ``keep_on_failure``: a failed ``up`` leaves what it made
        (recorded, so ``kti down`` removes it later).
        """
        with self.store.lock():
            self.recovered = self._finish_ledger()  # what a killed earlier run of this suite left
            rec = self.record()
            if rec is not None and not reuse:  # --no-reuse: the old environment goes first, entirely
                self._refuse_if_used(rec, "recreate")
                self._remove(rec)
                rec = None
            chosen = resolve_run_id(run_id) if run_id or os.environ.get("KTI_RUN_ID") else \
                (rec.env.run_id if rec is not None else resolve_run_id(None))
            if self.run_id is not None:
                chosen = self.run_id  # a remote run: chosen when the session was made (it names the namespace)
            others = self._others(rec)
            if rec is not None and others and (chosen != rec.env.run_id or
                                               self.plan_digest(chosen) != rec.env.plan):
                raise EnvironmentBusyError(
                    f"the environment of suite {self.suite.name} (cluster {rec.env.cluster}) is in use by "
                    f"{'; '.join(others)}, and this session would change what it runs (sources, manifests or "
                    "run id differ)",
                    hint="wait for that session to end, or run this one against its own cluster (a copy of the "
                    "suite with another cluster name and host ports)")
            ledger = Ledger(self.clusters.state_dir, self.key, chosen, self.suite.name, self.owner)
            ledger.open()  # the state directory takes our records, or nothing starts
            orch = Orchestrator(self.suite, self.engine, chosen, clusters=self.clusters, reuse=reuse,
                                keep=keep_on_failure, no_cache=no_cache, on_event=on_event, wait_policy=wait_policy,
                                node_image=node_image, max_workers=max_workers, ledger=ledger, handover=handover,
                                pull=pull, loader=loader, remote=self.remote, registry=self.registry)
            try:
                env = replace(orch.up(), plan=self.plan_digest(chosen))
            except BaseException:
                if keep_on_failure and ledger.items:
                    self._merge(rec, None, ledger, keep_env=True)  # kept for inspection: kti down removes it
                elif not ledger.items:
                    ledger.close()  # undone; what could not be removed stays in the ledger for kti gc
                raise
            self._merge(rec, env, ledger, keep_env=keep_env)
            self.attached = rec is not None
            if self.remote is None:  # a remote run is its own environment: nothing it owns is superseded
                self._prune(env)
            return env

    def _merge(self, rec: EnvRecord | None, env: Environment | None, ledger: Ledger, *, keep_env: bool) -> None:
        """Hand what this run created (its ledger) to the environment's record, and settle who owns it."""
        if env is None:  # a failed, kept run: its items still need an owner
            if rec is None:
                placeholder = Environment(self.suite.name, ledger.run_id, self.env_name,
                                          str(self.remote.kubeconfig if self.remote else
                                              self.clusters.kubeconfig_path(self.suite.cluster.name)),
                                          self.suite.namespace, {}, {}, {}, False)
                rec = EnvRecord(placeholder)
            new = rec.adopt(ledger.items)
        elif rec is None:
            new = EnvRecord(env, owner=None if keep_env else self.owner, ephemeral=not keep_env).with_run(env)
            new = new.adopt(ledger.items)
        else:
            new = rec.with_run(env).adopt(ledger.items)
            creator_gone = new.owner is None or not new.owner.alive()
            if keep_env:
                new = replace(new, owner=None, ephemeral=False)
            elif new.ephemeral and creator_gone and not self.store.live_leases(exclude=self.key):
                new = replace(new, owner=self.owner)  # the creator is gone: this session takes it over
            elif new.owner is None or not self._is_me(new.owner):
                self.store.add_lease(self.key, self.owner)
        self.store.write(new)
        ledger.close()

    def _prune(self, env: Environment) -> None:
        """Remove image tags the environment owns but no longer runs (superseded runs) from the engine
        and the nodes, and dangling images of its runs left by rebuilds under an unchanged tag."""
        rec = self.store.read()
        if rec is None:
            return
        current = set(env.images.values())
        stale = [i for i in rec.owned if i.kind in ("image", "node-image") and i.name not in current]
        done = remove_items(stale, engine=self.engine, clusters=self.clusters)
        if done.removed:
            self.store.write(replace(rec, owned=tuple(i for i in rec.owned if i not in done.removed)))
        remove_dangling(self.engine, self.suite.name, rec.runs)

    def _refuse_if_used(self, rec: EnvRecord | None, what: str) -> None:
        others = self._others(rec)
        if others:
            raise EnvironmentBusyError(
                f"cannot {what} the environment of suite {self.suite.name}: in use by {'; '.join(others)}",
                hint="wait for that session to end, or pass --force to remove it anyway")

    # -- end / down ----------------------------------------------------------------------------------
    def end(self, *, keep: bool = False) -> list[str]:
        """This session is over: tear down, keep, hand over or leave, as :func:`teardown_decision` says."""
        with self.store.lock():
            lines = self._finish_ledger()
            rec = self.store.read()
            if rec is None:
                return lines
            self.store.drop_lease(self.key)
            others = self.store.live_leases(exclude=self.key)
            decision = teardown_decision(rec, self.owner, others, keep)
            if decision == "teardown":
                return lines + self._remove(rec)
            if decision == "keep":
                self.store.write(replace(rec, owner=None, ephemeral=False))
                return [*lines, f"kept: cluster {rec.env.cluster} (kubeconfig {rec.env.kubeconfig})"]
            if decision == "handover":
                self.store.write(replace(rec, owner=None))
                return [*lines, "left for the sessions still attached: " +
                        "; ".join(lease.owner.describe() for lease in others)]
            return lines

    def down(self, *, force: bool = False) -> list[str]:
        """Remove everything the environment owns (and an interrupted creation of its cluster)."""
        name = self.suite.cluster.name
        with self.store.lock():
            lines = self._finish_ledger()
            rec = self.store.read()
            if not force:
                self._refuse_if_used(rec, "remove")
            if rec is not None:
                return lines + self._remove(rec)
            if self.remote is not None:
                return lines  # never the cluster: it is not ours
            if self.clusters.record(name) is not None and self.clusters.exists(name):
                self.clusters.delete(name)  # ours (recorded), e.g. an interrupted creation
                return [*lines, f"cluster {name}"]
            if force and self.clusters.exists(name):
                self.clusters.delete(name, force=True)
                return [*lines, f"cluster {name} (forced)"]
            return lines

    def _remove(self, rec: EnvRecord) -> list[str]:
        done = remove_items(rec.owned, engine=self.engine, clusters=self.clusters)
        lines = done.lines() + remove_dangling(self.engine, self.suite.name, rec.runs)
        if done.failed:
            self.store.write(replace(rec, owned=tuple(i for i, _ in done.failed)))
            return lines
        self.store.remove()
        for lease in self.store.leases():
            self.store.drop_lease(lease.key)
        return lines

    def _finish_ledger(self) -> list[str]:
        """Ledgers left behind by this session (a worker killed while creating) or by a dead run of this
        suite (a ``kti up`` killed with SIGKILL): remove their items, as ``kti gc`` would."""
        mine = self.clusters.state_dir / "runs" / f"{self.key}.json"
        out = finish_ledger(Ledger.load(mine), self.engine, self.clusters).lines() if mine.is_file() else []
        return out + finish_dead_ledgers(self.engine, self.clusters, suite=self.suite.name)


def finish_ledger(ledger: Ledger, engine: Engine | None, clusters: KindClusters | None) -> Removed:
    """Remove what a run's ledger lists; the ledger goes once every item is gone."""
    done = remove_items(ledger.items, engine=engine, clusters=clusters)
    for item in done.removed:
        ledger.forget(item)
    if not ledger.items:
        ledger.close()
    return done


def remove_dangling(engine: Engine, suite: str, runs: Sequence[str]) -> list[str]:
    """Untagged images of ours built for ``suite`` by one of ``runs`` (left by rebuilds under one tag)."""
    if not runs:
        return []
    out = []
    for image_id in engine.image_ids({LABEL_MANAGED: "true", LABEL_CONSUMER: suite}):
        info = engine.inspect_image(image_id)
        if info is not None and not info.repo_tags and info.labels.get(LABEL_RUN) in runs and \
                engine.untag(image_id):
            out.append(f"image {image_id[:19]} (untagged, run {info.labels.get(LABEL_RUN)})")
    return out


def finish_dead_ledgers(engine: Engine | None, clusters: KindClusters, *, suite: str | None = None) -> list[str]:
    """Remove what the ledgers of dead runs (of ``suite``, or any) list; what was removed."""
    out: list[str] = []
    for ledger in ledgers(clusters.state_dir):
        if (suite is None or ledger.suite == suite) and not ledger.owner.alive():
            done = finish_ledger(ledger, engine, clusters)
            out.extend(f"{line} (left by {ledger.owner.describe()})" for line in done.lines())
    return out


def gc_state(engine: Engine | None, clusters: KindClusters) -> list[str]:
    """Finish what crashed runs left behind (see the module docstring); what was removed."""
    out = finish_dead_ledgers(engine, clusters)
    base = clusters.state_dir / "clusters"
    for cdir in sorted(base.glob("*")) if base.is_dir() else []:
        name = cdir.name
        try:
            if clusters.interrupted(name):
                if clusters.exists(name):
                    clusters.delete(name)
                else:
                    clusters.forget(name)
                out.append(f"cluster {name} (creation was interrupted)")
                continue
            store = EnvironmentStore(clusters.state_dir, name)
            rec = store.read()
        except StateError as exc:
            out.append(f"skipped {cdir}: {exc.message}")
            continue
        if rec is None:
            continue
        if rec.ephemeral and (rec.owner is None or not rec.owner.alive()) and not store.live_leases():
            done = remove_items(rec.owned, engine=engine, clusters=clusters)
            out.extend(f"{line} (unused ephemeral environment)" for line in done.lines())
            if not done.failed:
                store.remove()
    return out


def read_environment(clusters: KindClusters, suite: Suite) -> Environment | None:
    rec = EnvironmentStore(clusters.state_dir, suite.cluster.name).read()
    return rec.env if rec is not None else None


def describe_owner(rec: EnvRecord) -> str:
    if rec.owner is None:
        return "kept (until kti down)" if not rec.ephemeral else "ephemeral, creator gone"
    return ("owned by " if rec.owner.alive() else "owner gone: ") + rec.owner.describe()
