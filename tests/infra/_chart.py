"""Renders the Helm chart with the real Helm engine and reads the manifests (T-020).

`helm_python` binds Helm's Go SDK (libhelm_c, shipped in the wheel): rendering, schema
validation and lint run offline, with no helm binary and no cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
CHART = INFRA / "helm" / "pakaura"
VALUES_FILES = {
    "values.yaml": CHART / "values.yaml",
    "values-local.yaml": CHART / "values-local.yaml",
}
RELEASE = "pakaura"
NAMESPACE = "pakaura"
KUBE_VERSION = "1.30.0"

Manifest = dict[str, Any]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class Rendered:
    """One rendering of the chart: the raw template outputs and the parsed objects."""

    files: dict[str, str]
    objects: list[Manifest]

    @property
    def text(self) -> str:
        return "\n".join(self.files.values())

    def of_kind(self, kind: str) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        raise AssertionError(f"no {kind} named {name!r} rendered; have {self.names()}")

    def find(self, kind: str, name: str) -> Manifest | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def names(self) -> list[str]:
        return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in self.objects)

    def config_map_data(self, name: str) -> dict[str, str]:
        data: dict[str, str] = self.get("ConfigMap", name).get("data", {})
        return data


def render(values: dict[str, Any] | None = None) -> Rendered:
    """Renders the chart; `values` are overrides on top of its values.yaml, as with `-f`."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[Manifest] = []
    for path, text in files.items():
        if not path.endswith(".yaml"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(files=files, objects=objects)


def values_file(name: str) -> dict[str, Any]:
    """Overrides a values file passes to Helm (values.yaml itself: none beyond the defaults)."""
    return {} if name == "values.yaml" else dict(load_yaml(VALUES_FILES[name]))


def effective_values(name: str) -> dict[str, Any]:
    """What Helm uses for a values file: values.yaml with the file merged over it."""
    return deep_merge(load_yaml(VALUES_FILES["values.yaml"]), values_file(name))


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def pod_annotations(workload: Manifest) -> dict[str, Any]:
    annotations: dict[str, Any] = workload["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations


def container(workload: Manifest, name: str) -> Manifest:
    for item in pod_spec(workload)["containers"]:
        if item["name"] == name:
            found: Manifest = item
            return found
    raise AssertionError(f"no container {name!r} in {workload['metadata']['name']}")


def all_containers(workload: Manifest) -> Iterator[Manifest]:
    spec = pod_spec(workload) if workload["kind"] != "Pod" else workload["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def workloads(rendered: Rendered) -> list[Manifest]:
    return [o for o in rendered.objects if o["kind"] in {"Deployment", "Job", "StatefulSet"}]


@dataclass(frozen=True)
class SecretRef:
    secret: str
    key: str


def resolve_env(rendered: Rendered, item: Manifest) -> dict[str, str | SecretRef]:
    """A container's environment as Kubernetes builds it: envFrom first, then env wins."""
    env: dict[str, str | SecretRef] = {}
    for source in item.get("envFrom", []):
        ref = source.get("configMapRef")
        assert ref is not None, f"unexpected envFrom source {source}"
        env.update(rendered.config_map_data(ref["name"]))
    for entry in item.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        value_from = entry["valueFrom"]
        if "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            env[entry["name"]] = SecretRef(ref["name"], ref["key"])
        elif "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            env[entry["name"]] = rendered.config_map_data(ref["name"])[ref["key"]]
        else:
            raise AssertionError(f"unexpected valueFrom {value_from}")
    return env


def lint(values: dict[str, Any] | None) -> dict[str, Any]:
    report: dict[str, Any] = helm.lint(
        CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    return report
