"""Input digest: sha256 over exactly what the engine receives for a build.

The digest covers every entry of the build context that survives ``.dockerignore`` (see
:mod:`kubetest_infra.dockerignore`): its relative path, its type, the executable bit and its content
(a symlink's target, never the file it points to, since the engine sends the link itself); plus the
Dockerfile (always, even when ignored), the build args, the target and the platform; and every external image
the build pulls in (``FROM``, ``COPY --from``, ``RUN --mount=from=``) as the engine's image id, given
by the caller as a ``ref → id`` mapping (:mod:`kubetest_infra.buildplan` finds the references,
:mod:`kubetest_infra.build` resolves them through the engine), so a moved base tag changes the digest.

Deliberate choices for special files, matching the engine's archive code: sockets are skipped (the
engine skips them), FIFOs and device nodes count by type and device number and are never read.

Speed: content hashes are cached on disk per context, keyed by (size, mtime, ctime, inode); an entry
touched less than two seconds before the scan started is not trusted later ("racily clean", as git
does), so an edit within the same timestamp tick is never missed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kubetest_infra.dockerignore import Matcher, load_matcher
from kubetest_infra.errors import ContextError

DIGEST_VERSION = "kti-input-digest-v2"  # v2: base images folded in
_RACY_NS = 2_000_000_000
_CHUNK = 1 << 20
_PARALLEL_MIN = 64


@dataclass(frozen=True)
class InputDigest:
    """The digest of one build's inputs, with the per-entry fingerprints it was made from."""

    digest: str
    entries: Mapping[str, str] = field(repr=False)
    file_count: int
    total_bytes: int
    seconds: float
    ignore_file: str | None
    base_images: Mapping[str, str] = field(default_factory=dict)  # ref → engine image id

    def changed_since(self, other: InputDigest) -> list[str]:
        """Entries (paths, or ``<dockerfile>``/``<build-args>``/``<base>REF``) that differ between two digests."""
        keys = set(self.entries) | set(other.entries)
        return sorted(k for k in keys if self.entries.get(k) != other.entries.get(k))


