"""Reading image layers straight out of a local Docker engine's store, one layer at a time.

``docker save`` (Docker 20.10) writes *every* layer of an image to a temporary directory before the
first byte leaves the engine, so even a one-line change costs a full export. The engine keeps, for
each layer, a *tar-split* record (``image/overlay2/layerdb/sha256/<chainID>/tar-split.json.gz``:
the raw tar headers and padding, plus the name and size of each file) and the files themselves
(``overlay2/<cache-id>/diff``). Replaying the record re-creates the exact layer tar whose sha256 is
the layer's diff id — that is how the engine itself exports it — so one layer can be read without
touching the others.

Everything is checked, nothing trusted: the config's sha256 must be the image id, the layer record's
``diff`` file must be the expected diff id, file names must stay inside the layer directory (no
symlink is followed), and the bytes are hashed while they stream (:func:`oci.layer_entry`); any
mismatch raises :class:`~kubetest_infra.oci.FormatError` and the caller falls back to ``docker save``.

:meth:`DockerStore.open` returns None (with the reason) when the store cannot be read here: another
storage driver, a remote or rootless-elsewhere engine, no permission.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import stat
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubetest_infra.engine import Engine
from kubetest_infra.oci import CHUNK, Blob, Entry, FormatError, ImageParts, chain_ids, config_facts, layer_entry

_CACHE_LAYERS = 64
_HEX = frozenset("0123456789abcdef")


def _hex(digest: str) -> str:
    algo, _, value = digest.partition(":")
    if algo != "sha256" or len(value) != 64 or not set(value) <= _HEX:
        raise FormatError(f"not a sha256 digest: {digest!r}")
    return value


@dataclass(frozen=True)
class LayerRecipe:
    """How to replay one layer tar: raw segments (bytes) and files (relative path, size), in order."""

    diff_id: str
    directory: Path
    items: tuple[bytes | tuple[str, int], ...]
    size: int


def parse_tar_split(lines: Iterator[bytes]) -> tuple[tuple[bytes | tuple[str, int], ...], int]:
    """The items of a tar-split record (``type`` 2: raw segment, 1: file payload by name) and the tar size."""
    items: list[bytes | tuple[str, int]] = []
    total = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            kind = int(entry["type"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"unreadable tar-split entry: {exc}") from exc
        if kind == 2:
            payload = base64.b64decode(entry.get("payload") or b"")
            items.append(payload)
            total += len(payload)
        elif kind == 1:
            size = int(entry.get("size") or 0)
            if size <= 0:
                continue  # directories, links, empty files: their header is in a segment
            raw = entry.get("name_raw")
            name = base64.b64decode(raw).decode("utf-8", "surrogateescape") if raw else str(entry.get("name", ""))
            items.append((name, size))
            total += size
        else:
            raise FormatError(f"unknown tar-split entry type {kind}")
    return tuple(items), total


def _safe_relpath(name: str) -> str:
    """A tar member name as a path inside the layer directory; refuses anything that would leave it."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise FormatError(f"layer file name {name!r} leaves the layer directory")
    return "/".join(parts)


