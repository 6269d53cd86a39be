"""deploy/: what `kubectl apply -k deploy/` would create. Every object against the Kubernetes
schemas (kubernetes-validate, strict: an unknown field fails), the kustomization against the
files it names, attrgate's container arguments and variables against `attrgate serve` itself,
the manifests against each other (ports, names, mounts, the termination grace against the
drain), and, end to end, the Deployment's own command line serving: the same flags, with the
cluster's names swapped for loopback ones (Redis started with the StatefulSet's arguments, moto
as Cognito, certificates made here), answering an mTLS call from the example policies' caller."""

from __future__ import annotations

import argparse
import ipaddress
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

import kubernetes_validate
import pytest
import yaml
from cryptography import x509

from attrgate.config import (
    ConfigError,
    Settings,
    add_serve_arguments,
    check,
    env_name,
    settings_from,
)
from support.environment import clean_env
from support.moto_cognito import MotoCognito, free_port
from support.pki import dns, issue, make_ca, uri
from support.redis_server import RedisServer, redis_server_path
from support.served import stop_serve, wait_serving

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBERNETES = kubernetes_validate.latest_version()
# Custom resources kubernetes-validate has no schema for: the fields they must carry.
CUSTOM_KINDS = {
    ("cert-manager.io/v1", "Certificate"): ("secretName", "issuerRef", "dnsNames"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("selector", "endpoints"),
}
FLUSH_SECONDS = 10  # the trace exporter's flush at exit, as README "Stopping" counts it


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return loaded


def objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for resource in kustomization()["resources"]:
        for document in yaml.safe_load_all((DEPLOY / resource).read_text()):
            if document:
                yield resource, document


def find(kind: str, name: str) -> dict[str, Any]:
    for _, document in objects():
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise AssertionError(f"no {kind} {name} in deploy/")


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    for found in workload["spec"]["template"]["spec"]["containers"]:
        if found["name"] == name:
            return found
    raise AssertionError(f"no container {name}")


def attrgate() -> dict[str, Any]:
    return container(find("Deployment", "attrgate"), "attrgate")


class _Refused(Exception):
    pass


class _ServeParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Refused(message)


def serve_settings(args: list[str], env: dict[str, str]) -> Settings:
    """What `attrgate serve ARGS` with `env` would run with: a flag or a variable that `serve`
    does not know, or a value it refuses, raises."""
    assert args[0] == "serve", args
    parser = _ServeParser(prog="attrgate serve")
    add_serve_arguments(parser)
    known = {env_name(f.name) for f in fields(Settings)}
    unknown = sorted(k for k in env if k.startswith("ATTRGATE_") and k not in known)
    if unknown:
        raise _Refused(f"not attrgate variables: {unknown}")
    return settings_from(parser.parse_args(args[1:]), environ=env)


def environment(spec: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in spec.get("env", [])}


# --- the objects -------------------------------------------------------------------------


def test_every_object_is_valid_kubernetes() -> None:
    seen = []
    for resource, document in objects():
        key = (document["apiVersion"], document["kind"])
        seen.append(document["kind"])
        if key in CUSTOM_KINDS:
            missing = [f for f in CUSTOM_KINDS[key] if f not in document.get("spec", {})]
            assert not missing, (resource, missing)
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{resource}: {document['kind']} {document['metadata']['name']}: {exc}")
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "StatefulSet", "ServiceMonitor"):
        assert kind in seen


def test_strict_validation_refuses_an_unknown_field() -> None:
    """The premise: kubernetes-validate's strict mode fails a misspelt field."""
    deployment = find("Deployment", "attrgate")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_the_kustomization_names_every_manifest_and_file() -> None:
    config = kustomization()
    listed = {DEPLOY / r for r in config["resources"]}
    assert all(path.is_file() for path in listed), sorted(map(str, listed))
    generated = set()
    for generator in config["configMapGenerator"]:
        for item in generator["files"]:
            path = DEPLOY / item.split("=", 1)[-1]
            assert path.is_file(), path
            generated.add(path)
    manifests = {
        p
        for p in DEPLOY.rglob("*.yaml")
        if p.name != "kustomization.yaml" and p not in generated and "prometheus" not in p.parts
    }
    assert manifests == listed, sorted(map(str, manifests ^ listed))


def test_the_policies_configmap_holds_the_example_policies() -> None:
    """The examples, not a copy drifting from them: every policy of policies/ (not its test
    suites), byte for byte, and nothing else."""
    [generator] = [
        g for g in kustomization()["configMapGenerator"] if g["name"] == "attrgate-policies"
    ]
    shipped = {Path(f).name: (DEPLOY / f).read_text() for f in generator["files"]}
    examples = {
        p.name: p.read_text() for p in (REPO / "policies").glob("*.yaml") if "_test" not in p.name
    }
    assert shipped == examples
    assert generator["options"]["disableNameSuffixHash"] is True  # reloaded in place


