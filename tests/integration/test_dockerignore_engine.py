"""Our .dockerignore semantics checked against the engine itself.

Each case builds ``FROM scratch / COPY . /ctx/`` and reads back which files landed in the image; the
files our digest covers must be exactly those. Then an excluded file is edited (digest unchanged)
and an included one (digest changed). Every test runs on docker and on podman; on podman the case's
patterns go to ``.containerignore`` next to a decoy ``.dockerignore`` that would exclude everything
but the Dockerfile, so reading the wrong file cannot pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetest_infra.build import BuildSpec
from kubetest_infra.engine import Engine
from tests.integration.conftest import BuilderFactory, image_files, write_context

TREE = {
    "app.py": "a", "app.log": "l", "keep.log": "k", "README.md": "r", "a.txt": "a", "b.txt": "b", "c.txt": "c",
    "build/out.bin": "o", "src/build/gen.go": "g", "src/main.go": "m", "src/util/x_test.go": "t",
    "src/util/x.go": "x", "docs/guide.md": "d", "docs/keep.md": "k", "docs/img/p.png": "p",
    "node_modules/dep/index.js": "i", "sub/node_modules/dep/i.js": "i", "sub/keep": "k", "dir/keep": "k",
    "dir/drop": "d", "tmp/x.tmp": "t", "y.tmp": "t", ".git/HEAD": "h", "lit*star": "s",
}

CASES = {
    "none": "",
    "globs": "*.log\n!keep.log\n**/*_test.go\n[ab].txt\n",
    "leading-slash-and-dirs": "/build\ndocs\n!docs/keep.md\n.git\n",
    "double-star": "**/node_modules\n**/*.tmp\nsrc/**\n!src/main.go\n",
    "exception-not-prefix": "dir\n!**/keep\n",  # engine quirk: dir/keep stays excluded, sub/keep is untouched
    "comments-and-spaces": "# comment\n   README.md   \n\n!   nothing\n?.txt\nlit\\*star\n",
    "all-but": "*\n!src\n!Dockerfile\n",
    "ignore-dockerfile": "Dockerfile\n.dockerignore\n*.md\n",
}


@pytest.mark.each_engine
@pytest.mark.parametrize("case", sorted(CASES))
def test_digest_covers_exactly_what_the_engine_sends(case: str, make_builder: BuilderFactory, engine: Engine,
                                                     tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", dict(TREE), "FROM scratch\nCOPY . /ctx/\n")
    if engine.name == "podman":
        (ctx / ".dockerignore").write_text("*\n!Dockerfile\n")
        (ctx / ".containerignore").write_text(CASES[case] or "# nothing excluded\n")
    elif CASES[case]:
        (ctx / ".dockerignore").write_text(CASES[case])
    builder = make_builder()
    spec = BuildSpec(name="ignorecheck", context=ctx)
    digest = builder.digest(spec)
    image = builder.build(spec)

    in_image = image_files(engine, image.ref)
    ours = {p for p, kind in digest.entries.items() if not p.startswith("<") and kind != "dir"}
    landed = {p for p in in_image if (ctx / p).is_file()}
    assert ours == landed, f"ours-only: {sorted(ours - landed)}, engine-only: {sorted(landed - ours)}"

    excluded = sorted(p for p in TREE if p not in ours)
    included = sorted(p for p in TREE if p in ours)
    if excluded:
        (ctx / excluded[0]).write_text("edited excluded file")
        assert builder.digest(spec).digest == digest.digest, f"editing excluded {excluded[0]} changed the digest"
    (ctx / included[0]).write_text("edited included file")
    assert builder.digest(spec).digest != digest.digest, f"editing included {included[0]} did not change it"


# name -> content of each ignore file in the context; which one the engine reads is the question.
PRECEDENCE = {
    "context-files": {".dockerignore": "a.txt\n", ".containerignore": "b.txt\n"},
    "dockerfile-specific": {".dockerignore": "a.txt\n", ".containerignore": "b.txt\n",
                            "Dockerfile.dockerignore": "c.txt\n"},
    "dockerfile-specific-both": {".containerignore": "b.txt\n", "Dockerfile.dockerignore": "c.txt\n",
                                 "Dockerfile.containerignore": "d.txt\n"},
    "dockerfile-containerignore": {".containerignore": "b.txt\n", "Dockerfile.containerignore": "d.txt\n"},
}
# The file each engine reads (docker: BuildKit, or the classic builder that knows only .dockerignore).
EXPECTED = {
    ("podman", "context-files"): "b.txt", ("podman", "dockerfile-specific"): "c.txt",
    ("podman", "dockerfile-specific-both"): "c.txt", ("podman", "dockerfile-containerignore"): "d.txt",
    ("docker", "context-files"): "a.txt", ("docker", "dockerfile-specific"): "c.txt",
    ("docker", "dockerfile-specific-both"): "c.txt", ("docker", "dockerfile-containerignore"): "",
}


@pytest.mark.each_engine
@pytest.mark.parametrize("case", sorted(PRECEDENCE))
def test_which_ignore_file_the_engine_reads(case: str, make_builder: BuilderFactory, engine: Engine,
                                            tmp_path: Path) -> None:
    """Podman: .containerignore over .dockerignore, Dockerfile-specific first; docker ignores .containerignore."""
    files = {f"{n}.txt": n for n in "abcd"} | PRECEDENCE[case]
    ctx = write_context(tmp_path / "ctx", files, "FROM scratch\nCOPY . /ctx/\n")
    builder = make_builder()
    spec = BuildSpec(name="ignorefile", context=ctx)
    digest = builder.digest(spec)
    landed = image_files(engine, builder.build(spec).ref)
    ours = {p for p, kind in digest.entries.items() if not p.startswith("<") and kind != "dir"}
    assert ours == landed, f"ours-only: {sorted(ours - landed)}, engine-only: {sorted(landed - ours)}"
    expected = EXPECTED[(engine.name, case)]
    if engine.name == "docker" and not engine.info().buildkit and case.startswith("dockerfile-specific"):
        expected = "a.txt" if ".dockerignore" in PRECEDENCE[case] else ""
    assert {f"{n}.txt" for n in "abcd"} - landed == ({expected} if expected else set())
