from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from kubetest_infra.digest import DigestCache, compute_digest
from kubetest_infra.errors import ContextError


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    (root / "src").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\nCOPY . /app\n")
    (root / "src" / "main.py").write_text("print('v1')\n")
    (root / "README.md").write_text("readme\n")
    return root


def digest(root: Path, **kw: object) -> str:
    return compute_digest(root, use_cache=False, **kw).digest  # type: ignore[arg-type]


def test_digest_is_stable_and_content_sensitive(ctx: Path) -> None:
    d1 = digest(ctx)
    assert d1 == digest(ctx)
    assert d1.startswith("sha256:") and len(d1) == 71
    (ctx / "src" / "main.py").write_text("print('v2')\n")
    assert digest(ctx) != d1


def test_rename_exec_bit_and_new_dir_change_the_digest(ctx: Path) -> None:
    base = digest(ctx)
    (ctx / "src" / "main.py").chmod(0o755)
    exe = digest(ctx)
    assert exe != base
    (ctx / "src" / "main.py").chmod(0o644)
    assert digest(ctx) == base
    (ctx / "src" / "main.py").rename(ctx / "src" / "app.py")
    assert digest(ctx) != base
    (ctx / "src" / "app.py").rename(ctx / "src" / "main.py")
    (ctx / "empty").mkdir()
    assert digest(ctx) != base  # an empty directory lands in the image too


def test_non_exec_mode_bits_and_mtime_do_not_matter(ctx: Path) -> None:
    base = digest(ctx)
    (ctx / "README.md").chmod(0o600)
    os.utime(ctx / "README.md", (1, 1))
    assert digest(ctx) == base


def test_build_args_target_platform_and_dockerfile(ctx: Path) -> None:
    base = digest(ctx)
    assert digest(ctx, build_args={"A": "1"}) != base
    assert digest(ctx, build_args={"A": "1", "B": "2"}) == digest(ctx, build_args={"B": "2", "A": "1"})
    assert digest(ctx, target="prod") != base
    assert digest(ctx, platform="linux/arm64") != base
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /srv\n")
    assert digest(ctx) != base


def test_ignored_files_do_not_count_but_the_dockerfile_always_does(ctx: Path) -> None:
    (ctx / ".dockerignore").write_text("*.md\nDockerfile\n")
    base = compute_digest(ctx, use_cache=False)
    assert "README.md" not in base.entries and "Dockerfile" not in base.entries
    (ctx / "README.md").write_text("changed\n")
    assert digest(ctx) == base.digest
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    changed = compute_digest(ctx, use_cache=False)
    assert changed.digest != base.digest
    assert changed.changed_since(base) == ["<dockerfile>"]


def test_dockerfile_specific_ignore_file_only_with_buildkit(ctx: Path) -> None:
    (ctx / "Dockerfile.dockerignore").write_text("README.md\n")
    classic = compute_digest(ctx, use_cache=False, buildkit=False)
    bk = compute_digest(ctx, use_cache=False, buildkit=True)
    assert "README.md" in classic.entries
    assert "README.md" not in bk.entries
    assert bk.ignore_file is not None and bk.ignore_file.endswith("Dockerfile.dockerignore")


def test_symlink_target_not_followed(ctx: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("a")
    (ctx / "link").symlink_to(outside)
    base = digest(ctx)
    outside.write_text("b")  # the engine sends the link, not what it points to
    assert digest(ctx) == base
    (ctx / "link").unlink()
    (ctx / "link").symlink_to(tmp_path / "elsewhere")
    assert digest(ctx) != base


def test_fifo_is_counted_not_read_and_socket_skipped(ctx: Path) -> None:
    base = digest(ctx)
    os.mkfifo(ctx / "pipe")  # reading it would block forever
    with_fifo = compute_digest(ctx, use_cache=False)
    assert with_fifo.entries["pipe"] == "fifo 0:0"
    assert with_fifo.digest != base
    (ctx / "pipe").unlink()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(ctx / "sock"))
        assert digest(ctx) == base
    finally:
        sock.close()


def test_bad_contexts(tmp_path: Path, ctx: Path) -> None:
    with pytest.raises(ContextError, match="does not exist") as e1:
        compute_digest(tmp_path / "missing")
    assert "Hint:" in str(e1.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ContextError, match="not a directory"):
        compute_digest(tmp_path / "file")
    with pytest.raises(ContextError, match="Dockerfile not found"):
        compute_digest(ctx, "nope.Dockerfile", use_cache=False)
    (ctx / ".dockerignore").write_text("**\n")
    with pytest.raises(ContextError, match="every file of the build context"):
        compute_digest(ctx, use_cache=False)
    (ctx / ".dockerignore").write_text("[oops\n")
    with pytest.raises(ContextError, match="bad pattern"):
        compute_digest(ctx, use_cache=False)


def test_warm_cache_gives_same_digest_and_sees_edits(ctx: Path, tmp_path: Path) -> None:
    old = time.time() - 60
    for p in ctx.rglob("*"):
        os.utime(p, (old, old))
    cache_path = tmp_path / "cache.json"
    cold = compute_digest(ctx, cache=DigestCache(cache_path))
    assert cache_path.exists()
    warm = compute_digest(ctx, cache=DigestCache(cache_path))
    assert warm.digest == cold.digest == digest(ctx)
    # same size, and mtime forced back to the cached value: ctime still changes, so it is re-hashed
    (ctx / "src" / "main.py").write_text("print('v9')\n")
    os.utime(ctx / "src" / "main.py", (old, old))
    edited = compute_digest(ctx, cache=DigestCache(cache_path))
    assert edited.digest != cold.digest
    assert edited.changed_since(cold) == ["src/main.py"]


def test_racily_clean_entries_are_not_cached(ctx: Path, tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "c.json")
    compute_digest(ctx, cache=cache)  # files were just written: too recent to trust later
    assert cache.get("src/main.py", _stat(ctx / "src" / "main.py")) is None


def _stat(path: Path):  # type: ignore[no-untyped-def]
    from kubetest_infra.digest import _Stat

    return _Stat.of(path.stat())


def test_broken_cache_file_is_ignored(ctx: Path, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    assert compute_digest(ctx, cache=DigestCache(path)).digest == digest(ctx)


def test_base_images_are_folded_in_by_id(ctx: Path) -> None:
    """The digest takes ref → id from the caller (no engine here): a moved tag is a new digest."""
    none = compute_digest(ctx, use_cache=False)
    old = compute_digest(ctx, use_cache=False, base_images={"busybox:1": "sha256:" + "1" * 64})
    new = compute_digest(ctx, use_cache=False, base_images={"busybox:1": "sha256:" + "2" * 64})
    assert len({none.digest, old.digest, new.digest}) == 3
    assert new.changed_since(old) == ["<base>busybox:1"]
    assert new.base_images == {"busybox:1": "sha256:" + "2" * 64}
    two = {"a:1": "sha256:" + "a" * 64, "b:1": "sha256:" + "b" * 64}
    assert compute_digest(ctx, use_cache=False, base_images=two).digest == compute_digest(
        ctx, use_cache=False, base_images=dict(reversed(two.items()))).digest
    assert compute_digest(ctx, use_cache=False, base_images={}).digest == none.digest  # FROM scratch
