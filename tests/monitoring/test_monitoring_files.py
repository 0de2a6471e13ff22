"""Prometheus, its alerts and the Grafana board, offline.

promtool (Debian's `prometheus` package) checks the config and the rules and runs
the alert unit tests (prometheus/alerts_test.yml); the dashboard and the alerts
query only metrics of the contract (docs/metrics.md) with every label they use
there; Grafana's and Prometheus' files are where docker-compose.monitoring.yml
mounts them. tests/monitoring/test_prometheus_live.py runs the same queries
against a real Prometheus scraping a running stack.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from splitgpt.monitoring import local_prometheus
from tests.servers import require

from .files import (
    ALERTS,
    ALERTS_TEST,
    JOBS,
    PROMETHEUS,
    ROOT,
    alert_rules,
    contract_labels,
    contract_metrics,
    dashboard,
    family,
    metric_names,
    panels,
    substitute,
    targets,
    variable_queries,
)

COMPOSE = ROOT / "docker-compose.yml"
MONITORING = ROOT / "docker-compose.monitoring.yml"
GRAFANA = ROOT / "grafana"

# The seed's seven panels and the ones issue 12 adds (titles on the board).
REQUIRED_PANELS = {
    "API request latency",
    "Model inference latency by node",
    "Tokenizer operations",
    "Memory usage",
    "Request success / error rates",
    "Token counts",
    "Node health status",
    "Time to first token",
    "Inter-token latency",
    "Tokens/s",
    "Batch size",
    "Queue (running / waiting)",
    "KV cache use per node",
    "Result-cache hit rate",
    "Failovers / replays",
    "Node health by partition and replica",
}
REQUIRED_ALERTS = {
    "SplitgptPartitionNoHealthyReplica",
    "SplitgptNodeReplicaDown",
    "SplitgptReplicaUnhealthy",
    "SplitgptServiceDown",
    "SplitgptRequestLatencyHigh",
    "SplitgptServerErrorRateHigh",
    "SplitgptQueueSaturated",
    "SplitgptKvCacheNearBudget",
    "SplitgptResultCacheDown",
}


def run(argv: list[str]) -> str:
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def compose_services(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["services"]


def allowed_name(name: str) -> bool:
    """A contract metric (docs/metrics.md), the process collector's, or Prometheus' own `up`."""
    return family(name) in contract_metrics() or name.startswith("process_") or name == "up"


# --- Prometheus ----------------------------------------------------------------------------


def test_prometheus_config_and_rules_pass_promtool():
    out = run([require("promtool", "prometheus"), "check", "config", "prometheus/prometheus.yml"])
    assert "1 rule files found" in out  # alerts.yml, next to the config as in the container
    run([require("promtool", "prometheus"), "check", "rules", "prometheus/alerts.yml"])


def test_alert_unit_tests_pass():
    out = run([require("promtool", "prometheus"), "test", "rules", str(ALERTS_TEST.relative_to(ROOT))])
    assert "SUCCESS" in out


def test_every_alert_is_tested_firing_and_not_firing():
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fires, silent = set(), set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert fires == names, f"no test of these firing: {sorted(names - fires)}"
    assert silent == names, f"no test of these staying silent: {sorted(names - silent)}"


def test_alerts_are_complete_and_query_the_contract():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert REQUIRED_ALERTS <= set(names), sorted(REQUIRED_ALERTS - set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]  # a blip never pages
        unknown = sorted(n for n in metric_names(rule["expr"]) if not allowed_name(n))
        assert not unknown, f"{rule['alert']} queries {unknown}, not in docs/metrics.md"
        jobs = set(re.findall(r'job="([\w-]+)"', rule["expr"]))
        assert jobs <= set(JOBS), f"{rule['alert']}: jobs {jobs}"


def test_prometheus_scrapes_every_service_and_every_replica():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(JOBS) <= set(jobs)
    services = compose_services(COMPOSE)
    api = jobs["splitgpt-api"]
    assert api.get("metrics_path", "/metrics") == "/metrics"
    assert [t for sc in api["static_configs"] for t in sc["targets"]] == ["api:8000"]
    expected = {
        "splitgpt-tokenizer": ["tokenizer"],
        "splitgpt-coordinator": ["coordinator"],
        # Every model's nodes: the first model's node-N and the second's second-node-N.
        "splitgpt-node": sorted(name for name in services if re.fullmatch(r"(second-)?node-\d+", name)),
    }
    assert len(expected["splitgpt-node"]) == 5
    for name, dns_names in expected.items():
        job = jobs[name]
        assert "static_configs" not in job, f"{name}: DNS discovery finds every replica; no fixed target"
        (sd,) = job["dns_sd_configs"]
        assert sorted(sd["names"]) == dns_names and sd["type"] == "A" and sd["port"] == 9100, name
        for service in dns_names:
            # The service's metrics port, where compose sets it, is the port scraped.
            env = services[service].get("environment", {})
            ports = [v for k, v in env.items() if k.endswith("_METRICS_PORT")] if isinstance(env, dict) else []
            assert all(str(p) == "9100" for p in ports), f"{service}: metrics port {ports}, Prometheus scrapes 9100"
        # Replicas of one compose service stay apart: instance = "<service>@<address>".
        relabel = {r["target_label"]: r for r in job["relabel_configs"]}
        assert relabel["instance"]["source_labels"] == ["__meta_dns_name", "__address__"]
        assert relabel["compose_service"]["source_labels"] == ["__meta_dns_name"]
        # A target label the metrics also carry would rename theirs (exported_partition, ...).
        assert not {"partition", "node", "service", "job"} & set(relabel)
    assert "# authorization:" in (PROMETHEUS / "prometheus.yml").read_text()  # the API-key recipe


def test_compose_mounts_the_config_and_the_alerts_where_the_config_reads_them():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    prometheus = compose_services(MONITORING)["prometheus"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in prometheus["volumes"] if m.startswith("./")}
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert (ROOT / mounts[config_file]).resolve() == PROMETHEUS / "prometheus.yml"
    for rules in config["rule_files"]:
        in_container = str(Path(config_file).parent / rules)
        assert (ROOT / mounts[in_container]).resolve() == (PROMETHEUS / rules).resolve()
        assert (PROMETHEUS / rules).resolve() == ALERTS


# --- Grafana -------------------------------------------------------------------------------


def test_dashboard_has_every_panel_and_queries_the_contract_only():
    board = dashboard()
    ids = [p["id"] for p in board["panels"]] + [q["id"] for p in board["panels"] for q in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    titles = [p["title"] for p in panels(board)]
    assert len(titles) == len(set(titles)), "panel titles repeat"
    assert REQUIRED_PANELS <= set(titles), sorted(REQUIRED_PANELS - set(titles))
    contract = contract_metrics()
    assert len(contract) > 40, "docs/metrics.md's tables are read"
    used = set()
    for panel in panels(board):
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what it shows"
    for title, ref, expr in targets(board):
        names = metric_names(expr)
        assert names, f"{title} {ref}: no metric in {expr!r}"
        unknown = sorted(n for n in names if not allowed_name(n))
        assert not unknown, f"'{title}' {ref} queries {unknown}, not in docs/metrics.md"
        used |= {family(n) for n in names}
    # Every metric of the contract is on the board, but these two: the budget is in
    # splitgpt_node_kv_usage_ratio, and node_info gives the partition variable its values.
    missing = sorted(n for n in contract if n not in used)
    assert missing == ["splitgpt_node_info", "splitgpt_node_kv_budget_tokens"], f"no panel for {missing}"
    assert {"process_resident_memory_bytes", "up"} <= used


def test_dashboard_queries_and_variables_parse_as_promql(tmp_path):
    board = dashboard()
    rules = [{"record": f"dashboard:{i}", "expr": substitute(expr)} for i, (_, _, expr) in enumerate(targets(board))]
    rules += [{"record": f"variable:{name}", "expr": expr} for name, expr in variable_queries(board)]
    file = tmp_path / "dashboard-rules.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run([require("promtool", "prometheus"), "check", "rules", str(file)])


def test_dashboard_uses_the_datasource_variable_defaulting_to_the_provisioned_prometheus():
    board = dashboard()
    (ds,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == ds["uid"]
    assert variables["partition"]["allValue"] == ".*" and variables["partition"]["includeAll"]
    assert variables["model"]["allValue"] == ".*" and variables["model"]["includeAll"] and variables["model"]["multi"]
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_the_model_variable_filters_every_model_labelled_query_and_only_those():
    """`$model` lists the coordinator's served models; every selector of a family with a
    `model` label (the coordinator's, the gateway's generation families) filters by it;
    the HTTP request families and the nodes' (by partition) do not."""
    board = dashboard()
    (query,) = [expr for name, expr in variable_queries(board) if name == "model"]
    source = re.fullmatch(r"count by \(model\) \((\w+)\)", query).group(1)
    labels = contract_labels()
    assert source.startswith("splitgpt_coordinator_") and "model" in labels[source], query
    by_model = {n for n, ls in labels.items() if "model" in ls and not n.startswith("splitgpt_node_")}
    assert {"splitgpt_coordinator_requests_running", "splitgpt_time_to_first_token_seconds"} <= by_model
    filtered = set()
    for title, ref, expr in targets(board):
        for name in metric_names(expr):
            for m in re.finditer(rf"(?<![\w:]){re.escape(name)}(\{{[^}}]*\}})?", expr):
                has = 'model=~"$model"' in (m.group(1) or "")
                if family(name) in by_model:
                    assert has, f"'{title}' {ref}: {name} without model=~\"$model\" in {expr!r}"
                    filtered.add(family(name))
                else:
                    assert not has, f"'{title}' {ref}: {name} has no model label, yet filters by it"
    assert filtered == by_model, sorted(by_model - filtered)  # every one is on the board, filtered


