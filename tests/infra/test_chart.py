"""The Helm chart, rendered by the real Helm engine for both values files (T-020)."""

from __future__ import annotations

import base64
import json
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from src.config import Settings

from tests.infra._chart import (
    KUBE_VERSION,
    NAMESPACE,
    VALUES_FILES,
    Manifest,
    Rendered,
    SecretRef,
    all_containers,
    container,
    effective_values,
    lint,
    load_yaml,
    pod_annotations,
    pod_spec,
    render,
    resolve_env,
    values_file,
    workloads,
)

VALUES = list(VALUES_FILES)
SECRET_SETTINGS = {"DATABASE_URL", "BETTER_AUTH_SECRET", "DAPR_API_TOKEN"}
# Settings the chart sets per pod or computes, not through `env` in the values files.
CHART_SET = {"RELAY_ENABLED", "MCP_ALLOWED_HOSTS"}
BUILT_IN_KINDS = {
    "ConfigMap",
    "Deployment",
    "Ingress",
    "Job",
    "PersistentVolumeClaim",
    "Pod",
    "PodDisruptionBudget",
    "Secret",
    "Service",
    "ServiceAccount",
}


@pytest.fixture(scope="module", params=VALUES)
def case(request: pytest.FixtureRequest) -> tuple[str, Rendered]:
    return request.param, render(values_file(request.param))


def api(rendered: Rendered) -> Manifest:
    return rendered.get("Deployment", "pakaura")


