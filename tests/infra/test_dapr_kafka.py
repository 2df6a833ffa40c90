"""Dapr components and the Strimzi Kafka manifests agree with each other and the chart (T-020).

These are custom resources (kubernetes-validate has no schema for them), so the checks are
the ones a broken deployment would trip over: names, ports, credentials and scopes that must
line up across files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from src.config import Settings

from tests.infra._chart import INFRA, Manifest, effective_values, load_yaml_documents

DAPR = INFRA / "dapr"
KAFKA = INFRA / "kafka"
KAFKA_COMPONENTS = {
    # component file -> Strimzi cluster file it talks to
    "pubsub-kafka.yaml": "kafka-cluster.yaml",
    "pubsub-kafka-local.yaml": "kafka-cluster-local.yaml",
}
# Metadata fields of Dapr's pubsub.kafka component (docs: setup-apache-kafka).
KAFKA_FIELDS = {
    "brokers", "consumerGroup", "consumerID", "clientID", "authRequired", "authType",
    "saslUsername", "saslPassword", "saslMechanism", "initialOffset", "maxMessageBytes",
    "consumeRetryInterval", "consumeRetryEnabled", "version", "caCert", "clientCert",
    "clientKey", "skipVerify", "disableTls", "oidcTokenEndpoint", "oidcClientID",
    "oidcClientSecret", "oidcScopes", "oidcExtensions", "heartbeatInterval", "sessionTimeout",
    "consumerFetchMin", "consumerFetchDefault", "channelBufferSize",
    "consumerGroupRebalanceStrategy", "escapeHeaders", "clientConnectionKeepAliveInterval",
    "clientConnectionTopicMetadataRefreshInterval", "compression",
}  # fmt: skip
SENSITIVE = {"saslPassword", "caCert", "clientCert", "clientKey", "oidcClientSecret"}
TOPICS = {
    Settings.model_fields[f].default
    for f in ("topic_task_events", "topic_task_updates", "topic_reminders")
}


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def metadata_of(component: Manifest) -> dict[str, dict[str, Any]]:
    items = component["spec"]["metadata"]
    names = [item["name"] for item in items]
    assert len(names) == len(set(names)), f"duplicate metadata in {names}"
    return {item["name"]: item for item in items}


def component(path: Path) -> Manifest:
    doc = one(load_yaml_documents(path), "Component")
    assert doc["apiVersion"] == "dapr.io/v1alpha1"
    assert doc["spec"]["version"] == "v1"
    return doc


def chart_app_ids() -> set[str]:
    values = effective_values("values.yaml")
    return {values["dapr"]["appId"], values["relay"]["appId"]}


@pytest.mark.parametrize("name", sorted(KAFKA_COMPONENTS))
def test_kafka_component_matches_the_chart(name: str) -> None:
    doc = component(DAPR / "kubernetes" / name)
    assert doc["spec"]["type"] == "pubsub.kafka"
    for values_name in ("values.yaml", "values-local.yaml"):
        assert doc["metadata"]["name"] == effective_values(values_name)["env"]["DAPR_PUBSUB_NAME"]
    # Scoped to the API (and the optional relay): no other app may publish with it.
    assert set(doc["scopes"]) == chart_app_ids()
    fields = metadata_of(doc)
    assert set(fields) <= KAFKA_FIELDS, f"unknown fields {set(fields) - KAFKA_FIELDS}"
    assert {"brokers", "authType"} <= set(fields)
    for key in SENSITIVE & set(fields):
        assert "secretKeyRef" in fields[key] and "value" not in fields[key], key
    # The component's default (1024 bytes) is smaller than one task snapshot event.
    assert int(fields["maxMessageBytes"]["value"]) >= 64 * 1024
    assert all(isinstance(item.get("value", ""), str) for item in fields.values())


@pytest.mark.parametrize(("component_file", "cluster_file"), sorted(KAFKA_COMPONENTS.items()))
def test_kafka_component_reaches_its_strimzi_listener(
    component_file: str, cluster_file: str
) -> None:
    fields = {k: v for k, v in metadata_of(component(DAPR / "kubernetes" / component_file)).items()}
    docs = load_yaml_documents(KAFKA / cluster_file)
    kafka = one(docs, "Kafka")
    cluster = kafka["metadata"]["name"]
    host, port = fields["brokers"]["value"].rsplit(":", 1)
    assert host == f"{cluster}-kafka-bootstrap"  # Strimzi's bootstrap Service
    listeners = {lst["port"]: lst for lst in kafka["spec"]["kafka"]["listeners"]}
    assert int(port) in listeners, f"no listener on {port} in {cluster_file}"
    listener = listeners[int(port)]
    assert listener["type"] == "internal"
    auth = listener.get("authentication", {}).get("type")
    if auth is None:
        assert fields["authType"]["value"] == "none"
    else:
        assert auth == "scram-sha-512"
        assert fields["authType"]["value"] == "password"
        assert fields["saslMechanism"]["value"] == "SHA-512"
        user = next(d for d in docs if d["kind"] == "KafkaUser")
        assert fields["saslUsername"]["value"] == user["metadata"]["name"]
        # Strimzi stores the user's password in a Secret named after the user.
        assert fields["saslPassword"]["secretKeyRef"] == {
            "name": user["metadata"]["name"],
            "key": "password",
        }
    if listener["tls"]:
        assert fields.get("disableTls", {}).get("value", "false") == "false"
        # Strimzi's cluster CA, so the sidecar verifies the brokers.
        assert fields["caCert"]["secretKeyRef"] == {
            "name": f"{cluster}-cluster-ca-cert",
            "key": "ca.crt",
        }
        assert fields.get("skipVerify", {}).get("value", "false") == "false"
    else:
        assert fields["disableTls"]["value"] == "true"


def test_redis_component_for_dapr_run() -> None:
    doc = component(DAPR / "local" / "pubsub-redis.yaml")
    assert doc["spec"]["type"] == "pubsub.redis"
    fields = metadata_of(doc)
    assert fields["redisHost"]["value"] == "localhost:6379"  # the Redis `dapr init` starts
    assert set(doc["scopes"]) == chart_app_ids()
    # Only this component is loaded by `dapr run --resources-path infra/dapr/local`.
    assert sorted(p.name for p in (DAPR / "local").iterdir()) == ["pubsub-redis.yaml"]


@pytest.mark.parametrize("cluster_file", sorted(set(KAFKA_COMPONENTS.values())))
def test_strimzi_cluster_is_kraft_with_node_pools(cluster_file: str) -> None:
    docs = load_yaml_documents(KAFKA / cluster_file)
    assert all(d["apiVersion"] == "kafka.strimzi.io/v1" for d in docs)
    kafka = one(docs, "Kafka")
    cluster = kafka["metadata"]["name"]
    spec = kafka["spec"]
    assert "zookeeper" not in spec
    # With node pools the Kafka resource holds neither replicas nor storage.
    assert not {"replicas", "storage"} & set(spec["kafka"])
    pools = [d for d in docs if d["kind"] == "KafkaNodePool"]
    assert pools and all(p["metadata"]["labels"]["strimzi.io/cluster"] == cluster for p in pools)
    roles = {role for p in pools for role in p["spec"]["roles"]}
    assert roles == {"controller", "broker"}  # KRaft: no ZooKeeper
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    config = spec["kafka"]["config"]
    for key, value in config.items():
        if key.endswith("replication.factor"):
            assert value <= brokers, f"{cluster_file}: {key}={value} > {brokers} brokers"
    assert config["min.insync.replicas"] <= config["default.replication.factor"]
    if brokers > 1:
        # Losing one broker must not stop writes nor lose acknowledged events.
        assert 1 < config["min.insync.replicas"] < config["default.replication.factor"]
    assert config["auto.create.topics.enable"] is False


def test_topics_are_the_three_of_the_contract() -> None:
    docs = load_yaml_documents(KAFKA / "topics.yaml")
    topics = {d["spec"].get("topicName", d["metadata"]["name"]): d for d in docs}
    assert set(topics) == TOPICS
    for values_name in ("values.yaml", "values-local.yaml"):
        env = effective_values(values_name)["env"]
        assert {
            env["TOPIC_TASK_EVENTS"],
            env["TOPIC_TASK_UPDATES"],
            env["TOPIC_REMINDERS"],
        } == TOPICS
    clusters = {
        one(load_yaml_documents(KAFKA / f), "Kafka")["metadata"]["name"]
        for f in set(KAFKA_COMPONENTS.values())
    }
    for doc in docs:
        assert doc["kind"] == "KafkaTopic"
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] in clusters
        assert doc["spec"]["partitions"] >= 1


def test_kafka_user_may_write_exactly_the_three_topics() -> None:
    docs = load_yaml_documents(KAFKA / "kafka-cluster.yaml")
    kafka = one(docs, "Kafka")
    user = one(docs, "KafkaUser")
    assert user["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    writable = {
        acl["resource"]["name"]
        for acl in user["spec"]["authorization"]["acls"]
        if acl["resource"]["type"] == "topic" and {"Write", "Describe"} <= set(acl["operations"])
    }
    assert writable == TOPICS