def test_grafana_provisioning_matches_the_compose_mounts():
    services = compose_services(MONITORING)
    grafana = services["grafana"]
    mounts = {m.split(":")[1]: (ROOT / m.split(":")[0]).resolve() for m in grafana["volumes"] if m.startswith("./")}
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    (ds,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" and ds["isDefault"]
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    directory, name = home.rsplit("/", 1)
    assert (mounts[directory] / name).is_file()
    json.loads((mounts[directory] / name).read_text())


# --- the local Prometheus (splitgpt up --monitoring) ---------------------------------------


def test_local_config_scrapes_the_same_jobs_and_passes_promtool(tmp_path):
    targets_ = {
        "splitgpt-api": ["127.0.0.1:8000"],
        "splitgpt-tokenizer": ["127.0.0.1:9401"],
        "splitgpt-coordinator": ["127.0.0.1:9400"],
        "splitgpt-node": ["127.0.0.1:9410", "127.0.0.1:9411"],
    }
    path = local_prometheus.write_local_config(tmp_path / "conf", targets_, 0.5, [ALERTS], api_key="secret")
    config = yaml.safe_load(path.read_text())
    assert {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]} == targets_
    assert config["global"]["scrape_interval"] == "500ms" and config["global"]["evaluation_interval"] == "500ms"
    assert config["rule_files"] == [str(ALERTS)]
    api = next(job for job in config["scrape_configs"] if job["job_name"] == "splitgpt-api")
    assert api["authorization"] == {"type": "Bearer", "credentials": "secret"}
    assert path.stat().st_mode & 0o077 == 0
    out = run([require("promtool", "prometheus"), "check", "config", str(path)])
    assert "1 rule files found" in out


def test_durations_and_command_line(tmp_path):
    assert [local_prometheus.duration(s) for s in (15, 1, 0.25, 2.5)] == ["15s", "1s", "250ms", "2500ms"]
    with pytest.raises(ValueError):
        local_prometheus.duration(0)
    argv = local_prometheus.prometheus_argv(tmp_path / "p.yml", tmp_path / "data", "127.0.0.1", 19090, binary="/x/prometheus")
    assert argv[0] == "/x/prometheus"
    assert f"--config.file={tmp_path / 'p.yml'}" in argv and f"--storage.tsdb.path={tmp_path / 'data'}" in argv
    assert "--web.listen-address=127.0.0.1:19090" in argv
    found = local_prometheus.find_prometheus()
    assert found is None or Path(found).name == "prometheus"