@dataclass(frozen=True)
class _Stat:
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Stat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class DigestCache:
    """Content hashes of one context's files, kept on disk between runs."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, tuple[_Stat, str]] = {}
        self._dirty = False
        if path is not None and path.is_file():
            try:
                raw = json.loads(path.read_text())
                for rel, (size, mtime, ctime, ino, sha) in raw.get("entries", {}).items():
                    self._entries[rel] = (_Stat(size, mtime, ctime, ino), sha)
            except (OSError, ValueError, TypeError):
                self._entries = {}  # a broken cache is only a slower run

    @classmethod
    def for_context(cls, context: Path, cache_dir: Path | None = None) -> DigestCache:
        base = cache_dir or default_cache_dir()
        key = hashlib.sha256(str(context.resolve()).encode()).hexdigest()[:32]
        return cls(base / "digest" / f"{key}.json")

    def get(self, rel: str, st: _Stat) -> str | None:
        hit = self._entries.get(rel)
        return hit[1] if hit is not None and hit[0] == st else None

    def put(self, rel: str, st: _Stat, sha: str, scan_started_ns: int) -> None:
        if st.mtime_ns >= scan_started_ns - _RACY_NS:
            self._entries.pop(rel, None)
            return
        self._entries[rel] = (st, sha)
        self._dirty = True

    def retain(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        stale = [k for k in self._entries if k not in keep]
        for k in stale:
            del self._entries[k]
        self._dirty = self._dirty or bool(stale)

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        data = {
            "version": DIGEST_VERSION,
            "entries": {
                k: [s.size, s.mtime_ns, s.ctime_ns, s.ino, sha] for k, (s, sha) in self._entries.items()
            },
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            tmp.replace(self.path)
        except OSError:
            return  # the cache is an optimisation; never fail a build for it
        self._dirty = False


def default_cache_dir() -> Path:
    env = os.environ.get("KTI_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kubetest-infra"


@dataclass(frozen=True)
class _Found:
    rel: str
    kind: str  # file | dir | symlink | fifo | device
    st: os.stat_result
    abspath: str


def _walk(context: Path, matcher: Matcher) -> tuple[list[_Found], bool]:
    """Entries the engine would send, and whether the context held anything at all."""
    found: list[_Found] = []
    saw_any = False
    stack = [("", str(context))]
    while stack:
        rel_dir, abs_dir = stack.pop()
        try:
            with os.scandir(abs_dir) as it:
                entries = list(it)
        except OSError as exc:
            raise ContextError(
                f"cannot read directory {abs_dir}: {exc.strerror}",
                hint="fix its permissions or add it to .dockerignore",
            ) from exc
        for entry in entries:
            saw_any = True
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise ContextError(f"cannot stat {entry.path}: {exc.strerror}",
                                   hint="fix the file or add it to .dockerignore") from exc
            is_dir = stat.S_ISDIR(st.st_mode)
            if matcher.excluded(rel):
                if is_dir and matcher.must_descend(rel):
                    stack.append((rel, entry.path))
                continue
            mode = st.st_mode
            if is_dir:
                found.append(_Found(rel, "dir", st, entry.path))
                stack.append((rel, entry.path))
            elif stat.S_ISREG(mode):
                found.append(_Found(rel, "file", st, entry.path))
            elif stat.S_ISLNK(mode):
                found.append(_Found(rel, "symlink", st, entry.path))
            elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                found.append(_Found(rel, "fifo" if stat.S_ISFIFO(mode) else "device", st, entry.path))
            # sockets: skipped, as the engine's archive code skips them
    return found, saw_any


def _check_context(ctx: Path) -> Path:
    try:
        if not ctx.exists():
            raise ContextError(f"build context {ctx} does not exist", hint="pass an existing directory as context")
        if not ctx.is_dir():
            raise ContextError(f"build context {ctx} is not a directory",
                               hint="the context is the directory sent to the engine; pass its path")
        return ctx.resolve(strict=True)
    except OSError as exc:
        raise ContextError(f"cannot access build context {ctx}: {exc.strerror}",
                           hint="check the permissions of the directory and its parents") from exc


def check_inputs(context: Path | str, dockerfile: Path | str | None = None) -> tuple[Path, Path]:
    """(resolved context, Dockerfile path): the context must be a readable directory, the Dockerfile a file.

    ``dockerfile`` defaults to ``Dockerfile``; a relative path is taken from the context.
    """
    ctx = _check_context(Path(context))
    df = Path(dockerfile) if dockerfile is not None else Path("Dockerfile")
    df = df if df.is_absolute() else ctx / df
    if not df.is_file():
        raise ContextError(
            f"Dockerfile not found: {df}",
            hint="create it, or point --dockerfile at the right file (relative paths start at the context)",
        )
    return ctx, df


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise ContextError(
            f"cannot read {path}: {exc.strerror}",
            hint="make the file readable by this user, or add it to .dockerignore",
        ) from exc
    return h.hexdigest()


def compute_digest(
    context: Path | str,
    dockerfile: Path | str | None = None,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    platform: str | None = None,
    *,
    buildkit: bool = False,
    engine: str = "docker",
    cache: DigestCache | None = None,
    use_cache: bool = True,
    base_images: Mapping[str, str] | None = None,
) -> InputDigest:
    """Digest a build's inputs as the engine would receive them.

    ``dockerfile`` defaults to ``<context>/Dockerfile``; a relative path is taken from the context.
    ``buildkit`` and ``engine`` select the engine's ignore-file rules (see :func:`dockerignore.ignore_file_for`:
    podman reads ``.containerignore`` before ``.dockerignore``).
    ``base_images`` maps each external image reference the build uses to the engine's image id
    (the function stays pure: resolving is the caller's job); ``None`` or ``{}``: none (``FROM scratch``).
    """
    started = time.perf_counter()
    scan_started_ns = time.time_ns()
    ctx, df = check_inputs(context, dockerfile)
    matcher, ignore_file = load_matcher(ctx, df, buildkit, engine)
    found, saw_any = _walk(ctx, matcher)
    if saw_any and not any(f.kind != "dir" for f in found):
        raise ContextError(
            f"every file of the build context {ctx} is excluded by {ignore_file}",
            hint="the engine would receive an empty context; narrow the patterns or add '!' exceptions",
        )
    if cache is None and use_cache:
        cache = DigestCache.for_context(ctx)

    shas: dict[str, str] = {}
    todo: list[_Found] = []
    for f in found:
        if f.kind != "file":
            continue
        hit = cache.get(f.rel, _Stat.of(f.st)) if cache is not None else None
        if hit is None:
            todo.append(f)
        else:
            shas[f.rel] = hit
    if len(todo) >= _PARALLEL_MIN:
        with ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 2) * 2)) as pool:
            results = list(pool.map(lambda f: _hash_file(f.abspath), todo))
    else:
        results = [_hash_file(f.abspath) for f in todo]
    for f, sha in zip(todo, results, strict=True):
        shas[f.rel] = sha
        if cache is not None:
            cache.put(f.rel, _Stat.of(f.st), sha, scan_started_ns)

    entries: dict[str, str] = {}
    total = 0
    for f in found:
        if f.kind == "file":
            exe = "x" if f.st.st_mode & 0o111 else "-"
            entries[f.rel] = f"file {exe} {shas[f.rel]}"
            total += f.st.st_size
        elif f.kind == "dir":
            entries[f.rel] = "dir"
        elif f.kind == "symlink":
            entries[f.rel] = "symlink " + hashlib.sha256(os.fsencode(os.readlink(f.abspath))).hexdigest()
        else:
            entries[f.rel] = f"{f.kind} {os.major(f.st.st_rdev)}:{os.minor(f.st.st_rdev)}"
    try:
        rel_df = df.relative_to(ctx).as_posix()
    except ValueError:  # outside the context: its name and content count, not the machine's path
        rel_df = f"<outside>/{df.name}"
    entries["<dockerfile>"] = f"{rel_df} {_hash_file(str(df))}"
    args = json.dumps(sorted((build_args or {}).items()), separators=(",", ":"))
    entries["<build-args>"] = hashlib.sha256(args.encode()).hexdigest()
    entries["<target>"] = target or ""
    entries["<platform>"] = platform or ""
    for ref, image_id in (base_images or {}).items():
        entries[f"<base>{ref}"] = image_id

    h = hashlib.sha256(DIGEST_VERSION.encode() + b"\n")
    for key in sorted(entries):
        h.update(key.encode("utf-8", "surrogateescape") + b"\0" + entries[key].encode() + b"\n")
    if cache is not None:
        cache.retain(shas)
        cache.save()
    return InputDigest(
        digest=f"sha256:{h.hexdigest()}",
        entries=entries,
        file_count=sum(1 for f in found if f.kind == "file"),
        total_bytes=total,
        seconds=time.perf_counter() - started,
        ignore_file=str(ignore_file) if ignore_file else None,
        base_images=dict(base_images or {}),
    )
