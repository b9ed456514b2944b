"""Chart values for a run (pure): placeholders, --set keys, helm's merge, and which key produced a string."""

from __future__ import annotations

import pytest

from kubetest_infra import values
from kubetest_infra.values import Layer, ValuesError

REFS = {"app": "localhost/app:s-run1", "db": "docker.io/library/postgres:16@sha256:" + "a" * 64,
        "cache": "registry.local:5000/team/redis:7"}


@pytest.mark.parametrize(("text", "expected"), [
    ("${image:app}", "localhost/app:s-run1"),
    ("${image.repository:app}", "localhost/app"),
    ("${image.tag:app}", "s-run1"),
    ("${image.digest:db}", "sha256:" + "a" * 64),
    ("${image.repository:cache}", "registry.local:5000/team/redis"),
    ("${image.repository:app}:${image.tag:app}", "localhost/app:s-run1"),
    ("prefix-${image.tag:cache}-suffix", "prefix-7-suffix"),
    ("no placeholder", "no placeholder"),
])
def test_each_placeholder_gives_its_part_of_the_runs_reference(text: str, expected: str) -> None:
    assert values.substitute(text, REFS) == expected


@pytest.mark.parametrize(("text", "fragment"), [
    ("${image:web}", "${image:web} names no image of the suite (declared: app, cache, db)"),
    ("${image.registry:app}", "unknown part 'registry'"),
    ("${image.digest:app}", "carries no digest (images the run builds are loaded by tag"),
])
def test_a_placeholder_that_cannot_be_substituted_says_why(text: str, fragment: str) -> None:
    with pytest.raises(ValuesError) as info:
        values.substitute(text, REFS)
    assert fragment in str(info.value)


def test_substitute_tree_replaces_strings_only_and_reports_every_bad_key() -> None:
    tree = {"image": {"repository": "${image.repository:app}", "tag": "${image.tag:app}", "pullPolicy": "Never"},
            "replicas": 2, "sidecars": [{"image": "${image:nope}"}, {"image": "${image.digest:app}"}]}
    out, problems = values.substitute_tree(tree, REFS)
    assert out["image"] == {"repository": "localhost/app", "tag": "s-run1", "pullPolicy": "Never"}
    assert out["replicas"] == 2
    assert [key for key, _ in problems] == ["sidecars[0].image", "sidecars[1].image"]
    assert tree["image"]["tag"] == "${image.tag:app}", "the input is not changed"


@pytest.mark.parametrize(("key", "parts"), [
    ("image.tag", ["image", "tag"]),
    ("a\\.b.c", ["a.b", "c"]),
    ("servers[0].port", ["servers", 0, "port"]),
    ("m[1][2]", ["m", 1, 2]),
    ("nodeSelector.kubernetes\\.io/os", ["nodeSelector", "kubernetes.io/os"]),
])
def test_set_keys_are_parsed_as_helm_parses_them(key: str, parts: list[str | int]) -> None:
    assert values.parse_key(key) == parts
    assert values.key_text(parts) == key.replace("\\.", ".")


@pytest.mark.parametrize("key", ["", "a..b", "a.[0]", "a b", "a[x]", ".a"])
def test_a_malformed_set_key_is_refused(key: str) -> None:
    with pytest.raises(ValuesError):
        values.parse_key(key)


def test_set_key_creates_maps_and_pads_lists_like_helm_set() -> None:
    doc: dict[str, object] = {"image": {"repository": "x"}, "servers": "not a list"}
    values.set_key(doc, ["image", "tag"], "1")
    values.set_key(doc, ["servers", 2, "port"], 80)
    values.set_key(doc, ["a", "b", "c"], True)
    assert doc == {"image": {"repository": "x", "tag": "1"}, "servers": [None, None, {"port": 80}],
                   "a": {"b": {"c": True}}}


def test_merge_is_deep_for_maps_and_replaces_everything_else() -> None:
    base = {"image": {"repository": "r", "tag": "1"}, "list": [1, 2], "x": {"y": 1}}
    over = {"image": {"tag": "2"}, "list": [3], "x": "scalar"}
    assert values.merge(base, over) == {"image": {"repository": "r", "tag": "2"}, "list": [3], "x": "scalar"}
    assert base["image"] == {"repository": "r", "tag": "1"}


def test_origins_name_the_key_and_the_layer_that_decides_it() -> None:
    layers = [Layer("chart/values.yaml", {"image": {"repository": "localhost/app", "tag": "0.1.0"}, "debug": True}),
              Layer("chart/charts/sub/values.yaml", {"image": {"tag": 1.5}}, prefix="sub"),
              Layer("suite/values.yaml", {"image": {"repository": "localhost/app"}}),
              Layer("services.web.helm.set", {"other": {"tag": "0.1.0"}})]
    found = values.origins(layers, ["localhost/app", "0.1.0", "1.5"])
    assert [str(o) for o in found] == [
        "image.repository = localhost/app (suite/values.yaml)",  # the last layer setting it
        "image.tag = 0.1.0 (chart/values.yaml)",
        "other.tag = 0.1.0 (services.web.helm.set)",
        "sub.image.tag = 1.5 (chart/charts/sub/values.yaml)",  # numbers compare as helm prints them
    ]
    assert values.origins(layers, ["True"]) == [], "booleans are never an image part"
