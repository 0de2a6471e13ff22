"""The Kubernetes manifests as a cluster user meets them: rendered by kustomize, checked offline.

k8s/ (the stack) and k8s/monitoring/ (an optional Prometheus) are rendered the way
`kubectl apply -k` renders them (`kubectl kustomize`, or, without kubectl, a reading
of the kustomization in Python that a test holds to kubectl's output where both run),
then: every resource validates strictly against a current Kubernetes
(kubernetes-validate --strict), lives in the splitgpt namespace, and meets the
restricted Pod Security Standard its namespace enforces; every partition and the
gateway have a PodDisruptionBudget that selects exactly their pods; the HPA scales
the gateway's Deployment; the scrape annotations name the ports the services serve
metrics on; the Prometheus config passes promtool, and promtool's own service
discovery, fed the rendered pods as Kubernetes discovery would see them, maps them
to the job names the alerts and the Grafana board use; the Ingress routes to
Services and ports that exist.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .test_deploy_files import K8S, ROOT, check, is_splitgpt_image, load_settings, promtool, python_tool, settings_classes

MONITORING = K8S / "monitoring"
NAMESPACE = "splitgpt"
ALERTS = ROOT / "prometheus" / "alerts.yml"
DOC = ROOT / "docs" / "kubernetes.md"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
# app.kubernetes.io/component -> the Prometheus job its metrics land in (docs/metrics.md).
JOBS = {"api": "splitgpt-api", "tokenizer": "splitgpt-tokenizer", "coordinator": "splitgpt-coordinator", "node": "splitgpt-node"}
METRICS_ENV = {
    "tokenizer": "SPLITGPT_TOKENIZER_METRICS_PORT",
    "coordinator": "SPLITGPT_COORDINATOR_METRICS_PORT",
    "node": "SPLITGPT_NODE_METRICS_PORT",
}


# --- rendering -------------------------------------------------------------------


def kustomize_command() -> list[str] | None:
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


def render_with_kustomize(root: Path) -> list[dict] | None:
    command = kustomize_command()
    if command is None:
        return None
    out = check(command + [str(root)])
    return [d for d in yaml.safe_load_all(out) if d]


def render_in_python(root: Path) -> list[dict]:
    """What `kustomize build` makes of the features these kustomizations use: resources,
    namespace, configMapGenerator (files; no hash suffix) and images (newName, newTag)."""
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization.get("resources", []):
        docs += [d for d in yaml.safe_load_all((root / name).read_text()) if d]
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for spec in generator.get("files", []):
            key, _, path = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
            data[key] = (root / path).read_text()
        labels = generator.get("options", {}).get("labels")
        metadata = {"name": generator["name"], **({"labels": labels} if labels else {})}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    namespace = kustomization.get("namespace")
    for doc in docs:
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
        if namespace and doc["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in doc.get("subjects", []):
                if subject["kind"] == "ServiceAccount":
                    subject["namespace"] = namespace
        for spec in pod_specs_of(doc):
            for c in spec.get("initContainers", []) + spec["containers"]:
                for image in kustomization.get("images", []):
                    name, _, tag = c["image"].partition(":")
                    if name == image["name"]:
                        c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return docs


def render(root: Path) -> list[dict]:
    return render_with_kustomize(root) or render_in_python(root)


def pod_specs_of(doc: dict) -> list[dict]:
    return [doc["spec"]["template"]["spec"]] if doc["kind"] in ("Deployment", "StatefulSet") else []


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_labels(workload: dict) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels", "matchExpressions"}, f"a selector not checked here: {selector}"
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", f"only In expressions are checked here: {expression}"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return selector.get("matchLabels", {}).items() <= labels.items()


def plain_env(container: dict) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def component(workload: dict) -> str:
    return pod_labels(workload)["app.kubernetes.io/component"]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(K8S)


@pytest.fixture(scope="module")
def monitoring() -> list[dict]:
    return render(MONITORING)


def prometheus_config(monitoring: list[dict]) -> dict:
    (configmap,) = [
        d for d in monitoring if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("splitgpt-prometheus-config")
    ]
    return yaml.safe_load(configmap["data"]["prometheus.yml"])


# --- rendered, valid, in one namespace -----------------------------------------------


@pytest.mark.parametrize("root", [K8S, MONITORING], ids=["k8s", "k8s-monitoring"])
def test_rendered_resources_pass_kubernetes_validate_strict(root, tmp_path):
    validate = python_tool("kubernetes_validate", "kubernetes-validate")
    docs = render(root)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    output = check(validate + ["--strict", str(rendered)])
    assert "ERROR" not in output and "WARN" not in output, output
    assert output.count("passed") == len(docs), output


@pytest.mark.parametrize("root", [K8S, MONITORING], ids=["k8s", "k8s-monitoring"])
def test_the_python_rendering_agrees_with_kustomize(root):
    """The fallback the other tests use without kubectl renders what kubectl does."""
    by_kustomize = render_with_kustomize(root)
    if by_kustomize is None:
        pytest.skip("neither kubectl nor kustomize is installed: only the Python rendering is checked")

    def key(doc: dict) -> tuple:
        name = doc["metadata"]["name"]
        if doc["kind"] == "ConfigMap":  # configMapGenerator's hash suffix
            name = re.sub(r"-[a-z0-9]{10}$", "", name)
        return (doc["kind"], doc["metadata"].get("namespace"), name)

    def images(docs: list[dict]) -> set[str]:
        return {c["image"] for d in docs for s in pod_specs_of(d) for c in s.get("initContainers", []) + s["containers"]}

    by_python = render_in_python(root)
    assert sorted(map(key, by_python)) == sorted(map(key, by_kustomize))
    assert images(by_python) == images(by_kustomize)


def test_everything_lives_in_the_splitgpt_namespace(base, monitoring):
    namespaces = of_kind(base, "Namespace")
    assert list(namespaces) == [NAMESPACE], "k8s/ creates its namespace"
    labels = namespaces[NAMESPACE]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert not of_kind(monitoring, "Namespace"), "k8s/monitoring/ goes into the namespace k8s/ made"
    for doc in base + monitoring:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], where
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{where} is not in {NAMESPACE}"
        for subject in doc.get("subjects", []):
            assert subject.get("namespace") == NAMESPACE, f"{where}: {subject}"
    assert {d["kind"] for d in monitoring} & CLUSTER_SCOPED == {"ClusterRole"}, "bound in the namespace only"
    # the Secret made by hand (not in the kustomization): `kubectl apply -f` puts it there too
    for name in ("internal-secret.yaml", "redis-secret.yaml"):
        (secret,) = [d for d in yaml.safe_load_all((K8S / "security" / name).read_text()) if d]
        assert secret["metadata"]["namespace"] == NAMESPACE


def test_redis_loads_only_the_acl_file_and_the_gateway_only_the_password_of_one_secret(base):
    from splitgpt.shells.redis_secret import ACL_FILE, CACHE_RULES, CACHE_USER, PASSWORD_FILE, acl_text

    (secret,) = [d for d in yaml.safe_load_all((K8S / "security" / "redis-secret.yaml").read_text()) if d]
    template = secret["stringData"][ACL_FILE].replace("REPLACE-with-the-hex-sha256-of-the-password", "0" * 64)
    assert template.split() == acl_text("x").split()[:6] + ["#" + "0" * 64, *CACHE_RULES]

    def secret_volume(deployment: str) -> tuple[dict, dict]:
        pod = of_kind(base, "Deployment")[deployment]["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]]
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"]
        return volume["secret"], {**{e["name"]: e.get("value") for e in container.get("env", [])},
                                  "args": container["args"], "mount": mount["mountPath"]}  # fmt: skip

    redis_volume, redis_pod = secret_volume("splitgpt-redis")
    assert [i["key"] for i in redis_volume["items"]] == [ACL_FILE], "Redis never sees the password"
    args = redis_pod["args"]
    assert args[args.index("--aclfile") + 1] == f"{redis_pod['mount']}/{ACL_FILE}"
    api_volume, api_pod = secret_volume("splitgpt-api")
    assert [i["key"] for i in api_volume["items"]] == [PASSWORD_FILE]
    assert api_pod["SPLITGPT_API_REDIS_USERNAME"] == CACHE_USER
    assert api_pod["SPLITGPT_API_REDIS_PASSWORD_FILE"] == f"{api_pod['mount']}/{PASSWORD_FILE}"


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def test_pods_meet_the_restricted_pod_security_standard(base, monitoring):
    """What `pod-security.kubernetes.io/enforce: restricted` admits (the namespace enforces it)."""
    for workload in workloads(base + monitoring):
        spec = workload["spec"]["template"]["spec"]
        where = workload["metadata"]["name"]
        pod = spec.get("securityContext", {})
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert pod.get("runAsUser", 1) != 0, where
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, f"{where}: volume {volume}"
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            assert pod.get("runAsNonRoot") or sc.get("runAsNonRoot"), f"{where}/{c['name']}: runAsNonRoot"
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}"
            assert not sc.get("privileged"), f"{where}/{c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{c['name']}"
            assert set(sc.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, f"{where}/{c['name']}"
            assert sc.get("runAsUser", 1) != 0, f"{where}/{c['name']}"
            assert not any(p.get("hostPort") for p in c.get("ports", [])), f"{where}/{c['name']}: hostPort"


# --- disruption budgets, autoscaling ----------------------------------------------------


def test_each_partition_and_the_gateway_have_a_disruption_budget_of_their_own(base):
    budgets = of_kind(base, "PodDisruptionBudget")
    sets = of_kind(base, "StatefulSet")
    assert len(sets) == 5, "node-0, node-1, node-2, second-node-0, second-node-1"
    guarded = list(sets.values()) + [of_kind(base, "Deployment")["splitgpt-api"]]
    for workload in guarded:
        name = workload["metadata"]["name"]
        mine = [b for b in budgets.values() if selects(b["spec"]["selector"], pod_labels(workload))]
        assert len(mine) == 1, f"{name}: {len(mine)} PodDisruptionBudgets select its pods"
        (budget,) = mine
        spec = budget["spec"]
        # maxUnavailable, not minAvailable: with one replica a drain may still evict it.
        assert spec.get("maxUnavailable") == 1 and "minAvailable" not in spec, f"{name}: {spec}"
        assert spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow", name
        replicas = workload["spec"].get("replicas")
        if replicas is not None:
            assert replicas >= 2, f"{name}: a budget of one unavailable leaves nothing at replicas {replicas}"
        others = [
            w["metadata"]["name"] for w in workloads(base) if w is not workload and selects(spec["selector"], pod_labels(w))
        ]
        assert not others, f"the budget {budget['metadata']['name']} also selects {others}"


def test_the_hpa_scales_the_api_deployment_on_cpu(base):
    (hpa,) = of_kind(base, "HorizontalPodAutoscaler").values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    api = of_kind(base, "Deployment")[target["name"]]
    assert component(api) == "api"
    assert "replicas" not in api["spec"], "the HPA owns the count: a replicas field resets it on every apply"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    for c in api["spec"]["template"]["spec"]["containers"]:
        assert c["resources"]["requests"]["cpu"], "utilization is relative to the CPU request"
    (budget,) = [b for b in of_kind(base, "PodDisruptionBudget").values() if selects(b["spec"]["selector"], pod_labels(api))]
    assert budget["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


# --- metrics: annotations, ports, the Prometheus config --------------------------------


def test_scrape_annotations_name_the_ports_the_services_serve_metrics_on(base, monkeypatch):
    annotated = set()
    for workload in workloads(base):
        template = workload["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        where = workload["metadata"]["name"]
        (c,) = template["spec"]["containers"]
        if not is_splitgpt_image(c["image"]):
            assert "prometheus.io/scrape" not in annotations, f"{where} serves no metrics"
            continue
        assert annotations["prometheus.io/scrape"] == "true", where
        assert annotations["prometheus.io/path"] == "/metrics", where
        port = int(annotations["prometheus.io/port"])
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        env = plain_env(c)
        kind = component(workload)
        assert kind in JOBS and c["args"][0] == kind, f"{where}: component {kind} runs `splitgpt {c['args'][0]}`"
        if kind == "api":  # /metrics on the HTTP port
            assert port == ports["http"] == int(env["SPLITGPT_API_PORT"]), where
            assert "metrics" not in ports
        else:
            assert port == ports["metrics"] == int(env[METRICS_ENV[kind]]), where
            assert ports["metrics"] != ports["grpc"], where
            cls = settings_classes()[kind]
            if "metrics_port" in cls.model_fields:  # the services' setting, where this tree has it
                settings = load_settings(cls, {k: v for k, v in env.items() if k.startswith("SPLITGPT_")}, monkeypatch)
                assert settings.metrics_port == port, where
        annotated.add(kind)
    assert annotated == set(JOBS)


def k8s_sd_targets(docs: list[dict]) -> tuple[list[dict], dict[tuple[str, str], str]]:
    """file_sd target groups carrying the __meta_kubernetes_pod_* labels Kubernetes pod
    discovery gives each container port of these pods (one pod per workload), and
    (job, address) -> the pod each should become; plus pods that must not be scraped."""

    def sanitize(name: str) -> str:
        return re.sub(r"[^a-zA-Z0-9_]", "_", name)

    groups, expected = [], {}
    for i, workload in enumerate(workloads(docs), start=1):
        template = workload["spec"]["template"]
        spec = template["spec"]
        pod = f"{workload['metadata']['name']}-0"
        # the api's pod on an IPv6-only cluster too
        ips = [f"10.0.0.{i}"] + ([f"fd00::{i}"] if component(workload) == "api" else [])
        for ip in ips:
            for phase in ("Running", "Pending"):
                meta = {
                    "__meta_kubernetes_namespace": workload["metadata"]["namespace"],
                    "__meta_kubernetes_pod_name": pod if phase == "Running" else pod + "-pending",
                    "__meta_kubernetes_pod_ip": ip,
                    "__meta_kubernetes_pod_phase": phase,
                }
                meta |= {f"__meta_kubernetes_pod_label_{sanitize(k)}": v for k, v in template["metadata"]["labels"].items()}
                annotations = template["metadata"].get("annotations", {})
                meta |= {f"__meta_kubernetes_pod_annotation_{sanitize(k)}": v for k, v in annotations.items()}
                host = f"[{ip}]" if ":" in ip else ip
                for c in spec["containers"]:
                    for p in c.get("ports", []) or [{}]:
                        address = f"{host}:{p['containerPort']}" if p else host
                        labels = meta | {"__meta_kubernetes_pod_container_name": c["name"]}
                        if p:
                            labels["__meta_kubernetes_pod_container_port_name"] = p["name"]
                        groups.append({"targets": [address], "labels": labels})
                if phase == "Running" and annotations.get("prometheus.io/scrape") == "true":
                    expected[(JOBS[component(workload)], f"{host}:{annotations['prometheus.io/port']}")] = pod
    return groups, expected


def promtool_config(config: dict, tmp_path: Path, targets: list[dict] | None = None) -> Path:
    """The config with rule_files in tmp_path/rules (alerts.yml there, where the repository
    has it yet) and, given targets, Kubernetes discovery swapped for a file of them."""
    config = copy.deepcopy(config)
    (pattern,) = config["rule_files"]
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    if ALERTS.is_file():
        shutil.copy(ALERTS, rules / ALERTS.name)
    config["rule_files"] = [str(rules / Path(pattern).name)]
    if targets is not None:
        (tmp_path / "targets.json").write_text(json.dumps(targets))
        for job in config["scrape_configs"]:
            if job.pop("kubernetes_sd_configs", None) is not None:
                job["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_k8s_prometheus_config_passes_promtool(monitoring, base, tmp_path):
    exe = promtool()
    config = prometheus_config(monitoring)
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    (deployment,) = workloads(monitoring)
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    rules = volumes[mounts["/etc/prometheus/rules"]]["configMap"]
    assert rules == {"name": "splitgpt-prometheus-rules", "optional": True}, "starts without the rules ConfigMap"
    config_file = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--config.file="))
    assert volumes[mounts[str(Path(config_file).parent)]]["configMap"]["name"].startswith("splitgpt-prometheus-config")

    result = subprocess.run(
        [exe, "check", "config", str(promtool_config(config, tmp_path))], capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    if "field kubernetes_sd_configs not found" in output:
        # Debian's promtool is built without Kubernetes discovery: check the rest with
        # the discovery swapped for a file (the next test runs the relabelling).
        output = check([exe, "check", "config", str(promtool_config(config, tmp_path, k8s_sd_targets(base)[0]))])
    else:
        assert result.returncode == 0, output
    if ALERTS.is_file():
        assert re.search(r"SUCCESS: [1-9]\d* rules found", output), output


def test_k8s_prometheus_maps_the_pods_to_the_dashboards_job_names(base, monitoring, tmp_path):
    """promtool's service discovery runs the config's relabelling on the rendered pods."""
    exe = promtool()
    config = prometheus_config(monitoring)
    for job in config["scrape_configs"]:
        for sd in job.get("kubernetes_sd_configs", []):
            assert sd["role"] == "pod" and sd["namespaces"] == {"names": [NAMESPACE]}, job["job_name"]
    groups, expected = k8s_sd_targets(base + monitoring)
    path = promtool_config(config, tmp_path, groups)
    found = {}
    for job in config["scrape_configs"]:
        if "kubernetes_sd_configs" not in job:
            continue
        out = check([exe, "check", "service-discovery", "--timeout=2s", str(path), job["job_name"]])
        targets, _ = json.JSONDecoder().raw_decode(out[out.index("[") :])  # then promtool's log lines
        for target in targets:
            labels = target["labels"]
            if not labels:
                continue  # dropped by relabelling
            assert labels["__metrics_path__"] == "/metrics"
            assert not {"node", "partition", "service"} & set(labels), f"the series carry these themselves: {labels}"
            assert labels["namespace"] == NAMESPACE
            key = (labels["job"], labels["__address__"])
            assert found.get(key, labels["pod"]) == labels["pod"]
            found[key] = labels["pod"]
    assert found == expected
    assert {job for job, _ in found} == set(JOBS.values())
    assert len({pod for (job, _), pod in found.items() if job == "splitgpt-node"}) == 5, "every partition of both models"
    if ALERTS.is_file():
        used = set(re.findall(r'job="(splitgpt-[^"]+)"', ALERTS.read_text()))
        assert used <= set(JOBS.values()), f"alerts.yml names jobs this config does not make: {sorted(used - set(JOBS.values()))}"


# --- Ingress ----------------------------------------------------------------------------


def test_the_ingress_routes_the_ui_and_the_api_to_services_that_exist(base, monkeypatch):
    services = of_kind(base, "Service")
    (ingress,) = of_kind(base, "Ingress").values()
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    (rule,) = spec["rules"]
    assert rule["host"]
    routes = {}
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        service = services[backend["name"]]  # a Service that exists
        ports = service["spec"]["ports"]
        assert any(p.get("name") == backend["port"].get("name") or p["port"] == backend["port"].get("number") for p in ports), (
            f"{path['path']}: {backend['name']} has no port {backend['port']}"
        )
        routes[path["path"]] = (backend["name"], path["pathType"])
    api, ui = ("splitgpt-api", "Prefix"), ("splitgpt-frontend", "Prefix")
    assert routes["/"] == ui
    for prefix in ("/api", "/v1", "/docs"):
        assert routes[prefix] == api, prefix
    assert routes["/openapi.json"][0] == "splitgpt-api"
    # streams: no response buffering, and a read timeout beyond the gateway's own
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    settings = load_settings(settings_classes()["api"], {}, monkeypatch)
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > settings.request_timeout_s
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body.rstrip("m")) * 1024 * 1024 >= settings.max_body_bytes


# --- the guide ---------------------------------------------------------------------------


def test_the_kubernetes_guide_names_files_that_exist():
    text = DOC.read_text()
    for path in set(re.findall(r"(?<![\w/.-])((?:k8s|prometheus|grafana|docs)/[\w./-]*\w)", text)):
        assert (ROOT / path).exists(), f"docs/kubernetes.md names {path}, which does not exist"
    for needed in ("docker build", "docker push", "kustomize edit set image", "kind load docker-image", "minikube image load"):
        assert needed in text, needed
    for needed in ("port-forward", "rollout status", "scale statefulset", "splitgpt-prometheus-rules", "splitgpt-internal"):
        assert needed in text, needed


def admitted(policies: list[dict], source: dict[str, str], destination: dict[str, str], port: str) -> bool:
    """NetworkPolicy semantics for pods of one namespace: a pod that no policy selects takes
    anything; one that some do takes what any of their ingress rules admits."""
    applying = [p["spec"] for p in policies if selects(p["spec"]["podSelector"], destination)]
    if not applying:
        return True
    for spec in applying:
        for rule in spec.get("ingress", []):
            ports = [entry["port"] for entry in rule.get("ports", [])]
            peers = rule.get("from")
            assert all(set(peer) == {"podSelector"} for peer in peers or []), "peers in this namespace only"
            if (not ports or port in ports) and (not peers or any(selects(peer["podSelector"], source) for peer in peers)):
                return True
    return False


def test_network_policies_admit_each_connection_the_stack_makes_and_no_other(base, monitoring):
    policies = list(of_kind(base, "NetworkPolicy").values())
    pods = {component(w): pod_labels(w) for w in workloads(base + monitoring)}
    assert set(pods) == {"api", "frontend", "tokenizer", "coordinator", "node", "redis", "monitoring"}
    sources = {**pods, "another pod": {"app": "anything"}}
    ports = {
        component(w): {p["name"] for c in pod_specs_of(w)[0]["containers"] for p in c.get("ports", [])}
        for w in workloads(base + monitoring)
    }  # fmt: skip
    allowed = {
        (source, destination, port)
        for source, source_labels in sources.items()
        for destination, labels in pods.items()
        for port in ports[destination]
        if admitted(policies, source_labels, labels, port)
    }
    anyone = {(s, d, "http") for s in sources for d in ("api", "frontend")}
    expected = anyone | {
        ("api", "redis", "redis"), ("api", "tokenizer", "grpc"), ("api", "coordinator", "grpc"),
        ("coordinator", "node", "grpc"), ("node", "node", "grpc"),  # relay: each node calls the next
        ("monitoring", "tokenizer", "metrics"), ("monitoring", "coordinator", "metrics"), ("monitoring", "node", "metrics"),
    }  # fmt: skip
    assert allowed == expected, f"admitted but not expected: {sorted(allowed - expected)}; " \
        f"expected but refused: {sorted(expected - allowed)}"  # fmt: skip
