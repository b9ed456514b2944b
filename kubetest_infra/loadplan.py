"""What a node already holds, and what must be sent to it: pure parsing and planning for :mod:`load`.

A node is probed once per load (one ``docker exec``, :data:`PROBE`): its image records (name →
target digest, labels), its committed snapshots (chain ids) and the digests in its content store.
:func:`plan_node` then decides per image:

- ``present``: the reference already points at the manifest we would write and its top snapshot
  (the image's rootfs) is committed — nothing moves;
- ``retag``: another record points at that manifest (another run's tag, or the CRI plugin's
  ``sha256:<id>`` record) and the rootfs is there — a new name, no bytes;
- ``transfer``: config and manifest, plus the layers above the longest unpacked prefix of the chain
  whose blobs the content store lacks. containerd's unpacker skips every layer whose chain id is
  already a snapshot, so the layers below are never read.

Staging names (:func:`staging_name`) are what an import creates; the real reference is tagged only
after the staged image was verified, so an interrupted load never leaves a half-imported record
under the name the kubelet looks up.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kubetest_infra.oci import ImageParts

PlanAction = Literal["present", "retag", "transfer"]
PINNED = {"io.cri-containerd.pinned": "pinned"}
LOADED_LABEL = "kubetest-infra.io/loaded"
LABELS = {**PINNED, LOADED_LABEL: "true"}
STAGING_DOMAIN = "kti-staging.local"
STAGING_MAX_AGE = 900.0  # seconds; older staging records are leftovers of an interrupted load

# One exec: the node's image records and committed snapshots, in sections marked by "@".
PROBE = """
echo @images; ctr -n k8s.io images ls || exit 3
echo @snapshots; ctr -n k8s.io snapshots --snapshotter "$1" ls || exit 4
"""

# One exec per node and step (POSIX sh, every value a positional parameter, never script text):
#   SNAPSHOTTER PLATFORM IMPORT(0|1) N_STALE STALE... N_LABELS LABEL... then FROM TO CHAIN EXPECT PROVEN
# IMPORT=1: `ctr images import` of stdin first (an archive naming each image FROM, a staging name).
# Per image: tag FROM as TO only if FROM's target is EXPECT and snapshot CHAIN is committed; TO "-":
# only report FROM; FROM "-": only label TO. Staging records (FROM) go once handled; stale ones too.
# Then every name handled is read back: its record line, whether CHAIN is committed and, unless it
# points at PROVEN (a manifest digest already verified, which covers the config), that manifest.
# ctr runs a fixed number of times plus two per image (tag, label): each run costs 30-100 ms.
LOAD = r"""
sn=$1; plat=$2; imp=$3; shift 3
n=$1; shift; i=0; drop=""
while [ $i -lt "$n" ]; do drop="$drop $1"; shift; i=$((i+1)); done
nl=$1; shift; labels=""; i=0
while [ $i -lt "$nl" ]; do labels="$labels $1"; shift; i=$((i+1)); done
case "$labels" in *[!a-zA-Z0-9./_=\ -]*) echo "@failed - unsafe labels"; exit 2;; esac
if [ "$imp" = 1 ]; then
  ctr -n k8s.io images import --platform "$plat" --snapshotter="$sn" - >/dev/null; rc=$?
  if [ $rc != 0 ]; then  # containerd 1.6 names images before it unpacks: drop what this import staged
    staged=""; for a in "$@"; do case "$a" in kti-staging.local/*) staged="$staged $a";; esac; done
    [ -n "$staged" ] && ctr -n k8s.io images rm $staged >/dev/null 2>&1
    exit $rc
  fi
fi
listing=$(ctr -n k8s.io images ls) || exit 3
snaps=$(ctr -n k8s.io snapshots --snapshotter "$sn" ls) || exit 4
target() { echo "$listing" | awk -v n="$1" '$1 == n {print $3}'; }
committed() { echo "$snaps" | awk -v c="$1" '$1 == c && $NF == "Committed" {f=1} END {exit !f}'; }
report=""
while [ $# -ge 5 ]; do
  f=$1; t=$2; c=$3; e=$4; p=$5; shift 5
  if [ "$t" = "-" ]; then report="$report $f|$c|$p"; continue; fi
  ok=0
  if [ "$f" = "-" ]; then ok=1
  elif [ "$(target "$f")" = "$e" ] && committed "$c"; then
    if ctr -n k8s.io images tag --force "$f" "$t" >/dev/null; then ok=1; else echo "@failed $t tag"; fi
  else echo "@failed $t $f is $(target "$f") not $e"; fi
  case "$f" in kti-staging.local/*) drop="$drop $f";; esac
  if [ $ok = 1 ]; then
    if [ -z "$labels" ] || ctr -n k8s.io images label "$t" $labels >/dev/null; then echo "@handled $t"
    else echo "@unlabelled $t"; fi
  fi
  report="$report $t|$c|$p"
done
[ -n "$drop" ] && ctr -n k8s.io images rm $drop >/dev/null 2>&1
listing=$(ctr -n k8s.io images ls)
snaps=$(ctr -n k8s.io snapshots --snapshotter "$sn" ls)
for item in $report; do
  name=${item%%|*}; rest=${item#*|}; chain=${rest%%|*}; exp=${rest#*|}
  line=$(echo "$listing" | awk -v n="$name" '$1 == n')
  d=$(echo "$line" | awk '{print $3}')
  echo "@name $name"
  echo "@line $line"
  if [ -n "$d" ] && [ "$d" != "$exp" ]; then echo "@manifest"; ctr -n k8s.io content get "$d"; echo; fi
  if committed "$chain"; then echo "@snapshot yes"; else echo "@snapshot no"; fi
done
"""


def load_args(snapshotter: str, platform: str, *, do_import: bool, stale: Sequence[str],
              labels: Mapping[str, str], quads: Sequence[tuple[str, str, str, str, str]]) -> list[str]:
    """The positional parameters of :data:`LOAD` (a pure function, unit-tested)."""
    label_args = [f"{k}={v}" for k, v in sorted(labels.items())]
    if any(not re.fullmatch(r"[a-zA-Z0-9./_-]+=[a-zA-Z0-9./_-]*", a) for a in label_args):
        raise ValueError(f"labels must be KEY=VALUE of [a-zA-Z0-9./_-]: {label_args}")
    return [snapshotter, platform, "1" if do_import else "0", str(len(stale)), *stale, str(len(label_args)),
            *label_args, *[x for q in quads for x in q]]


@dataclass(frozen=True)
class ImageRecord:
    name: str
    target: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeState:
    """What one node's containerd holds (namespace ``k8s.io``)."""

    node: str
    images: Mapping[str, ImageRecord]
    snapshots: frozenset[str]  # committed snapshot keys (chain ids)
    content: frozenset[str] = frozenset()  # blob digests, when probed (``ctr content ls -q``)


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@") and " " not in line.strip():
            current = sections.setdefault(line.strip()[1:], [])
        elif current is not None:
            current.append(line)
    return sections


def parse_labels(text: str) -> dict[str, str]:
    """``ctr images ls``'s LABELS column: ``k=v,k2=v2`` or ``-``."""
    labels: dict[str, str] = {}
    if text.strip() in ("", "-"):
        return labels
    for item in text.strip().split(","):
        key, _, value = item.partition("=")
        if key:
            labels[key] = value
    return labels


def parse_image_line(line: str) -> ImageRecord | None:
    """One row of ``ctr images ls`` (REF TYPE DIGEST SIZE PLATFORMS LABELS) as a record."""
    parts = line.split()
    if len(parts) < 3 or not parts[2].startswith("sha256:"):
        return None
    labels = parse_labels(parts[-1]) if len(parts) >= 6 and "=" in parts[-1] else {}
    return ImageRecord(parts[0], parts[2], labels)


def parse_probe(node: str, text: str) -> NodeState:
    s = _sections(text)
    images = {}
    for line in s.get("images", [])[1:]:
        record = parse_image_line(line)
        if record is not None:
            images[record.name] = record
    snapshots = set()
    for line in s.get("snapshots", [])[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[-1] == "Committed":
            snapshots.add(parts[0])
    content = {line.strip() for line in s.get("content", []) if line.strip().startswith("sha256:")}
    return NodeState(node, images, frozenset(snapshots), frozenset(content))


@dataclass(frozen=True)
class Readback:
    """What a name resolved to on a node after a step (READBACK output)."""

    name: str
    target: str
    manifest: Mapping[str, Any]
    labels: Mapping[str, str]
    snapshot: bool

    @property
    def config_digest(self) -> str | None:
        config = self.manifest.get("config")
        return str(config.get("digest")) if isinstance(config, dict) else None

    @property
    def layer_digests(self) -> tuple[str, ...]:
        return tuple(str(layer.get("digest")) for layer in self.manifest.get("layers") or ()
                     if isinstance(layer, dict))


def parse_outcome(text: str) -> tuple[set[str], dict[str, str]]:
    """Names :data:`LOAD` handled, and the ones it refused with why."""
    handled, failed = set(), {}
    for line in text.splitlines():
        if line.startswith("@handled "):
            handled.add(line.split(" ", 2)[1])
        elif line.startswith(("@failed ", "@unlabelled ")):
            _, name, *why = line.split(" ", 2)
            failed[name] = (why[0] if why else "") if line.startswith("@failed") else "labels were not set"
    return handled, failed


def parse_readback(text: str) -> dict[str, Readback]:
    found: dict[str, Readback] = {}
    blocks = re.split(r"^@name ", text, flags=re.M)
    for block in blocks[1:]:
        name, _, rest = block.partition("\n")
        record = None
        manifest: dict[str, Any] = {}
        snapshot = False
        body: list[str] = []
        in_manifest = False
        for line in rest.splitlines():
            if line.startswith("@line "):
                record = parse_image_line(line[6:])
            elif line == "@manifest":
                in_manifest = True
            elif line.startswith("@snapshot "):
                in_manifest = False
                snapshot = line.split()[1] == "yes"
            elif in_manifest:
                body.append(line)
        if body:
            try:
                doc = json.loads("\n".join(body))
                manifest = doc if isinstance(doc, dict) else {}
            except ValueError:
                manifest = {}
        found[name.strip()] = Readback(name.strip(), record.target if record else "", manifest,
                                       dict(record.labels) if record else {}, snapshot)
    return found


@dataclass(frozen=True)
class NodePlan:
    """What one image needs on one node."""

    action: PlanAction
    retag_from: str = ""
    send: tuple[int, ...] = ()  # indexes of the layers to send (transfer)


def plan_node(parts: ImageParts, ref: str, state: NodeState) -> NodePlan:
    """present / retag / transfer (with the layers the node lacks) for one image on one node."""
    manifest = parts.manifest_digest
    chain = parts.chain
    rootfs = bool(chain) and chain[-1] in state.snapshots
    current = state.images.get(ref)
    if rootfs and current is not None and current.target == manifest:
        return NodePlan("present")
    if rootfs:
        holders = sorted(r.name for r in state.images.values() if r.target == manifest)
        if holders:
            return NodePlan("retag", retag_from=holders[0])
    unpacked = max((i for i, c in enumerate(chain) if c in state.snapshots), default=-1)
    send = tuple(i for i in range(unpacked + 1, len(chain)) if parts.diff_ids[i] not in state.content)
    return NodePlan("transfer", send=send)


def staging_name(index: int, now: float | None = None, nonce: str | None = None) -> str:
    """A name for an image while it is imported and verified (a valid reference; encodes its age)."""
    stamp = int(now if now is not None else time.time())
    return f"{STAGING_DOMAIN}/s{stamp}-{nonce or secrets.token_hex(4)}:{index}"


def stale_staging(names: Sequence[str], now: float | None = None, max_age: float = STAGING_MAX_AGE) -> list[str]:
    """Staging records older than ``max_age``: leftovers of a load that was interrupted."""
    current = now if now is not None else time.time()
    stale = []
    for name in names:
        m = re.match(rf"^{re.escape(STAGING_DOMAIN)}/s(\d+)-[0-9a-f]+:\d+$", name)
        if m and current - int(m.group(1)) > max_age:
            stale.append(name)
    return stale