# --- attrgate's command line ---------------------------------------------------------------


def test_attrgate_arguments_and_variables_are_serve_s_own() -> None:
    spec = attrgate()
    settings = serve_settings(spec["args"], environment(spec))
    assert settings.redis_url
    assert settings.hmac_key_file
    # One Redis pod: a fleet that refused to start while it is away would shrink to nothing.
    assert not settings.require_durable_store
    assert settings.tls_cert
    assert settings.tls_key
    assert settings.client_ca
    assert not settings.insecure
    # The check can fail: a flag serve does not have, a variable it does not read.
    with pytest.raises(_Refused, match="--drain-dealy"):
        serve_settings([*spec["args"], "--drain-dealy=5"], environment(spec))
    with pytest.raises(_Refused, match="ATTRGATE_GRACE_PERIOD"):
        serve_settings(spec["args"], {**environment(spec), "ATTRGATE_GRACE_PERIOD": "10"})
    with pytest.raises(ConfigError):
        serve_settings([*spec["args"], "--grace=soon"], environment(spec))


def test_the_manifests_agree_with_each_other() -> None:
    deployment = find("Deployment", "attrgate")
    pod = deployment["spec"]["template"]["spec"]
    spec = attrgate()
    settings = serve_settings(spec["args"], environment(spec))
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports["grpc"] == int(settings.listen.rsplit(":", 1)[1])
    assert ports["admin"] == int((settings.admin_listen or "").rsplit(":", 1)[1])
    assert ports["metrics"] == int((settings.metrics_listen or "").rsplit(":", 1)[1])
    # Probes ask the health service on the admin listener.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["grpc"]["port"] == ports["admin"], probe
    # A liveness probe that fails while the pod drains would kill it before the grace ends.
    live = spec["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > settings.drain_delay + settings.grace
    # Stopping: the drain, the grace, a call already at Cognito and the trace flush.
    needed = settings.drain_delay + settings.grace + settings.cognito_read_timeout + FLUSH_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= needed
    assert "lifecycle" not in spec  # --drain-delay is the preStop, in the process
    # Services and the ServiceMonitor name ports the pods have.
    for name in ("attrgate", "attrgate-headless"):
        service = find("Service", name)
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    monitor = find("ServiceMonitor", "attrgate")
    service_ports = {p["name"] for p in find("Service", "attrgate")["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    pdb = find("PodDisruptionBudget", "attrgate")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    # The fleet: three replicas, the quota divided by as many while Redis does not answer.
    assert deployment["spec"]["replicas"] == 3 == settings.quota_replicas
    # Redis: the Service the URL names, durable (appendonly, no eviction).
    host_port = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", settings.redis_url or "")
    assert host_port, settings.redis_url
    redis_service = find("Service", host_port[1])
    assert int(host_port[2]) in {p["port"] for p in redis_service["spec"]["ports"]}
    redis_args = " ".join(container(find("StatefulSet", "attrgate-redis"), "redis")["args"])
    assert "--appendonly yes" in redis_args
    assert "--maxmemory-policy noeviction" in redis_args
    assert "--maxmemory 200mb" in redis_args  # noeviction needs a ceiling below the limit (256Mi)
    # Only attrgate's pods reach Redis.
    fence = find("NetworkPolicy", "attrgate-redis")
    assert fence["spec"]["podSelector"]["matchLabels"] == redis_service["spec"]["selector"]
    [allowed] = fence["spec"]["ingress"][0]["from"]
    assert allowed["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    # The region serves the example policies' pools; the certificate names what clients dial.
    region = environment(spec)["ATTRGATE_REGION"]
    pools = yaml.safe_load((DEPLOY / "policies" / "profile-service.yaml").read_text())
    assert all(p.startswith(region + "_") for p in pools["spec"]["userPools"]), region
    names = find("Certificate", "attrgate")["spec"]["dnsNames"]
    for service in ("attrgate", "attrgate-headless"):
        assert {service, f"{service}.attrgate.svc"} <= set(names)
    # Never more pods than --quota-replicas during a rollout.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert pod["automountServiceAccountToken"] is False
    # Mounts: the policies as a folder (never subPath), files under their mounts.
    mounts = {m["name"]: m for m in spec["volumeMounts"]}
    assert all("subPath" not in m for m in spec["volumeMounts"])
    assert mounts["policies"]["mountPath"] == settings.policies
    for path in (settings.tls_cert, settings.tls_key, settings.client_ca):
        assert str(path).startswith(mounts["tls"]["mountPath"] + "/"), path
    assert str(settings.hmac_key_file).startswith(mounts["hmac"]["mountPath"] + "/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        volumes["tls"]["secret"]["secretName"]
        == find("Certificate", "attrgate")["spec"]["secretName"]
    )
    generated = {g["name"] for g in kustomization()["configMapGenerator"]}
    assert volumes["policies"]["configMap"]["name"] in generated
    collector_endpoint = environment(spec)["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert re.fullmatch(r"http://attrgate-otel-collector:4317", collector_endpoint)
    find("Service", "attrgate-otel-collector")


def test_every_container_runs_locked_down() -> None:
    for resource, document in objects():
        template = document.get("spec", {}).get("template")
        if not template:
            continue
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, resource
        for each in pod["containers"]:
            context = each["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (resource, each["name"])
            assert context["allowPrivilegeEscalation"] is False, (resource, each["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (resource, each["name"])
            assert "limits" in each["resources"]
            assert "requests" in each["resources"]


# --- end to end: the Deployment's command line serves ---------------------------------------


def loopback(
    args: list[str], mounts: dict[str, Path], listen: dict[int, int], redis_url: str
) -> list[str]:
    """The Deployment's arguments on this machine: mount paths to folders here, its ports to
    free ones, the Redis Service to the test's Redis."""
    local = []
    for arg in args:
        flag, equals, value = arg.partition("=")
        for mount_path, folder in mounts.items():
            if equals and (value == mount_path or value.startswith(mount_path + "/")):
                arg = f"{flag}={folder}{value[len(mount_path) :]}"
        for port, free in listen.items():
            arg = arg.replace(f"0.0.0.0:{port}", f"127.0.0.1:{free}")
        arg = re.sub(r"redis://[^ ]+", redis_url, arg)
        local.append(arg)
    return local


def test_the_deployments_command_line_serves_an_mtls_call(
    tmp_path: Path, moto: MotoCognito
) -> None:
    if redis_server_path() is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    spec = attrgate()
    redis_args = container(find("StatefulSet", "attrgate-redis"), "redis")["args"]
    at = redis_args.index("--dir")  # the data folder is the test Redis' own
    redis = RedisServer(*redis_args[:at], *redis_args[at + 2 :])
    try:
        pool_id = moto.create_pool()
        moto.create_user(pool_id, "ada", given_name="Ada")
        ca = make_ca("attrgate deploy test CA")
        server = issue(
            ca,
            common_name="attrgate",
            sans=[dns("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            server=True,
        )
        client = issue(
            ca, common_name=None, sans=[uri("spiffe://example.org/ns/prod/sa/profile-api")]
        )
        mounts = {m["mountPath"]: tmp_path / m["name"] for m in spec["volumeMounts"]}
        for folder in mounts.values():
            folder.mkdir()
        (tmp_path / "tls" / "tls.crt").write_bytes(server.cert_pem)
        (tmp_path / "tls" / "tls.key").write_bytes(server.key_pem)
        (tmp_path / "tls" / "ca.crt").write_bytes(ca.cert_pem)
        (tmp_path / "hmac" / "key").write_text("a key of the deploy test, 32 bytes\n")
        for policy in (DEPLOY / "policies").glob("*.yaml"):
            (tmp_path / "policies" / policy.name).write_text(policy.read_text())
        ports = {p["containerPort"]: free_port() for p in spec["ports"]}
        args = loopback(spec["args"], mounts, ports, redis.url)
        env = environment(spec)  # its region is moto's, us-east-1
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT")  # no collector here
        check(serve_settings(args, env))
        process = subprocess.Popen(
            [sys.executable, "-m", "attrgate", *args, "--cognito-endpoint", moto.endpoint],
            env=clean_env(
                moto.attrgate_keys.access_key_id, moto.attrgate_keys.secret_access_key, **env
            ),
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "err").open("wb"),
        )
        try:
            admin = f"127.0.0.1:{ports[50052]}"
            assert wait_serving(admin, process, 60), (tmp_path / "err").read_text()
            (tmp_path / "client.pem").write_bytes(client.cert_pem)
            (tmp_path / "client.key").write_bytes(client.key_pem)
            call = subprocess.run(
                [
                    *(sys.executable, "-m", "attrgate", "call"),
                    *(
                        "--target",
                        f"localhost:{ports[50051]}",
                        "--ca",
                        str(tmp_path / "tls/ca.crt"),
                    ),
                    *("--tls-cert", str(tmp_path / "client.pem")),
                    *("--tls-key", str(tmp_path / "client.key")),
                    *("--user-pool-id", pool_id, "--username", "ada"),
                    *("--user-attributes", "Name=given_name,Value=Augusta"),
                    *("--output", "text", "--query", "Attrgate.PolicyRevision"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env=clean_env(),
            )
            assert call.returncode == 0, call.stderr + (tmp_path / "err").read_text()
            assert call.stdout.startswith("sha256:")
            assert moto.attributes(pool_id, "ada")["given_name"] == "Augusta"
        finally:
            assert stop_serve(process) == 0, (tmp_path / "err").read_text()
    finally:
        redis.stop()