def settings_from(env: dict[str, str | SecretRef], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The app's own Settings, built from a container's environment (secrets stand-ins)."""
    stand_ins = {
        "DATABASE_URL": "postgresql+psycopg://pakaura:x@db:5432/pakaura",
        "BETTER_AUTH_SECRET": "s" * 48,
        "DAPR_API_TOKEN": "token",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, stand_ins[name] if isinstance(value, SecretRef) else value)
    return Settings()


# --- Helm lint and Kubernetes schemas -------------------------------------------------------


@pytest.mark.parametrize("name", VALUES)
def test_chart_lints_clean_in_strict_mode(name: str) -> None:
    report = lint(values_file(name))
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_every_rendered_object_is_a_valid_kubernetes_object(case: tuple[str, Rendered]) -> None:
    name, rendered = case
    kinds = {obj["kind"] for obj in rendered.objects}
    assert kinds <= BUILT_IN_KINDS, f"{name}: unexpected kinds {kinds - BUILT_IN_KINDS}"
    for obj in rendered.objects:
        # strict: unknown fields (a misspelt `readinesProbe`) are errors too.
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} {where}: {exc.message}")
        assert obj["metadata"]["namespace"] == NAMESPACE


def test_schema_validation_catches_a_broken_manifest() -> None:
    """The validator really rejects what the API server would (so the test above can fail)."""
    deployment = api(render())
    pod_spec(deployment)["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_expected_objects_for_each_values_file() -> None:
    production = render()
    assert production.names() == [
        "ConfigMap/pakaura-config",
        "Deployment/pakaura",
        "Job/pakaura-migrate",
        "Pod/pakaura-test-health",
        "PodDisruptionBudget/pakaura",
        "Service/pakaura",
        "ServiceAccount/pakaura",
    ]
    local = render(values_file("values-local.yaml"))
    assert local.names() == [
        "ConfigMap/pakaura-config",
        "Deployment/pakaura",
        "Deployment/pakaura-postgresql",
        "Job/pakaura-migrate",
        "PersistentVolumeClaim/pakaura-postgresql",
        "Pod/pakaura-test-health",
        "Secret/pakaura-local",
        "Service/pakaura",
        "Service/pakaura-postgresql",
        "ServiceAccount/pakaura",
    ]


# --- Settings (contract §4) -----------------------------------------------------------------


@pytest.mark.parametrize("name", VALUES)
def test_t020_values_files_enable_dapr(name: str) -> None:
    raw = load_yaml(VALUES_FILES[name])
    assert raw["env"]["DAPR_ENABLED"] == "true"  # a quoted string, as env values must be


def test_every_setting_of_the_app_reaches_the_api(case: tuple[str, Rendered]) -> None:
    name, rendered = case
    env = resolve_env(rendered, container(api(rendered), "api"))
    wanted = {field.upper() for field in Settings.model_fields}
    missing = wanted - set(env)
    assert not missing, f"{name}: settings not wired into the API pods: {sorted(missing)}"
    unknown = set(effective_values(name)["env"]) - wanted
    assert not unknown, f"{name}: env entries the app does not read (typo?): {sorted(unknown)}"


def test_api_environment_parses_into_the_intended_settings(
    case: tuple[str, Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, rendered = case
    settings = settings_from(resolve_env(rendered, container(api(rendered), "api")), monkeypatch)
    assert settings.app_env == "production"
    assert settings.database_create_tables is False
    assert settings.dapr_enabled is True
    assert settings.dapr_host == "127.0.0.1" and settings.dapr_http_port == 3500
    assert settings.dapr_pubsub_name == "pubsub-kafka"
    assert (settings.topic_task_events, settings.topic_task_updates, settings.topic_reminders) == (
        "task-events",
        "task-updates",
        "reminders",
    )
    assert settings.relay_enabled is True
    assert settings.dapr_api_token is not None
    # The Service's names (with and without a port) pass the MCP DNS-rebinding check.
    for host in ("pakaura", "pakaura:80", "pakaura.pakaura.svc.cluster.local:8000"):
        assert host in settings.mcp_allowed_hosts or any(
            allowed.endswith(":*") and host.startswith(allowed[:-1])
            for allowed in settings.mcp_allowed_hosts
        ), f"{name}: MCP would refuse Host {host!r}"
    expected_format = "json" if name == "values.yaml" else "console"
    assert settings.log_format == expected_format


def test_secrets_reach_pods_only_by_reference(case: tuple[str, Rendered]) -> None:
    name, rendered = case
    for obj in rendered.of_kind("ConfigMap"):
        leaked = SECRET_SETTINGS & set(obj.get("data", {}))
        assert not leaked, f"{name}: {leaked} in ConfigMap {obj['metadata']['name']}"
    for workload in [*workloads(rendered), *rendered.of_kind("Pod")]:
        for item in all_containers(workload):
            for entry in item.get("env", []):
                if entry["name"] in SECRET_SETTINGS or "PASSWORD" in entry["name"]:
                    assert "value" not in entry, f"{name}: {entry['name']} has a plain value"
                    assert "secretKeyRef" in entry["valueFrom"], entry


def test_default_values_hold_and_render_no_secret() -> None:
    rendered = render()
    assert rendered.of_kind("Secret") == []
    local = load_yaml(VALUES_FILES["values.yaml"])["localSecrets"]
    assert local["create"] is False
    assert all(value == "" for key, value in local.items() if key != "create"), local


def test_local_secret_values_appear_only_base64_inside_the_secret() -> None:
    local_values = values_file("values-local.yaml")["localSecrets"]
    rendered = render(values_file("values-local.yaml"))
    secret = rendered.get("Secret", "pakaura-local")
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert decoded["BETTER_AUTH_SECRET"] == local_values["betterAuthSecret"]
    assert decoded["token"] == local_values["daprApiToken"]
    assert decoded["DATABASE_URL"] == (
        f"postgresql+psycopg://pakaura:{local_values['postgresPassword']}"
        "@pakaura-postgresql:5432/pakaura"
    )
    for key in ("betterAuthSecret", "daprApiToken", "postgresPassword"):
        assert "local-only" in local_values[key], "local secrets must look local"
        assert local_values[key] not in rendered.text, f"{key} rendered in plain text"
    assert "stringData" not in secret


def test_existing_secret_names_and_keys_are_used() -> None:
    rendered = render(
        {
            "secrets": {
                "existingSecret": "app-secrets",
                "databaseUrlKey": "url",
                "betterAuthSecretKey": "jwt",
            },
            "dapr": {"apiToken": {"existingSecret": "dapr-token"}},
        }
    )
    for workload in (api(rendered), rendered.get("Job", "pakaura-migrate")):
        env = resolve_env(rendered, pod_spec(workload)["containers"][0])
        assert env["DATABASE_URL"] == SecretRef("app-secrets", "url")
    env = resolve_env(rendered, container(api(rendered), "api"))
    assert env["BETTER_AUTH_SECRET"] == SecretRef("app-secrets", "jwt")
    assert env["DAPR_API_TOKEN"] == SecretRef("dapr-token", "token")
    assert pod_annotations(api(rendered))["dapr.io/api-token-secret"] == "dapr-token"


# --- Dapr, probes, Service --------------------------------------------------------------------


def test_dapr_annotations_on_the_api_pods(case: tuple[str, Rendered]) -> None:
    name, rendered = case
    deployment = api(rendered)
    annotations = pod_annotations(deployment)
    port = container(deployment, "api")["ports"][0]["containerPort"]
    assert annotations["dapr.io/enabled"] == "true"
    assert annotations["dapr.io/app-id"] == "pakaura-api"
    assert annotations["dapr.io/app-port"] == str(port) == "8000"
    assert all(isinstance(v, str) for v in annotations.values()), "annotations must be quoted"
    # daprd and the app read the same token: the annotation's Secret, key `token`.
    env = resolve_env(rendered, container(deployment, "api"))
    assert env["DAPR_API_TOKEN"] == SecretRef(annotations["dapr.io/api-token-secret"], "token")
    expected = "pakaura-dapr-api-token" if name == "values.yaml" else "pakaura-local"
    assert annotations["dapr.io/api-token-secret"] == expected


def test_dapr_off_means_no_sidecar_and_no_token() -> None:
    rendered = render({"env": {"DAPR_ENABLED": "false"}})
    deployment = api(rendered)
    assert not [k for k in pod_annotations(deployment) if k.startswith("dapr.io/")]
    assert "DAPR_API_TOKEN" not in resolve_env(rendered, container(deployment, "api"))


def test_api_token_can_be_turned_off() -> None:
    rendered = render({"dapr": {"apiToken": {"enabled": False}}})
    deployment = api(rendered)
    assert pod_annotations(deployment)["dapr.io/enabled"] == "true"
    assert "dapr.io/api-token-secret" not in pod_annotations(deployment)
    assert "DAPR_API_TOKEN" not in resolve_env(rendered, container(deployment, "api"))


def test_probes_mean_what_they_say(case: tuple[str, Rendered]) -> None:
    """Liveness never depends on the database (an outage would restart every pod)."""
    _, rendered = case
    item = container(api(rendered), "api")
    port_names = {p["name"]: p["containerPort"] for p in item["ports"]}
    paths = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for probe, path in paths.items():
        http = item[probe]["httpGet"]
        assert http["path"] == path
        assert port_names[http["port"]] == 8000
    assert item["args"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]


def test_service_selects_only_the_api_pods(case: tuple[str, Rendered]) -> None:
    _, rendered = case
    service = rendered.get("Service", "pakaura")
    selector = service["spec"]["selector"]
    for workload in rendered.of_kind("Deployment"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selected = all(labels.get(k) == v for k, v in selector.items())
        assert selected == (workload["metadata"]["name"] == "pakaura"), workload["metadata"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_pods_run_as_non_root_with_a_read_only_root(case: tuple[str, Rendered]) -> None:
    _, rendered = case
    for workload in [api(rendered), rendered.get("Job", "pakaura-migrate")]:
        assert pod_spec(workload)["securityContext"]["runAsNonRoot"] is True
        for item in all_containers(workload):
            assert item["securityContext"]["allowPrivilegeEscalation"] is False
            assert item["securityContext"]["readOnlyRootFilesystem"] is True


# --- Replicas and the relay -------------------------------------------------------------------


def test_several_api_replicas_with_a_disruption_budget() -> None:
    rendered = render()
    assert api(rendered)["spec"]["replicas"] == 2
    assert api(rendered)["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert rendered.get("PodDisruptionBudget", "pakaura")["spec"]["maxUnavailable"] == 1
    # No separate relay by default: every API pod runs it and one is elected leader.
    assert rendered.find("Deployment", "pakaura-relay") is None
    assert resolve_env(rendered, container(api(rendered), "api"))["RELAY_ENABLED"] == "true"


def test_separate_relay_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = render({"relay": {"enabled": True, "replicaCount": 2}})
    relay = rendered.get("Deployment", "pakaura-relay")
    item = container(relay, "relay")
    assert item["args"] == ["relay"]
    assert relay["spec"]["replicas"] == 2
    annotations = pod_annotations(relay)
    assert annotations["dapr.io/enabled"] == "true"
    assert annotations["dapr.io/app-id"] == "pakaura-relay"
    assert "dapr.io/app-port" not in annotations  # the relay serves no HTTP
    relay_settings = settings_from(resolve_env(rendered, item), monkeypatch)
    assert relay_settings.relay_enabled is True
    api_env = resolve_env(rendered, container(api(rendered), "api"))
    assert api_env["RELAY_ENABLED"] == "false"


# --- The migration hook -----------------------------------------------------------------------


def test_migration_job_runs_before_install_and_upgrade_without_release_objects() -> None:
    rendered = render()
    job = rendered.get("Job", "pakaura-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    spec = pod_spec(job)
    assert container(job, "migrate")["args"] == ["db", "upgrade"]
    assert spec["restartPolicy"] == "Never"
    # A sidecar would keep the Job's pod alive after the migration ended.
    assert not [k for k in pod_annotations(job) if k.startswith("dapr.io/")]
    # Pre-install hooks run before the release's own objects exist: none may be needed.
    release_objects = {
        (o["kind"], o["metadata"]["name"])
        for o in rendered.objects
        if "helm.sh/hook" not in (o["metadata"].get("annotations") or {})
    }
    assert ("ServiceAccount", spec.get("serviceAccountName", "default")) not in release_objects
    env = resolve_env(rendered, container(job, "migrate"))
    for value in env.values():
        if isinstance(value, SecretRef):
            assert ("Secret", value.secret) not in release_objects
    assert "envFrom" not in container(job, "migrate")
    assert env["DATABASE_URL"] == SecretRef("pakaura-secrets", "DATABASE_URL")


def test_local_migration_waits_for_the_chart_database() -> None:
    rendered = render(values_file("values-local.yaml"))
    job = rendered.get("Job", "pakaura-migrate")
    # The Secret and PostgreSQL it needs are created by the release itself.
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    wait = pod_spec(job)["initContainers"][0]
    assert "pg_isready" in " ".join(wait["command"]) and "pakaura-postgresql" in " ".join(
        wait["command"]
    )
    env = resolve_env(rendered, container(job, "migrate"))
    assert env["DATABASE_URL"] == SecretRef("pakaura-local", "DATABASE_URL")
    database = rendered.get("Deployment", "pakaura-postgresql")
    db_env = resolve_env(rendered, container(database, "postgresql"))
    assert db_env["POSTGRES_PASSWORD"] == SecretRef("pakaura-local", "POSTGRES_PASSWORD")


# --- Ingress and MCP hosts --------------------------------------------------------------------


def test_ingress_hosts_are_allowed_by_mcp(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = render(
        {
            "ingress": {"enabled": True, "className": "nginx", "hosts": ["tasks.example.com"]},
            "mcp": {"extraAllowedHosts": ["gateway:*"]},
        }
    )
    rule = rendered.get("Ingress", "pakaura")["spec"]["rules"][0]
    assert rule["host"] == "tasks.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == "pakaura"
    hosts = json.loads(rendered.config_map_data("pakaura-config")["MCP_ALLOWED_HOSTS"])
    assert {"tasks.example.com", "gateway:*", "pakaura", "pakaura:*"} <= set(hosts)


# --- Bad values fail with a message naming the value ------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"env": {"DATABASE_URL": "postgresql+psycopg://u:p@h/d"}}, "env.DATABASE_URL"),
        ({"env": {"BETTER_AUTH_SECRET": "x" * 40}}, "env.BETTER_AUTH_SECRET"),
        ({"env": {"RELAY_ENABLED": "false"}}, "relay.enabled"),
        ({"env": {"MCP_ALLOWED_HOSTS": "[]"}}, "mcp.extraAllowedHosts"),
        ({"env": {"DAPR_ENABLED": True}}, "/env/DAPR_ENABLED"),
        ({"env": {"LOG_FORMAT": "xml"}}, "/env/LOG_FORMAT"),
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicCount": 2}, "replicCount"),
        ({"secrets": {"existingSecret": ""}}, "secrets.existingSecret"),
        ({"dapr": {"apiToken": {"existingSecret": ""}}}, "dapr.apiToken.existingSecret"),
        ({"postgresql": {"enabled": True}}, "localSecrets.create"),
        ({"ingress": {"enabled": True}}, "ingress.hosts"),
        ({"localSecrets": {"create": True, "betterAuthSecret": "short"}}, "betterAuthSecret"),
    ],
)
def test_bad_values_are_refused_naming_the_value(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as excinfo:
        render(values)
    assert message in str(excinfo.value)
