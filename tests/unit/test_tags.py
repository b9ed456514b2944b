from __future__ import annotations

import pytest

from kubetest_infra.errors import TagError
from kubetest_infra.tags import (
    image_ref,
    new_run_id,
    parse_ref,
    require_pinned,
    resolve_run_id,
    validate_tag,
)


def test_run_ids_are_unique_and_tag_safe() -> None:
    ids = {new_run_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    for run_id in list(ids)[:100]:
        assert len(run_id) == 12
        validate_tag(f"suite-{run_id}")


def test_kubernaut_time_based_suffix_repeats_but_ours_does_not() -> None:
    # kubernaut: fmt.Sprintf("%x", time.Now().UnixNano())[:8] keeps the high bits of the clock.
    t0 = 1_734_278_400_000_000_000
    kubernaut = {f"{t:x}"[:8] for t in (t0, t0 + 1_000_000_000, t0 + 2_000_000_000)}
    assert len(kubernaut) == 1, "three runs one second apart get the same kubernaut tag"
    assert len({new_run_id() for _ in range(3)}) == 3


def test_resolve_run_id_order() -> None:
    assert resolve_run_id("given", env={"KTI_RUN_ID": "env"}) == "given"
    assert resolve_run_id(None, env={"KTI_RUN_ID": "ci-42", "PYTEST_XDIST_TESTRUNUID": "ab"}) == "ci-42"
    uid = "1b4e28ba2fa1491d9c3a7ea2f1c8e7d0"
    # every xdist worker sees the same PYTEST_XDIST_TESTRUNUID, so all agree
    assert resolve_run_id(None, env={"PYTEST_XDIST_TESTRUNUID": uid}) == uid[:12]
    assert resolve_run_id(None, env={"PYTEST_XDIST_TESTRUNUID": uid}) == resolve_run_id(
        None, env={"PYTEST_XDIST_TESTRUNUID": uid}
    )
    a, b = resolve_run_id(None, env={}), resolve_run_id(None, env={})
    assert a != b


@pytest.mark.parametrize("bad", ["", "-x", ".x", "a b", "x" * 65, "ü"])
def test_bad_run_ids_are_refused(bad: str) -> None:
    with pytest.raises(TagError, match="Hint:"):
        resolve_run_id(bad or " ", env={})


def test_image_ref_format() -> None:
    assert image_ref("datastorage", "gateway", "1884d074abcd") == "localhost/datastorage:gateway-1884d074abcd"
    assert image_ref("ds", "gw", "r1", registry="") == "ds:gw-r1"
    assert image_ref("team/ds", "gw", "r1", registry="registry.example:5000") == "registry.example:5000/team/ds:gw-r1"


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("latest", "latest"),
        ("LATEST", "latest"),
        ("a" * 129, "129 characters"),
        (".hidden", "invalid image tag"),
        ("-dash", "invalid image tag"),
        ("sp ace", "invalid image tag"),
        ("sl/ash", "invalid image tag"),
    ],
)
def test_validate_tag_refuses(tag: str, fragment: str) -> None:
    with pytest.raises(TagError, match=fragment) as info:
        validate_tag(tag)
    assert "Hint:" in str(info.value)


def test_tag_of_exactly_128_chars_is_allowed() -> None:
    assert validate_tag("a" * 128) == "a" * 128


def test_too_long_consumer_is_refused() -> None:
    with pytest.raises(TagError):
        image_ref("svc", "c" * 200, "run")


@pytest.mark.parametrize(
    ("ref", "domain", "path", "tag", "digest"),
    [
        ("redis", "", "redis", None, None),
        ("redis:7", "", "redis", "7", None),
        ("localhost/ds:gw-1", "localhost", "ds", "gw-1", None),
        ("localhost:5000/a/b:t", "localhost:5000", "a/b", "t", None),
        ("docker.io/library/postgres:16", "docker.io", "library/postgres", "16", None),
        ("quay.io/x/y@sha256:" + "a" * 64, "quay.io", "x/y", None, "sha256:" + "a" * 64),
        ("team/app:1.0", "", "team/app", "1.0", None),
    ],
)
def test_parse_ref(ref: str, domain: str, path: str, tag: str | None, digest: str | None) -> None:
    parsed = parse_ref(ref)
    assert (parsed.domain, parsed.path, parsed.tag, parsed.digest) == (domain, path, tag, digest)
    assert str(parsed) == ref


@pytest.mark.parametrize("ref", ["UPPER/case:1", "a//b:1", "x:bad tag", " lead", "img@sha256:xyz", "a:-x"])
def test_parse_ref_refuses_bad_grammar(ref: str) -> None:
    with pytest.raises(TagError, match="Hint:"):
        parse_ref(ref)


def test_require_pinned() -> None:
    assert require_pinned("postgres:16").tag == "16"
    assert require_pinned("p@sha256:" + "b" * 64).digest is not None
    with pytest.raises(TagError, match="no tag"):
        require_pinned("postgres")
    with pytest.raises(TagError, match="latest"):
        require_pinned("localhost/ds:latest")


def test_local_refs() -> None:
    assert parse_ref("localhost/ds:x").is_local
    assert not parse_ref("docker.io/ds:x").is_local
