"""``kti``: the command line. A thin edge: it parses options and calls the library.

stdout carries results only (``--json`` prints one JSON document and nothing else); progress, logs
and errors go to stderr. Exit codes: 0 ok, 1 failure (a typed error with a hint), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubetest_infra.build import Builder, BuildEvent, BuildSpec, parse_timeout
from kubetest_infra.cleanup import gc, parse_age, remove_run_images
from kubetest_infra.doctor import run_checks
from kubetest_infra.engine import get_engine
from kubetest_infra.errors import ConfigError, KtiError
from kubetest_infra.tags import DEFAULT_REGISTRY, resolve_run_id


def _parse_build_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    from kubetest_infra import __version__

    parser = argparse.ArgumentParser(prog="kti", description="kubetest-infra: E2E test infrastructure on Kind")
    parser.add_argument("--version", action="version", version=f"kti (kubetest-infra) {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-vv: commands)")
    parser.add_argument("--engine", help="docker | podman | auto (default: $KTI_ENGINE or auto)")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build one image with a DD-TEST-001 unique tag, verified")
    b.add_argument("--context", required=True, type=Path, help="build context directory")
    b.add_argument("--name", required=True, help="service (image) name, e.g. datastorage")
    b.add_argument("--consumer", required=True, help="the suite using the image (first part of the tag)")
    b.add_argument("--dockerfile", help="Dockerfile path, relative to the context (default: Dockerfile)")
    b.add_argument("--build-arg", action="append", default=[], type=_parse_build_arg, metavar="K=V")
    b.add_argument("--target", help="build stage")
    b.add_argument("--platform", help="e.g. linux/amd64")
    b.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry prefix (default: localhost)")
    b.add_argument("--run-id", help="run id (default: $KTI_RUN_ID, else random)")
    b.add_argument("--no-cache", action="store_true", help="never reuse an image or the build cache")
    b.add_argument("--rebuild-on-stale", action="store_true", help="one automatic --no-cache rebuild if stale")
    b.add_argument("--pull", action="store_true",
                   help="pull every base image (FROM, COPY --from, RUN --mount from) before digesting and building")
    b.add_argument("--build-timeout", metavar="SECONDS",
                   help="stop a build that runs longer (900, 30m, 2h; default: $KTI_BUILD_TIMEOUT or 30m)")
    b.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    sub.add_parser("doctor", help="check engine, kind, kubectl and disk space")

    g = sub.add_parser("gc", help="finish what crashed runs left, then remove our images not used for a while")
    g.add_argument("--older-than", default="24h", help="age such as 30m, 12h, 7d (default 24h)")
    g.add_argument("--dry-run", action="store_true", help="list the images that would be removed")
    g.add_argument("--kubeconfig", type=Path, default=os.environ.get("KTI_KUBECONFIG") or None,
                   help="also remove namespaces of dead runs of this machine older than --older-than there")
    g.add_argument("--context", default=os.environ.get("KTI_CONTEXT") or None, help="its context")

    c = sub.add_parser("clean", help="remove the image tags of one run")
    c.add_argument("--run-id", required=True, help="the run id (the part of the tag after SUITE-)")
    c.add_argument("--suite", "--consumer", dest="consumer",
                   help="the suite name (the tag's first part): exact even when names and ids share '-' parts")

    u = sub.add_parser("up", help="bring a suite up: builds, cluster, loads, deploys (one dependency graph)")
    u.add_argument("suite", type=Path, help="suite directory or suite.yaml (e.g. suites/datastorage)")
    u.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse a cluster with the same name and config (default: yes)")
    u.add_argument("--keep", action="store_true",
                   help="keep what was created when something fails (recorded: 'kti down' removes it later)")
    u.add_argument("--no-cache", action="store_true", help="never reuse images or the build cache")
    u.add_argument("--pull", action="store_true",
                   help="pull every base image before digesting (a moved remote tag then rebuilds)")
    u.add_argument("--run-id", help="run id (default: $KTI_RUN_ID, else random)")
    u.add_argument("--json", action="store_true", help="print the environment as JSON on stdout")
    _remote_args(u)

    d = sub.add_parser("down", help="remove everything a suite's environment owns (cluster, images, ...)")
    d.add_argument("suite", type=Path)
    d.add_argument("--run-id", help="with --kubeconfig: the run whose namespace and tags go")
    _remote_args(d)
    d.add_argument("--force", action="store_true",
                   help="also while a session uses it, and a cluster of that name without our ownership record")

    sub.add_parser("status", help="clusters and images of ours, with run ids and ages")

    i = sub.add_parser("init", help="write a first suite (suite.yaml, manifest, conftest, test) for a directory "
                                     "holding a Dockerfile")
    i.add_argument("directory", type=Path, nargs="?", default=Path("."), help="the service's directory (default: .)")
    i.add_argument("--name", help="suite, image and service name (default: from the directory's name)")
    i.add_argument("--cluster", help="Kind cluster name (default: kti-NAME)")
    i.add_argument("--host-port", type=int, default=38080, help="host port of the service (default 38080)")
    i.add_argument("--node-port", type=int, default=30080, help="the Service's nodePort (default 30080)")
    i.add_argument("--path", default="/", help="HTTP path that answers 200 when the service is ready (default /)")

    sc = sub.add_parser("schema", help="the suite.yaml schema: JSON Schema for editors, or the reference as Markdown")
    sc.add_argument("--format", choices=("json", "markdown"), default="json",
                    help="json: a JSON Schema (draft 2020-12); markdown: docs/configuration.md")

    ld = sub.add_parser("load", help="load local images into a Kind cluster (kind load docker-image, verified, "
                        "layer-aware)")
    ld.add_argument("images", nargs="+", metavar="IMAGE", help="local image references")
    ld.add_argument("--cluster", "--name", dest="cluster", default="kind", help="Kind cluster name (default: kind)")
    ld.add_argument("--nodes", help="comma-separated node names (default: every node)")
    ld.add_argument("--no-pin", action="store_true", help="do not label the images io.cri-containerd.pinned")
    ld.add_argument("--full", action="store_true", help="send whole images (docker save), not only missing layers")
    ld.add_argument("--json", action="store_true", help="print per-node results as JSON on stdout")

    lg = sub.add_parser("logs", help="logs of a suite service's pods")
    lg.add_argument("suite", type=Path)
    lg.add_argument("service")
    lg.add_argument("--tail", type=int, default=200)
    return parser


def _progress(event: BuildEvent) -> None:
    print(f"[{event.name}] {event.phase}: {event.message}", file=sys.stderr, flush=True)


def cmd_build(args: argparse.Namespace) -> int:
    engine = get_engine(args.engine)
    run_id = resolve_run_id(args.run_id)
    if not args.name.strip():
        raise ConfigError("--name is empty", hint="give the service name, e.g. --name datastorage")
    timeout = parse_timeout(args.build_timeout, "--build-timeout") if args.build_timeout else None
    builder = Builder(engine, run_id, args.consumer, registry=args.registry, no_cache=args.no_cache,
                      rebuild_on_stale=args.rebuild_on_stale, on_event=_progress, pull=args.pull,
                      build_timeout=timeout)
    spec = BuildSpec(name=args.name, context=args.context, dockerfile=args.dockerfile,
                     build_args=dict(args.build_arg), target=args.target, platform=args.platform)
    image = builder.build(spec)
    if args.json:
        print(json.dumps({"images": {image.name: image.to_json()}}, indent=2))
    else:
        state = "reused" if image.reused else "built"
        print(f"{image.ref}\t{state}\t{image.image_id}\t{image.input_digest}\t{image.build_seconds:.1f}s")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_checks(args.engine)
    failed = False
    for check in checks:
        mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        print(f"{mark} {check.name:<24} {check.detail}")
        if not check.ok and check.hint:
            print(f"     Hint: {check.hint}")
        failed = failed or (check.required and not check.ok)
    return 1 if failed else 0


def cmd_gc(args: argparse.Namespace) -> int:
    from kubetest_infra.cluster import KindClusters
    from kubetest_infra.session import gc_state

    age = parse_age(args.older_than)
    engine = get_engine(args.engine)
    if not args.dry_run:
        for line in gc_state(engine, KindClusters(engine)):
            print(f"removed {line}")
    if args.kubeconfig:
        from datetime import datetime, timezone

        from kubetest_infra.remote import RemoteCluster, gc_namespaces

        remote = RemoteCluster(args.kubeconfig.resolve(), args.context)
        remote.check()
        for name in gc_namespaces(remote, age, datetime.now(timezone.utc), dry_run=args.dry_run):
            print(f"{'would remove' if args.dry_run else 'removed'} namespace {name} (its run is gone)")
    result = gc(engine, age, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for ref in result.removed:
        print(f"{verb} {ref}")
    for ref in result.failed:
        print(f"kept {ref} (in use by a container?)", file=sys.stderr)
    print(f"{verb} {len(result.removed)} image tag(s)", file=sys.stderr)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    result = remove_run_images(get_engine(args.engine), args.run_id, args.consumer)
    for ref in result.removed:
        print(f"removed {ref}")
    for ref in result.failed:
        print(f"kept {ref} (in use by a container?)", file=sys.stderr)
    return 0 if not result.failed else 1


def _remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", type=Path, default=os.environ.get("KTI_KUBECONFIG") or None,
                   help="use this cluster (never created or deleted by kti; $KTI_KUBECONFIG): the run gets a "
                   "namespace of its own")
    p.add_argument("--context", default=os.environ.get("KTI_CONTEXT") or None,
                   help="kubeconfig context ($KTI_CONTEXT; default: its current-context)")
    p.add_argument("--registry", dest="push_registry", default=os.environ.get("KTI_PUSH_REGISTRY") or None,
                   metavar="HOST[:PORT][/PREFIX]", help="push images there and deploy them by digest "
                   "($KTI_PUSH_REGISTRY); needed with --kubeconfig")
    p.add_argument("--namespace", default=os.environ.get("KTI_NAMESPACE") or None,
                   help="with --kubeconfig: the run's namespace, {suite} and {run_id} filled in "
                   "(default {suite}-{run_id}; $KTI_NAMESPACE)")


def _session(args: argparse.Namespace, suite: Any, command: str, run_id: str | None) -> Any:
    from kubetest_infra.delivery import parse_registry
    from kubetest_infra.remote import RemoteCluster
    from kubetest_infra.session import Session

    remote = RemoteCluster(args.kubeconfig.resolve(), args.context) if args.kubeconfig else None
    registry = parse_registry(args.push_registry) if args.push_registry else None
    if remote is not None and registry is None:
        raise ConfigError("--kubeconfig needs --registry: a cluster kti did not create has no Kind nodes to load into",
                          hint="pass --registry HOST[:PORT][/PREFIX] that the cluster's nodes pull from")
    if remote is not None:
        remote.check()
    return Session(suite, get_engine(args.engine), command=command, remote=remote, registry=registry,
                   run_id=run_id, namespace=args.namespace)


def cmd_up(args: argparse.Namespace) -> int:
    from kubetest_infra.console import Progress, timing_table
    from kubetest_infra.preflight import check_suite
    from kubetest_infra.suite import load_suite

    suite = load_suite(args.suite)
    check_suite(suite, args.run_id)  # static problems before the engine, a lock or a --no-reuse removal
    session = _session(args, suite, "kti up", args.run_id)
    progress = Progress(sys.stderr, title=f"kti up {suite.name}")
    with progress:
        env = session.up(run_id=args.run_id, reuse=args.reuse, keep_env=True, keep_on_failure=args.keep,
                         no_cache=args.no_cache, pull=args.pull, on_event=progress.event)
    for line in session.recovered:
        print(f"removed {line}", file=sys.stderr)
    timing_table(env, sys.stderr)
    if args.json:
        print(json.dumps(env.to_json(), indent=2))
    else:
        how = "attached to the running environment" if session.attached else "up"
        print(f"suite {env.suite} is {how} (run {env.run_id}) in {env.seconds:.1f}s; kubeconfig: {env.kubeconfig}")
        for name, url in sorted(env.endpoints.items()):
            print(f"  {name}: {url}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from kubetest_infra.suite import load_suite

    if args.kubeconfig and not args.run_id:
        raise ConfigError("kti down --kubeconfig needs --run-id", hint="the run id 'kti up' printed")
    lines = _session(args, load_suite(args.suite), "kti down", args.run_id).down(force=args.force)
    failed = [line for line in lines if line.startswith("could not")]
    for line in lines:
        print(line if line.startswith("could not") else f"removed {line}")
    if not lines:
        print("nothing to remove", file=sys.stderr)
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from kubetest_infra.status import report

    print(report(get_engine(args.engine)))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from kubetest_infra.scaffold import init

    made = init(args.directory, name=args.name, cluster=args.cluster, host_port=args.host_port,
                node_port=args.node_port, path=args.path)  # checked by preflight before it returns
    for path in made.files:
        print(f"wrote {path}")
    for note in made.notes:
        print(f"note: {note}", file=sys.stderr)
    where = "" if made.directory == Path.cwd().resolve() else f"cd {args.directory} && "
    print(f"next: {where}kti up .   # then: pytest, curl {made.url}, kti down .", file=sys.stderr)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from kubetest_infra import schema

    sys.stdout.write(schema.json_text() if args.format == "json" else schema.markdown())
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from kubetest_infra.cluster import KindClusters
    from kubetest_infra.logs import service_logs
    from kubetest_infra.session import read_environment
    from kubetest_infra.suite import load_suite

    suite = load_suite(args.suite)
    env = read_environment(KindClusters(get_engine(args.engine)), suite)
    if env is None:
        raise ConfigError(f"suite {suite.name} is not up", hint=f"run: kti up {args.suite}")
    print(service_logs(env, suite, args.service, args.tail))
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from kubetest_infra.cluster import KindClusters
    from kubetest_infra.load import Loader, local_image
    from kubetest_infra.loadplan import LOADED_LABEL

    engine = get_engine(args.engine)
    nodes = args.nodes.split(",") if args.nodes else KindClusters(engine).nodes(args.cluster)
    known = set(KindClusters(engine).nodes(args.cluster)) if args.nodes else set(nodes)
    unknown = [n for n in nodes if n not in known]
    if unknown:
        raise ConfigError(f"unknown node(s) of cluster {args.cluster}: {', '.join(unknown)}",
                          hint=f"nodes: {', '.join(sorted(known))}")
    labels = {LOADED_LABEL: "true"} if args.no_pin else None
    loader = Loader(engine, labels=labels, read_store=not args.full)
    images = [local_image(engine, ref) for ref in dict.fromkeys(args.images)]
    loaded = loader.load_many(images, nodes)
    if args.json:
        print(json.dumps({"cluster": args.cluster, "layer_store": loader.store_unavailable or "read directly",
                          "images": [i.to_json() for i in loaded]}, indent=2))
        return 0
    for image in loaded:
        for n in image.nodes:
            moved = (f"{n.bytes_sent / 1e6:.1f} MB, {n.layers_sent}/{n.layers_total} layers ({n.mode})"
                     if n.action == "loaded" else "no bytes")
            print(f"{image.ref}\t{n.node}\t{n.action}\t{n.seconds:.2f}s\t{moved}")
    return 0


COMMANDS = {"build": cmd_build, "doctor": cmd_doctor, "gc": cmd_gc, "clean": cmd_clean, "up": cmd_up,
            "down": cmd_down, "status": cmd_status, "logs": cmd_logs, "schema": cmd_schema,
            "init": cmd_init, "load": cmd_load}


def main(argv: Sequence[str] | None = None) -> int:
    from kubetest_infra.signals import install_terminate_handler

    args = build_parser().parse_args(argv)
    install_terminate_handler()  # SIGTERM (a CI cancel) undoes a run like Ctrl-C does
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except KtiError as exc:
        print(f"kti {args.command}: error: {exc}", file=sys.stderr)
        return 130 if getattr(exc, "interrupted", False) else 1  # 128 + SIGINT: a cancel is not a failure
    except KeyboardInterrupt:
        print(f"kti {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
