"""Pure parts of layer-aware loading: image formats, tar-split replay, node probes, planning."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from kubetest_infra import oci
from kubetest_infra.layerstore import LayerRecipe, parse_tar_split, read_file_exact, replay
from kubetest_infra.load import kind_node_names
from kubetest_infra.loadplan import (
    NodeState,
    load_args,
    parse_image_line,
    parse_labels,
    parse_outcome,
    parse_probe,
    parse_readback,
    plan_node,
    staging_name,
    stale_staging,
)

DATA = Path(__file__).parent / "data"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parts_for(layers: list[bytes]) -> oci.ImageParts:
    diffs = [digest(x) for x in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
    return oci.ImageParts(digest(config), config, tuple(oci.Blob(d, len(x)) for d, x in zip(diffs, layers,
                                                                                            strict=True)),
                          oci.Platform())


# -- oci ---------------------------------------------------------------------------------------

def test_chain_ids_follow_the_image_spec() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert oci.chain_ids([a]) == (a,)
    assert oci.chain_ids([a, b]) == (a, digest(f"{a} {b}".encode()))
    assert oci.chain_ids([]) == ()


def test_docker_manifest_has_containerds_exact_bytes() -> None:
    # the bytes containerd's archive importer writes (Go encoding/json of its manifest struct)
    cfg, layer = oci.Blob("sha256:" + "c" * 64, 1234), oci.Blob("sha256:" + "d" * 64, 10240)
    assert oci.docker_manifest(cfg, [layer]).decode() == (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        '"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:' + "c" * 64
        + '","size":1234},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","digest":"sha256:'
        + "d" * 64 + '","size":10240}]}')


def test_config_facts_reads_diff_ids_and_platform_and_refuses_garbage() -> None:
    parts = parts_for([b"x" * 10])
    diffs, platform = oci.config_facts(parts.config)
    assert diffs == parts.diff_ids
    assert platform.spec == "linux/amd64"
    with pytest.raises(oci.FormatError):
        oci.config_facts(b'{"rootfs": {"diff_ids": ["md5:abc"]}}')
    with pytest.raises(oci.FormatError):
        oci.config_facts(b"not json")


def test_oci_layout_carries_only_the_layers_given_and_puts_the_index_last() -> None:
    layers = [b"base" * 4000, b"top" * 10]
    parts = parts_for(layers)
    entries = [oci.layer_entry(parts.layers[1], lambda: [layers[1]])]  # the base is on the node already
    data = b"".join(oci.oci_layout([(parts, "kti-staging.local/s1-ab:0")], entries))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = tar.extractfile("blobs/sha256/" + parts.manifest_digest.split(":")[1]).read()  # type: ignore[union-attr]
    assert names[0] == "oci-layout" and names[-1] == "index.json"
    assert "blobs/sha256/" + parts.diff_ids[1].split(":")[1] in names
    assert "blobs/sha256/" + parts.diff_ids[0].split(":")[1] not in names
    assert digest(manifest) == parts.manifest_digest
    entry = index["manifests"][0]
    assert entry["digest"] == parts.manifest_digest
    assert entry["annotations"]["io.containerd.image.name"] == "kti-staging.local/s1-ab:0"
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert json.loads(manifest)["config"]["digest"] == parts.image_id
    assert [x["size"] for x in json.loads(manifest)["layers"]] == [len(x) for x in layers]


def test_a_layer_that_does_not_hash_to_its_diff_id_stops_the_stream_before_the_index() -> None:
    parts = parts_for([b"good" * 100])
    bad = oci.layer_entry(parts.layers[0], lambda: [b"evil" * 100])
    sent: list[bytes] = []
    with pytest.raises(oci.FormatError, match="hash"):
        sent.extend(oci.oci_layout([(parts, "x")], [bad]))
    assert b"index.json" not in b"".join(sent)


def test_tar_stream_refuses_an_entry_whose_bytes_do_not_match_its_size() -> None:
    with pytest.raises(oci.FormatError, match="expected 5"):
        b"".join(oci.tar_stream([oci.Entry("x", 5, lambda: [b"abc"])]))
    with pytest.raises(oci.FormatError, match="more bytes"):
        b"".join(oci.tar_stream([oci.Entry("x", 2, lambda: [b"abc"])]))


def docker_archive(config: bytes, layers: list[bytes], tag: str) -> bytes:
    buf = io.BytesIO()
    cid = hashlib.sha256(config).hexdigest()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        files = []
        for i, layer in enumerate(layers):
            add(f"{i:064x}/layer.tar", layer)
            files.append(f"{i:064x}/layer.tar")
        add(f"{cid}.json", config)
        add("manifest.json", json.dumps([{"Config": f"{cid}.json", "RepoTags": [tag], "Layers": files}]).encode())
    return buf.getvalue()


def test_rename_docker_archive_gives_each_image_its_staging_name_and_hashes_layers() -> None:
    layers = [b"l1" * 3000, b"l2" * 7]
    parts = parts_for(layers)
    data = docker_archive(parts.config, layers, "localhost/web:s-1")
    seen: dict[str, str] = {}
    out = b"".join(oci.rename_docker_archive(io.BytesIO(data), {parts.image_id: "kti-staging.local/s9-aa:0"}, seen))
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        first = tar.extractfile(f"{0:064x}/layer.tar").read()  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["kti-staging.local/s9-aa:0"]
    assert first == layers[0]
    assert sorted(seen.values()) == sorted(parts.diff_ids)


def test_rename_docker_archive_refuses_an_archive_without_manifest() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("x")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(oci.FormatError, match=r"no manifest\.json"):
        b"".join(oci.rename_docker_archive(io.BytesIO(buf.getvalue()), {}))


# -- tar-split replay ----------------------------------------------------------------------------

def tar_split_of(tar_bytes: bytes) -> list[bytes]:
    """The tar-split record of a tar (what the Docker engine stores beside each layer)."""
    lines, pos = [], 0

    def seg(data: bytes) -> None:
        if data:
            lines.append(json.dumps({"type": 2, "payload": __import__("base64").b64encode(data).decode(),
                                     "position": len(lines)}).encode())

    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for m in tar.getmembers():
            seg(tar_bytes[pos:m.offset_data])
            entry = {"type": 1, "name": m.name, "payload": None, "position": len(lines)}
            if m.isreg() and m.size:
                entry["size"] = m.size
            lines.append(json.dumps(entry).encode())
            pos = m.offset_data + (m.size if m.isreg() else 0)
    seg(tar_bytes[pos:])
    return lines


def test_replaying_a_tar_split_record_gives_the_exact_layer_tar(tmp_path: Path) -> None:
    layer_dir = tmp_path / "diff"
    (layer_dir / "etc").mkdir(parents=True)
    (layer_dir / "etc" / "app.conf").write_bytes(b"x=1\n" * 1000)
    (layer_dir / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (layer_dir / "empty").write_bytes(b"")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("etc", "etc/app.conf", "big.bin", "empty"):
            tar.add(layer_dir / name, arcname=name, recursive=False)
    original = buf.getvalue()
    record = gzip.compress(b"\n".join(tar_split_of(original)))
    items, size = parse_tar_split(iter(gzip.decompress(record).splitlines()))
    assert size == len(original)
    replayed = b"".join(replay(LayerRecipe(digest(original), layer_dir, items, size)))
    assert digest(replayed) == digest(original)


def test_layer_files_outside_the_layer_or_through_symlinks_are_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"s" * 10)
    layer = tmp_path / "diff"
    layer.mkdir()
    (layer / "link").symlink_to(tmp_path / "secret")
    (layer / "dir").symlink_to(tmp_path)
    with pytest.raises(oci.FormatError, match="leaves"):
        list(read_file_exact(layer, "../secret", 10))
    with pytest.raises(oci.FormatError):
        list(read_file_exact(layer, "link", 10))
    with pytest.raises(oci.FormatError):
        list(read_file_exact(layer, "dir/secret", 10))
    (layer / "short").write_bytes(b"abc")
    with pytest.raises(oci.FormatError, match="shorter"):
        list(read_file_exact(layer, "short", 10))


# -- node probes and plans -------------------------------------------------------------------

def test_parse_probe_of_a_real_lab_node() -> None:
    state = parse_probe("n1", (DATA / "ctr_probe_1.6.20.txt").read_text())
    pause = state.images["registry.k8s.io/pause:3.10"]
    assert pause.target.startswith("sha256:6190620")
    assert pause.labels["io.cri-containerd.pinned"] == "pinned"
    assert "sha256:80ec5d562cc68639a31a0c8691c564c76d4a68052f5861635287acf83a422519" in state.snapshots  # no parent
    assert "sha256:45fa6872d53a424fd0026b89b506cf3d3e7c4ccd059ae35ab1c588a1a78be60c" in state.snapshots
    assert not any(len(s) != 71 for s in state.snapshots)  # active (container) snapshots are left out
    assert "sha256:073cdb0972d41942f2dee4aa85ed176bfbc0211c5742c40ce3c877c5e1c8afbe" in state.content


def test_image_lines_and_labels() -> None:
    assert parse_labels("-") == {}
    assert parse_labels("a=1,b=") == {"a": "1", "b": ""}
    line = ("localhost/x:y application/vnd.docker.distribution.manifest.v2+json sha256:" + "e" * 64
            + " 72.5 MiB linux/amd64 -")
    record = parse_image_line(line)
    assert record is not None and record.name == "localhost/x:y" and record.labels == {}
    assert parse_image_line("REF TYPE DIGEST SIZE PLATFORMS LABELS") is None


def state(images: dict[str, str], snapshots: set[str], content: set[str] = frozenset()) -> NodeState:  # type: ignore[assignment]
    from kubetest_infra.loadplan import ImageRecord

    return NodeState("n", {k: ImageRecord(k, v) for k, v in images.items()}, frozenset(snapshots),
                     frozenset(content))


def test_plan_sends_only_the_layers_above_the_unpacked_prefix() -> None:
    parts = parts_for([b"base", b"deps", b"app-v2"])
    chain = parts.chain
    ref = "localhost/app:s-1"
    assert plan_node(parts, ref, state({}, set())).send == (0, 1, 2)
    top_changed = plan_node(parts, ref, state({ref: "sha256:" + "0" * 64}, {chain[0], chain[1]}))
    assert top_changed.action == "transfer" and top_changed.send == (2,)
    # a blob already in the content store (imported without unpacking) is not sent again
    assert plan_node(parts, ref, state({}, {chain[0]}, {parts.diff_ids[1]})).send == (2,)
    # a committed snapshot higher up implies its parents: nothing below it is sent
    assert plan_node(parts, ref, state({}, {chain[1]})).send == (2,)


def test_plan_present_and_retag_need_the_manifest_and_the_rootfs() -> None:
    parts = parts_for([b"base", b"app"])
    ref = "localhost/app:s-1"
    everything = set(parts.chain)
    assert plan_node(parts, ref, state({ref: parts.manifest_digest}, everything)).action == "present"
    # the record is there but its rootfs is not unpacked: config + manifest travel, no layer
    missing_rootfs = plan_node(parts, ref, state({ref: parts.manifest_digest}, set(), set(parts.diff_ids)))
    assert missing_rootfs.action == "transfer" and missing_rootfs.send == ()
    other_run = plan_node(parts, ref, state({"localhost/app:s-0": parts.manifest_digest}, everything))
    assert other_run.action == "retag" and other_run.retag_from == "localhost/app:s-0"
    same_layers_new_config = plan_node(parts, ref, state({ref: "sha256:" + "1" * 64}, everything))
    assert same_layers_new_config.action == "transfer" and same_layers_new_config.send == ()


def test_readback_parsing() -> None:
    manifest = {"config": {"digest": "sha256:" + "c" * 64}, "layers": [{"digest": "sha256:" + "d" * 64}]}
    text = ("@name docker.io/x/y:1\n@line docker.io/x/y:1 application/vnd.docker.distribution.manifest.v2+json "
            "sha256:" + "f" * 64 + " 1.0 KiB linux/amd64 "
            "io.cri-containerd.pinned=pinned,kubetest-infra.io/loaded=true\n"
            "@manifest\n" + json.dumps(manifest, indent=2) + "\n\n@snapshot yes\n"
            "@name missing:1\n@line \n@snapshot no\n")
    found = parse_readback(text)
    rb = found["docker.io/x/y:1"]
    assert rb.config_digest == "sha256:" + "c" * 64
    assert rb.layer_digests == ("sha256:" + "d" * 64,)
    assert rb.snapshot and rb.labels["io.cri-containerd.pinned"] == "pinned"
    assert found["missing:1"].target == "" and not found["missing:1"].snapshot


def test_staging_names_are_references_and_only_old_ones_are_stale() -> None:
    name = staging_name(3, now=1000.0, nonce="ab12")
    assert name == "kti-staging.local/s1000-ab12:3"
    fresh = staging_name(0, now=5000.0, nonce="cd34")
    assert stale_staging([name, fresh, "localhost/app:s-1"], now=5100.0) == [name]


def test_load_args_put_every_value_in_positional_parameters() -> None:
    args = load_args("overlayfs", "linux/amd64", do_import=True, stale=["kti-staging.local/s1-aa:0"],
                     labels={"io.cri-containerd.pinned": "pinned"},
                     quads=[("kti-staging.local/s9-bb:0", "localhost/a:b", "sha256:c", "sha256:m", "-")])
    assert args == ["overlayfs", "linux/amd64", "1", "1", "kti-staging.local/s1-aa:0", "1",
                    "io.cri-containerd.pinned=pinned", "kti-staging.local/s9-bb:0", "localhost/a:b", "sha256:c",
                    "sha256:m", "-"]
    with pytest.raises(ValueError, match="labels"):
        load_args("o", "p", do_import=False, stale=[], labels={"a": "x; rm -rf /"}, quads=[])


def test_outcome_lines() -> None:
    handled, failed = parse_outcome("@handled docker.io/a:1\n@failed docker.io/b:1 staging is sha256:x not sha256:y\n"
                                    "@unlabelled docker.io/c:1\n")
    assert handled == {"docker.io/a:1"}
    assert failed == {"docker.io/b:1": "staging is sha256:x not sha256:y", "docker.io/c:1": "labels were not set"}


def test_kind_node_names() -> None:
    assert kind_node_names("c", 1, 2) == ["c-control-plane", "c-worker", "c-worker2"]
    assert kind_node_names("c", 3) == ["c-control-plane", "c-control-plane2", "c-control-plane3"]