class LayerDir:
    """A layer directory whose sub-directories are opened one component at a time, never through a
    symlink, and kept open while the layer is replayed (one ``open`` per directory, not per file)."""

    _DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    _FILE = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[str, int] = {}

    def __enter__(self) -> LayerDir:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _dir_fd(self, rel: str) -> int:
        fd = self._fds.get(rel)
        if fd is None:
            if rel:
                parent, _, name = rel.rpartition("/")
                fd = os.open(name, self._DIR, dir_fd=self._dir_fd(parent))
            else:
                fd = os.open(self.directory, self._DIR)
            self._fds[rel] = fd
        return fd

    def read(self, name: str, size: int) -> Iterator[bytes]:
        """Exactly ``size`` bytes of the regular file ``name`` (a tar member name) in this layer."""
        rel = _safe_relpath(name)
        parent, _, base = rel.rpartition("/")
        try:
            fd = os.open(base, self._FILE, dir_fd=self._dir_fd(parent))
        except OSError as exc:
            raise FormatError(f"layer file {rel}: {exc.strerror}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FormatError(f"layer file {rel} is not a regular file")
            left = size
            while left:
                chunk = os.read(fd, min(CHUNK, left))
                if not chunk:
                    raise FormatError(f"layer file {rel} is shorter than its recorded {size} bytes")
                left -= len(chunk)
                yield chunk
        finally:
            os.close(fd)


def read_file_exact(directory: Path, name: str, size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of a regular file under ``directory``, following no symlink on the way."""
    with LayerDir(directory) as layer:
        yield from layer.read(name, size)


def replay(recipe: LayerRecipe) -> Iterator[bytes]:
    """The layer tar, coalesced into chunks of about 1 MiB (hashing is the caller's: :func:`oci.layer_entry`)."""
    buf = bytearray()
    with LayerDir(recipe.directory) as layer:
        for item in recipe.items:
            if isinstance(item, bytes):
                buf += item
            else:
                for chunk in layer.read(item[0], item[1]):
                    if not buf and len(chunk) >= CHUNK:
                        yield chunk
                        continue
                    buf += chunk
                    if len(buf) >= CHUNK:
                        yield bytes(buf)
                        buf.clear()
            if len(buf) >= CHUNK:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)


class DockerStore:
    """Read-only access to a local Docker engine's overlay2 image store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layerdb = root / "image" / "overlay2" / "layerdb" / "sha256"
        self.imagedb = root / "image" / "overlay2" / "imagedb" / "content" / "sha256"
        self._recipes: OrderedDict[str, LayerRecipe] = OrderedDict()

    @classmethod
    def open(cls, engine: Engine) -> tuple[DockerStore | None, str]:
        """The store of ``engine`` if it can be read from here, else (None, why not)."""
        if engine.name != "docker":
            return None, f"the {engine.name} engine has no Docker layer store"
        res = engine.run("info", "--format", "{{.Driver}}|{{.DockerRootDir}}", check=False, timeout=30)
        driver, _, root = res.stdout.strip().partition("|")
        if res.returncode != 0 or driver != "overlay2":
            return None, f"storage driver {driver or 'unknown'} (only overlay2 is read directly)"
        store = cls(Path(root))
        if not os.access(store.layerdb, os.R_OK | os.X_OK) or not os.access(store.imagedb, os.R_OK | os.X_OK):
            return None, f"{root} is not readable here (a remote engine, or no permission)"
        return store, ""

    def parts(self, image_id: str) -> ImageParts:
        """Config bytes (verified against ``image_id``) and every layer's diff id and tar size."""
        try:
            config = (self.imagedb / _hex(image_id)).read_bytes()
        except OSError as exc:
            raise FormatError(f"image {image_id[:19]} is not in the engine store at {self.root}") from exc
        if "sha256:" + hashlib.sha256(config).hexdigest() != image_id:
            raise FormatError(f"the engine's config of {image_id[:19]} does not hash to its id")
        diff_ids, platform = config_facts(config)
        layers = tuple(Blob(diff, self.recipe(chain, diff).size) for diff, chain in zip(diff_ids, chain_ids(diff_ids),
                                                                                       strict=True))
        return ImageParts(image_id, config, layers, platform)

    def recipe(self, chain_id: str, diff_id: str) -> LayerRecipe:
        cached = self._recipes.get(chain_id)
        if cached is not None:
            self._recipes.move_to_end(chain_id)
            return cached
        layer_dir = self.layerdb / _hex(chain_id)
        try:
            recorded = (layer_dir / "diff").read_text().strip()
            cache_id = (layer_dir / "cache-id").read_text().strip()
            if recorded != diff_id:
                raise FormatError(f"layer {chain_id[:19]} records diff id {recorded[:19]}, expected {diff_id[:19]}")
            if "/" in cache_id or cache_id in ("", ".", ".."):
                raise FormatError(f"layer {chain_id[:19]} has an unusable cache id")
            with gzip.open(layer_dir / "tar-split.json.gz", "rb") as f:
                items, size = parse_tar_split(iter(f))
        except OSError as exc:
            raise FormatError(f"layer {chain_id[:19]} cannot be read from the engine store: {exc}") from exc
        recipe = LayerRecipe(diff_id, self.root / "overlay2" / cache_id / "diff", items, size)
        self._recipes[chain_id] = recipe
        while len(self._recipes) > _CACHE_LAYERS:
            self._recipes.popitem(last=False)
        return recipe

    def layer(self, parts: ImageParts, index: int) -> Entry:
        """Layer ``index`` of an image as an archive entry, hashed against its diff id as it streams."""
        recipe = self.recipe(parts.chain[index], parts.diff_ids[index])
        return layer_entry(parts.layers[index], lambda: replay(recipe))
