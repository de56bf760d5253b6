"""The Envoy, Kubernetes and Compose files parse and agree with each other, with the shipped
HAProxy config and with the server's settings on the fields the routing relies on. (Envoy,
kubectl and kubeconform are not available offline; this is what can be checked here.)"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.haproxy.render import SHIPPED
from rnnstream.server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
HEADER = "x-rnnstream-session"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def shipped_servers() -> list[str]:
    return re.findall(r"^\s+server (\S+) ", SHIPPED.read_text(), re.MULTILINE)


# ---- Envoy


@pytest.fixture(scope="module")
def envoy() -> dict[str, Any]:
    (config,) = load_all(DEPLOY / "envoy" / "envoy.yaml")
    return config


def test_envoy_listener_speaks_h2c_hashes_the_session_header_and_never_times_out_streams(envoy):
    (listener,) = envoy["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    manager = hcm["typed_config"]
    assert manager["@type"].endswith("http_connection_manager.v3.HttpConnectionManager")
    assert manager["codec_type"] == "HTTP2"
    assert manager["stream_idle_timeout"] == "0s"
    assert manager["http_filters"][-1]["name"] == "envoy.filters.http.router"
    (host,) = manager["route_config"]["virtual_hosts"]
    (route,) = host["routes"]
    assert route["route"]["cluster"] == "rnnstream"
    assert route["route"]["timeout"] == "0s"
    assert route["route"]["hash_policy"] == [{"header": {"header_name": HEADER}}]


def test_envoy_cluster_rings_the_headless_service_over_h2_with_grpc_health(envoy):
    (cluster,) = envoy["static_resources"]["clusters"]
    assert cluster["name"] == "rnnstream"
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["lb_policy"] in ("RING_HASH", "MAGLEV")
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    (check,) = cluster["health_checks"]
    assert "grpc_health_check" in check
    (group,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = group["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    service = k8s_objects()[("Service", "rnnstream")]
    assert address == {"address": service["metadata"]["name"], "port_value": 50051}


# ---- Kubernetes


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for doc in load_all(DEPLOY / "k8s" / resource):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def test_every_workload_is_selected_by_its_labels_and_every_service_finds_pods():
    objects = k8s_objects()
    workloads = [o for (kind, _), o in objects.items() if kind in ("Deployment", "StatefulSet")]
    assert {o["metadata"]["name"] for o in workloads} == {"rnnstream", "redis", "rnnstream-router"}
    for workload in workloads:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for (kind, name), service in objects.items():
        if kind != "Service":
            continue
        selector = service["spec"]["selector"].items()
        matches = [
            w for w in workloads if selector <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, name
        ports = {p["name"]: p["containerPort"] for p in container(matches[0])["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)


def test_replicas_are_a_statefulset_behind_a_headless_service_with_grpc_probes():
    objects = k8s_objects()
    replicas = objects[("StatefulSet", "rnnstream")]
    service = objects[("Service", "rnnstream")]
    assert service["spec"]["clusterIP"] == "None"
    assert replicas["spec"]["serviceName"] == "rnnstream"
    c = container(replicas)
    assert c["image"] == "rnnstream:latest"
    assert {"name": "grpc", "containerPort": 50051} in c["ports"]
    assert c["readinessProbe"]["grpc"] == {"port": 50051}
    assert c["livenessProbe"]["grpc"] == {"port": 50051}
    env = env_of(c)
    assert env["RNNSTREAM_STORE"] == "redis://redis:6379/0"
    redis = objects[("Service", "redis")]
    assert redis["spec"]["ports"][0]["port"] == 6379
    # Every RNNSTREAM_* variable is a setting the server reads, with a valid value.
    settings = Settings.from_env(env)
    known = {"RNNSTREAM_" + f.name.upper() for f in dataclasses.fields(Settings)}
    assert set(env) <= known, set(env) - known
    assert settings.store == "redis://redis:6379/0"
    assert settings.port == 50051
    # The kubelet must not kill a drain: grace for in-flight work plus the write grace.
    pod = replicas["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.grace_s + settings.write_grace_s
    # The router's server lines are exactly the StatefulSet's pods, in ordinal order.
    assert shipped_servers() == [f"rnnstream-{i}" for i in range(replicas["spec"]["replicas"])]


def test_router_runs_the_shipped_haproxy_config():
    objects = k8s_objects()
    router = objects[("Deployment", "rnnstream-router")]
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    (generated,) = kustomization["configMapGenerator"]
    assert generated["files"] == ["haproxy.cfg"]
    assert (DEPLOY / "k8s" / "haproxy.cfg").read_text() == SHIPPED.read_text()
    volumes = {v["name"]: v for v in router["spec"]["template"]["spec"]["volumes"]}
    (mount,) = container(router)["volumeMounts"]
    assert volumes[mount["name"]]["configMap"]["name"] == generated["name"]
    assert mount["mountPath"] == "/usr/local/etc/haproxy"
    domain = env_of(container(router))["RNNSTREAM_REPLICAS_DOMAIN"]
    assert domain == "rnnstream.$(POD_NAMESPACE).svc.cluster.local"
    assert objects[("Service", "rnnstream-router")]["spec"]["ports"][0]["port"] == 50051


# ---- Docker Compose


def test_compose_runs_redis_two_replicas_and_haproxy_with_the_shipped_config():
    (compose,) = load_all(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"redis", "rnnstream-0", "rnnstream-1", "haproxy"}
    domain = services["haproxy"]["environment"]["RNNSTREAM_REPLICAS_DOMAIN"]
    for i in range(2):
        replica = services[f"rnnstream-{i}"]
        build = replica["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == REPO / "Dockerfile"
        assert replica["environment"]["RNNSTREAM_STORE"] == "redis://redis:6379/0"
        # The name the shipped config resolves for server rnnstream-<i>.
        assert replica["networks"]["default"]["aliases"] == [f"rnnstream-{i}.{domain}"]
        assert f"rnnstream-{i}" in shipped_servers()
        grace = float(replica["environment"]["RNNSTREAM_GRACE_S"]) + Settings.write_grace_s
        assert int(replica["stop_grace_period"].removesuffix("s")) > grace
    (volume,) = services["haproxy"]["volumes"]
    source, target, _ = volume.split(":")
    assert (DEPLOY / source).resolve() == SHIPPED
    assert target == "/usr/local/etc/haproxy/haproxy.cfg"
    assert "50051:50051" in services["haproxy"]["ports"]
