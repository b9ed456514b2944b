"""Image formats for loading into containerd: chain ids, manifests, OCI-layout streams, docker archives.

Pure functions and small stream transformers, no processes:

- :func:`chain_ids`: the snapshot key of each layer (OCI image spec: ``ChainID(L₀…Lₙ)``), which is
  what containerd's unpacker stats to skip a layer that is already unpacked;
- :func:`docker_manifest`: the schema-2 manifest containerd's archive importer writes for a Docker
  archive, byte for byte, so a layer-aware load and a full ``docker save`` import of the same image
  produce the same manifest digest on the node;
- :func:`oci_layout`: an OCI image layout as a tar stream (``oci-layout``, blobs, ``index.json``
  **last**): an archive cut short before its index is refused by ``ctr images import``, so a stream
  aborted mid-way (a layer that fails verification) never creates an image record;
- :func:`rename_docker_archive`: re-emits a ``docker save`` stream with other names in its
  ``manifest.json`` (staging names), hashing every ``layer.tar`` on the way.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
OCI_REF_ANNOTATION = "org.opencontainers.image.ref.name"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
BLOCK = 512
CHUNK = 1 << 20


class FormatError(ValueError):
    """Bytes that do not match what they claim to be (a digest, a size, an archive's structure)."""


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob: ``sha256:…`` digest and size in bytes."""

    digest: str
    size: int


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def to_json(self) -> dict[str, str]:
        doc = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            doc["variant"] = self.variant
        return doc

    @property
    def spec(self) -> str:
        """``os/arch[/variant]`` as ``ctr --platform`` takes it."""
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> tuple[str, ...]:
    """ChainID of every prefix of ``diff_ids`` (``ChainID(L₀) = DiffID(L₀)``, then ``sha256(parent + " " + diff)``)."""
    chain: list[str] = []
    for diff in diff_ids:
        chain.append(diff if not chain else sha256(f"{chain[-1]} {diff}".encode()))
    return tuple(chain)


def config_facts(config: bytes) -> tuple[tuple[str, ...], Platform]:
    """The diff ids and platform recorded in an image config."""
    try:
        doc = json.loads(config)
        diffs = tuple(str(d) for d in doc["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"not an image config with rootfs.diff_ids: {exc}") from exc
    if any(not d.startswith("sha256:") or len(d) != 71 for d in diffs):
        raise FormatError("image config lists a diff id that is not a sha256 digest")
    return diffs, Platform(str(doc.get("os") or "linux"), str(doc.get("architecture") or "amd64"),
                           str(doc.get("variant") or ""))


def _compact(doc: Any) -> bytes:
    # Go's encoding/json: no spaces; our strings never need its HTML escaping.
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _descriptor(media_type: str, blob: Blob) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": blob.digest, "size": blob.size}


def docker_manifest(config: Blob, layers: Sequence[Blob]) -> bytes:
    """The manifest containerd's archive importer writes for a Docker archive (same bytes, same digest)."""
    return _compact({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                     "config": _descriptor(DOCKER_CONFIG, config),
                     "layers": [_descriptor(DOCKER_LAYER, layer) for layer in layers]})


@dataclass(frozen=True)
class IndexEntry:
    manifest: Blob
    name: str  # the full containerd image name the record gets
    platform: Platform


def oci_index(entries: Sequence[IndexEntry]) -> bytes:
    manifests = []
    for e in entries:
        tag = e.name.rsplit(":", 1)[1] if ":" in e.name.rsplit("/", 1)[-1] else e.name
        manifests.append({**_descriptor(DOCKER_MANIFEST, e.manifest), "platform": e.platform.to_json(),
                          "annotations": {IMAGE_NAME_ANNOTATION: e.name, OCI_REF_ANNOTATION: tag}})
    return _compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})


def tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info.tobuf(format=tarfile.GNU_FORMAT)


def tar_padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


TAR_END = b"\0" * (2 * BLOCK)


@dataclass(frozen=True)
class Entry:
    """One file of an archive: its name, exact size and the chunks that make it."""

    name: str
    size: int
    chunks: Callable[[], Iterable[bytes]]


def blob_entry(data: bytes) -> Entry:
    return Entry(f"blobs/sha256/{sha256(data).split(':', 1)[1]}", len(data), lambda: (data,))


def tar_stream(entries: Iterable[Entry]) -> Iterator[bytes]:
    """A tar of ``entries``; raises :class:`FormatError` if an entry yields more or fewer bytes than its size."""
    for entry in entries:
        yield tar_header(entry.name, entry.size)
        sent = 0
        for chunk in entry.chunks():
            sent += len(chunk)
            if sent > entry.size:
                raise FormatError(f"{entry.name}: more bytes than its size {entry.size}")
            yield chunk
        if sent != entry.size:
            raise FormatError(f"{entry.name}: {sent} bytes, expected {entry.size}")
        yield tar_padding(entry.size)
    yield TAR_END


