"""Rendering deploy/kubernetes/ kustomizations for tests/test_deploy_files.py.

`render(directory)` runs a real kustomize when one is on PATH (`kustomize build`, else
`kubectl kustomize`, which embeds kustomize). Without one it falls back to `render_in_python`,
a small renderer of exactly the kustomize features the manifests use, and nothing else:

- `resources`: YAML files (several documents each) and folders holding a kustomization.yaml,
  rendered first, in order.
- `namespace`: set on every object but cluster-scoped ones (here: Namespace).
- `labels` with `pairs`, `includeSelectors: false` and `includeTemplates`: added to every
  object's metadata.labels and, with includeTemplates, to the pod templates of workloads.
- `images`: `name` -> `newName` / `newTag` / `digest` in every container and init container.
- `patches` with `path`: strategic merge of one whole object, found by kind and name. Maps merge
  key by key (a null value deletes the key); the lists Kubernetes merges by a key (containers,
  init containers, env, volumes by `name`; volumeMounts by `mountPath`) merge item by item, the
  patch's items first as kustomize orders them, and every other list is replaced.

Any other kustomization field (commonLabels, namePrefix, generators, replicas, components, a
patch with a target, ...) is refused, so a manifest that starts using one fails here rather
than rendering wrong. Whenever a real kustomize is available, the tests also check that this
renderer gives the same objects as it, so the fallback cannot drift from the real thing.
"""

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
# The kinds whose pod template kustomize's `labels: includeTemplates` reaches.
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Strategic merge keys of the lists the patches touch (Kubernetes' patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}


class UnsupportedKustomization(Exception):
    pass


def real_kustomize() -> list[str] | None:
    """The command line of a real kustomize, if this machine has one."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render_with(command: list[str], directory: Path) -> list[dict[str, Any]]:
    output = subprocess.run([*command, str(directory)], capture_output=True, text=True, check=True, timeout=60)  # noqa: S603
    return [document for document in yaml.safe_load_all(output.stdout) if document]


def render(directory: Path) -> list[dict[str, Any]]:
    command = real_kustomize()
    return render_with(command, directory) if command else render_in_python(directory)


def render_in_python(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED_FIELDS
    if unsupported:
        raise UnsupportedKustomization(f"{directory}: {sorted(unsupported)} (see tests/plugins/kustomize_render.py)")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            objects.extend(render_in_python(path))
        else:
            objects.extend(document for document in yaml.safe_load_all(path.read_text()) if document)
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise UnsupportedKustomization(f"{directory}: a patch other than a whole-object file: {patch}")
        apply_patch(objects, yaml.safe_load((directory / patch["path"]).read_text()), directory / patch["path"])
    namespace = kustomization.get("namespace")
    for item in objects:
        if namespace and item["kind"] not in CLUSTER_SCOPED_KINDS:
            item["metadata"]["namespace"] = namespace
        for label_set in kustomization.get("labels", []):
            add_labels(item, label_set)
        for image in kustomization.get("images", []):
            set_image(item, image)
    return objects


def apply_patch(objects: list[dict[str, Any]], patch: dict[str, Any], source: Path) -> None:
    for item in objects:
        if item["kind"] == patch["kind"] and item["metadata"]["name"] == patch["metadata"]["name"]:
            merged = strategic_merge(item, patch)
            item.clear()
            item.update(merged)
            return
    raise UnsupportedKustomization(f"{source}: no {patch['kind']} {patch['metadata']['name']} to patch")


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(target)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(target, list) and isinstance(patch, list) and field in MERGE_KEYS:
        # As kustomize orders them: the patch's items first (merged into the target's item of
        # the same key, if any), then the target's items the patch does not name.
        key = MERGE_KEYS[field]
        existing = {item.get(key): item for item in target}
        named = {item.get(key) for item in patch}
        merged_list = [
            strategic_merge(existing[item.get(key)], item) if item.get(key) in existing else copy.deepcopy(item)
            for item in patch
        ]
        return merged_list + [copy.deepcopy(item) for item in target if item.get(key) not in named]
    return copy.deepcopy(patch)


def add_labels(item: dict[str, Any], label_set: dict[str, Any]) -> None:
    if label_set.get("includeSelectors"):
        raise UnsupportedKustomization("labels with includeSelectors: true")
    pairs = label_set["pairs"]
    item["metadata"].setdefault("labels", {}).update(pairs)
    if label_set.get("includeTemplates") and item["kind"] in POD_TEMPLATE_KINDS:
        item["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def set_image(item: dict[str, Any], image: dict[str, Any]) -> None:
    for container in containers_of(item):
        reference = container.get("image", "")
        name, tag = split_image(reference)
        if name != image["name"]:
            continue
        new = image.get("newName", name)
        if "digest" in image:
            new += "@" + image["digest"]
        elif "newTag" in image:
            new += ":" + str(image["newTag"])
        elif tag:
            new += tag
        container["image"] = new


def split_image(reference: str) -> tuple[str, str]:
    """'registry:5000/name:tag' -> ('registry:5000/name', ':tag'); a digest is kept likewise."""
    if "@" in reference:
        name, digest = reference.split("@", 1)
        return name, "@" + digest
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon:]
    return reference, ""


def containers_of(item: dict[str, Any]) -> list[dict[str, Any]]:
    spec = item.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else spec
    return [*pod.get("initContainers", []), *pod.get("containers", [])]
