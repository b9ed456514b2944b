from __future__ import annotations

from pathlib import Path

import pytest

from kubetest_infra.render import (
    DriftError,
    ImagePath,
    ManifestError,
    load_manifests,
    namespace_problems,
    placeholder_names,
    referenced_images,
    render,
)

DS = "localhost/datastorage:gateway-0123456789ab"
MIG = "localhost/migrations:gateway-0123456789ab"

DEPLOY = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: datastorage}
spec:
  template:
    spec:
      initContainers:
      - {name: wait, image: "busybox:1.36"}
      containers:
      - name: datastorage
        image: ${image:datastorage}
        env:
        - {name: MIGRATIONS_IMAGE, value: "${image:migrations}"}
"""


def load(tmp_path: Path, text: str, name: str = "m.yaml") -> tuple[list, list]:  # type: ignore[type-arg]
    (tmp_path / name).write_text(text)
    return load_manifests([tmp_path / name])


def test_placeholders_are_substituted_everywhere_and_pull_policy_set(tmp_path: Path) -> None:
    objs, srcs = load(tmp_path, DEPLOY)
    out = render(objs, srcs, {"datastorage": DS, "migrations": MIG})
    spec = out.objects[0]["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["image"] == DS
    assert c["imagePullPolicy"] == "Never"
    assert c["env"][0]["value"] == MIG
    assert "imagePullPolicy" not in spec["initContainers"][0]  # external image: pulled as usual
    assert {s.image for s in out.substitutions} == {"datastorage", "migrations"}
    assert out.unused == ()
    assert "${image:" in objs[0]["spec"]["template"]["spec"]["containers"][0]["image"], "input not mutated"


def test_the_kubernaut_bug_is_refused_with_both_references(tmp_path: Path) -> None:
    pregenerated = "localhost/datastorage:gateway-1884d074"
    objs, srcs = load(tmp_path, DEPLOY.replace("${image:datastorage}", pregenerated))
    with pytest.raises(DriftError) as info:
        render(objs, srcs, {"datastorage": DS, "migrations": MIG})
    text = str(info.value)
    assert pregenerated in text
    assert DS in text
    assert "did not build" in text
    assert "Hint:" in text


def test_latest_untagged_and_unknown_placeholders_are_all_reported(tmp_path: Path) -> None:
    text = DEPLOY.replace("busybox:1.36", "busybox").replace("${image:migrations}", "${image:nope}")
    text = text.replace("${image:datastorage}", "redis:latest")
    objs, srcs = load(tmp_path, text)
    with pytest.raises(DriftError) as info:
        render(objs, srcs, {"datastorage": DS, "migrations": MIG})
    problems = info.value.problems
    assert len(problems) == 3
    assert any("'busybox' has no tag" in p for p in problems)
    assert any("latest" in p for p in problems)
    assert any("${image:nope}" in p and "datastorage, migrations" in p for p in problems)
    assert all("m.yaml (document 1)" in p for p in problems)


def test_container_name_matching_only_for_empty_or_untagged(tmp_path: Path) -> None:
    text = """
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - {name: datastorage, image: localhost/datastorage}
  - {name: migrations}
"""
    objs, srcs = load(tmp_path, text)
    out = render(objs, srcs, {"datastorage": DS, "migrations": MIG})
    images = [c["image"] for c in out.objects[0]["spec"]["containers"]]
    assert images == [DS, MIG]
    with pytest.raises(DriftError):
        render(objs, srcs, {"datastorage": DS, "migrations": MIG}, match_container_names=False)


def test_json_paths_for_custom_resources(tmp_path: Path) -> None:
    text = """
apiVersion: example.com/v1
kind: Agent
metadata: {name: a}
spec:
  sidecars:
  - {image: placeholder}
  - {image: placeholder}