@dataclass(frozen=True)
class ImageParts:
    """What an OCI-layout load of one image needs: its config bytes and its layers' (diff id, tar size)."""

    image_id: str
    config: bytes
    layers: tuple[Blob, ...]  # digest = diff id (uncompressed tar), size = tar size
    platform: Platform

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(layer.digest for layer in self.layers)

    @property
    def chain(self) -> tuple[str, ...]:
        return chain_ids(self.diff_ids)

    @property
    def manifest(self) -> bytes:
        return docker_manifest(Blob(self.image_id, len(self.config)), self.layers)

    @property
    def manifest_digest(self) -> str:
        return sha256(self.manifest)


def oci_layout(images: Sequence[tuple[ImageParts, str]], layers: Sequence[Entry]) -> Iterator[bytes]:
    """An OCI image layout naming each image ``name``, carrying ``layers`` (any subset) and every config.

    Layers come first and ``index.json`` last: containerd refuses a layout without its index, so a
    stream that stops early (an aborted transfer) cannot create an image record.
    """
    entries: list[Entry] = [Entry("oci-layout", len(OCI_LAYOUT), lambda: (OCI_LAYOUT,)), *layers]
    seen: set[str] = set()
    index: list[IndexEntry] = []
    for parts, name in images:
        for data in (parts.config, parts.manifest):
            entry = blob_entry(data)
            if entry.name not in seen:
                seen.add(entry.name)
                entries.append(entry)
        index.append(IndexEntry(Blob(parts.manifest_digest, len(parts.manifest)), name, parts.platform))
    data = oci_index(index)
    entries.append(Entry("index.json", len(data), lambda: (data,)))
    return tar_stream(entries)


def layer_entry(layer: Blob, chunks: Callable[[], Iterable[bytes]]) -> Entry:
    """A layer blob whose bytes are checked against its digest as they pass (:class:`FormatError` at the end)."""

    def verified() -> Iterator[bytes]:
        h = hashlib.sha256()
        for chunk in chunks():
            h.update(chunk)
            yield chunk
        if "sha256:" + h.hexdigest() != layer.digest:
            raise FormatError(f"layer {layer.digest[:19]}: its bytes hash to sha256:{h.hexdigest()[:12]}")

    return Entry(f"blobs/sha256/{layer.digest.split(':', 1)[1]}", layer.size, verified)


# -- docker archives (`docker save`) ------------------------------------------------------------

def rename_docker_archive(stream: IO[bytes], names: Mapping[str, str],
                          digests: dict[str, str] | None = None) -> Iterator[bytes]:
    """Re-emit a Docker archive read from ``stream`` with ``manifest.json``'s RepoTags renamed.

    ``names`` maps a config file name's digest (``sha256:…``, the image id) to the one name that image
    gets. ``digests`` (if given) receives ``layer file → sha256`` of every regular ``*.tar`` entry,
    hashed on the way. Entries stream through in 1 MiB chunks; only ``manifest.json`` is rewritten.
    """
    seen_manifest = False
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.name in ("manifest.json", "./manifest.json"):
                src = tar.extractfile(member)
                doc = json.loads(src.read() if src else b"[]")
                for item in doc:
                    image_id = "sha256:" + str(item.get("Config", "")).split("/")[-1].removesuffix(".json")
                    if image_id in names:
                        item["RepoTags"] = [names[image_id]]
                data = json.dumps(doc).encode()
                member.size = len(data)
                yield member.tobuf(format=tarfile.GNU_FORMAT)
                yield data + tar_padding(len(data))
                seen_manifest = True
                continue
            yield member.tobuf(format=tarfile.GNU_FORMAT)
            if not member.isreg():
                continue
            src = tar.extractfile(member)
            h = hashlib.sha256() if digests is not None and member.name.endswith(".tar") else None
            left = member.size
            while left > 0 and src is not None:
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    raise FormatError(f"docker archive entry {member.name} ends early")
                left -= len(chunk)
                if h is not None:
                    h.update(chunk)
                yield chunk
            if h is not None and digests is not None:
                digests[member.name] = "sha256:" + h.hexdigest()
            yield tar_padding(member.size)
    if not seen_manifest:
        raise FormatError("the docker archive has no manifest.json")
    yield TAR_END


def docker_archive_layers(manifest_json: bytes) -> list[tuple[str, list[str]]]:
    """(config file, layer files) of each image in a Docker archive's ``manifest.json``."""
    doc = json.loads(manifest_json)
    return [(str(item["Config"]), [str(x) for x in item["Layers"]]) for item in doc]


def read_tar_member(data: bytes, name: str) -> bytes | None:
    """One member of an in-memory tar (for tests and small archives)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        try:
            f = tar.extractfile(name)
        except KeyError:
            return None
        return f.read() if f else None