"""
    objs, srcs = load(tmp_path, text)
    paths = [ImagePath("Agent", "spec.sidecars[*].image", "datastorage")]
    out = render(objs, srcs, {"datastorage": DS}, image_paths=paths)
    assert [s["image"] for s in out.objects[0]["spec"]["sidecars"]] == [DS, DS]
    with pytest.raises(DriftError, match="not found"):
        render(objs, srcs, {"datastorage": DS}, image_paths=[ImagePath("Agent", "spec.nothing", "datastorage")])


def test_unused_built_image_is_reported(tmp_path: Path) -> None:
    objs, srcs = load(tmp_path, DEPLOY.replace("${image:migrations}", "x"))
    out = render(objs, srcs, {"datastorage": DS, "migrations": MIG, "extra": "localhost/extra:g-1"})
    assert out.unused == ("extra", "migrations")
    assert any("extra" in w for w in out.warnings)


def test_malformed_yaml_names_file_and_document(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: [unclosed\n")
    with pytest.raises(ManifestError, match=r"bad.yaml \(document 2\)") as info:
        load_manifests([tmp_path / "bad.yaml"])
    assert "Hint:" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("- a\n- b\n", "must be a mapping"), ("kind: ConfigMap\nmetadata: {name: a}\n", "missing apiVersion"),
     ("apiVersion: v1\nkind: ConfigMap\n", "without metadata.name")],
)
def test_not_an_object(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(ManifestError, match=fragment):
        load_manifests([tmp_path / "x.yaml"])


def test_directories_lists_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: x}}\n")
    (tmp_path / "a.yml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n---\n")
    objs, _ = load_manifests([tmp_path])
    assert [o["kind"] for o in objs] == ["Namespace", "ConfigMap"]
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifests([tmp_path / "missing.yaml"])


def test_image_ids_annotation_rolls_out_a_rebuilt_image_behind_the_same_ref(tmp_path: Path) -> None:
    objs, srcs = load(tmp_path, DEPLOY)
    images = {"datastorage": DS, "migrations": MIG}

    def annotation(image_id: str) -> str:
        out = render(objs, srcs, images, image_ids={DS: image_id})
        return out.objects[0]["spec"]["template"]["metadata"]["annotations"]["kubetest-infra.io/image-ids"]

    assert annotation("sha256:" + "a" * 64) == annotation("sha256:" + "a" * 64)
    assert annotation("sha256:" + "a" * 64) != annotation("sha256:" + "b" * 64)
    pod = ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
           "spec:\n  containers: [{name: c, image: '${image:datastorage}'}]\n")
    pobjs, psrcs = load(tmp_path, pod, "pod.yaml")
    out = render(pobjs, psrcs, images, image_ids={DS: "sha256:" + "c" * 64})
    assert "kubetest-infra.io/image-ids" in out.objects[0]["metadata"]["annotations"]


def test_referenced_images_come_from_values_and_container_names_never_comments(tmp_path: Path) -> None:
    text = DEPLOY.replace("      containers:\n", "      # old: ${image:gone}\n      containers:\n") + """
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - {name: worker, image: worker}
  - {name: other, image: "busybox:1.36"}
"""
    objs, _ = load(tmp_path, text)
    images = {"datastorage": DS, "migrations": MIG, "worker": "localhost/worker:gateway-0123456789ab",
              "unused": "localhost/unused:gateway-0123456789ab"}
    assert placeholder_names(objs) == {"datastorage", "migrations"}
    assert referenced_images(objs, images) == {"datastorage", "migrations", "worker"}
    assert referenced_images(objs, images, match_container_names=False) == {"datastorage", "migrations"}
    assert referenced_images(objs, {"datastorage": DS}) == {"datastorage"}, "only declared images"


def test_referenced_images_agree_with_what_render_substitutes(tmp_path: Path) -> None:
    text = DEPLOY + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: worker}]\n"
    objs, srcs = load(tmp_path, text)
    images = {"datastorage": DS, "migrations": MIG, "worker": "localhost/worker:gateway-0123456789ab"}
    out = render(objs, srcs, images)
    assert referenced_images(objs, images) == {s.image for s in out.substitutions}


def test_image_paths_count_as_references(tmp_path: Path) -> None:
    objs, _ = load(tmp_path, "apiVersion: example.com/v1\nkind: Agent\nmetadata: {name: a}\nspec: {image: x}\n")
    assert referenced_images(objs, {"agent": DS}, image_paths=[ImagePath("Agent", "spec.image", "agent")]) == {"agent"}
    assert referenced_images(objs, {"agent": DS}, image_paths=[ImagePath("Agent", "spec.nope", "agent")]) == set()


def test_generate_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("apiVersion: batch/v1\nkind: Job\nmetadata: {generateName: migrate-}\n")
    with pytest.raises(ManifestError, match="generateName") as info:
        load_manifests([tmp_path / "g.yaml"])
    assert "name: migrate" in info.value.hint


def test_an_empty_directory_and_duplicate_keys_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("nothing to apply\n")
    with pytest.raises(ManifestError, match=r"holds no \.yaml"):
        load_manifests([tmp_path / "empty"])
    (tmp_path / "d.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: 1, k: 2}\n")
    with pytest.raises(ManifestError, match=r"data.k is written twice \(lines 4 and 4\)"):
        load_manifests([tmp_path / "d.yaml"])


def test_namespace_problems(tmp_path: Path) -> None:
    text = """
apiVersion: v1
kind: ConfigMap
metadata: {name: same, namespace: suite}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other, namespace: elsewhere}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: cluster-scoped, namespace: ignored}
---
apiVersion: v1
kind: Namespace
metadata: {name: suite}
---
apiVersion: v1
kind: Namespace
metadata: {name: extra}
"""
    objs, srcs = load(tmp_path, text)
    problems = namespace_problems(objs, srcs, "suite")
    assert [str(p).split(": ", 1)[1].split(" ")[0] for p in problems] == ["ConfigMap/other", "Namespace/extra"]
    assert all("suite" in p.hint for p in problems)
    with pytest.raises(ManifestError, match="elsewhere"):
        render(objs, srcs, {}, namespace="suite")
    render(objs[:1], srcs[:1], {}, namespace="suite")
