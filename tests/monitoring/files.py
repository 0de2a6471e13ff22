"""What the monitoring tests read: the dashboard's queries, the alert rules, the metric contract."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "splitgpt.json"
CONTRACT = ROOT / "docs" / "metrics.md"
JOBS = ("splitgpt-api", "splitgpt-tokenizer", "splitgpt-coordinator", "splitgpt-node")


def contract_metrics() -> set[str]:
    """Every metric family docs/metrics.md names (the first column of its tables)."""
    return set(re.findall(r"^\| `(splitgpt_\w+)`", CONTRACT.read_text(), flags=re.M))


def contract_labels() -> dict[str, set[str]]:
    """Each family of docs/metrics.md -> the label names its labels column gives."""
    found = {}
    for name, labels in re.findall(r"^\| `(splitgpt_\w+)` \| [^|]+ \| ((?:[^|\\]|\\\|)*) \|", CONTRACT.read_text(), flags=re.M):
        # `a, b` and `reason` = x \| y, `model`: the names are the words inside backquotes before any `=`.
        found[name] = {w.strip() for quoted in re.findall(r"`([^`]*)`", labels) for w in quoted.split(",") if w.strip()}
    return found


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> list[dict]:
    """Every panel, the ones inside collapsed rows included; rows themselves left out."""
    found = []
    for panel in board["panels"]:
        found += [panel, *panel.get("panels", [])]
    return [p for p in found if p["type"] != "row"]


def targets(board: dict) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query."""
    return [(p["title"], t["refId"], t["expr"]) for p in panels(board) for t in p.get("targets", []) if "expr" in t]


def variable_queries(board: dict) -> list[tuple[str, str]]:
    """(variable name, PromQL) for each query variable: label_values(m, l) as `count by (l) (m)`."""
    found = []
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", query)
        assert m, f"variable {variable['name']}: {query!r} is not label_values(metric, label)"
        found.append((variable["name"], f"count by ({m.group(2)}) ({m.group(1)})"))
    return found


def substitute(expr: str, rate_interval: str = "5m", interval: str = "15s", range_: str = "1h") -> str:
    """A panel's expr as Grafana sends it: its variables replaced (`$partition` and `$model` are All: .*)."""
    for name, value in (
        ("__rate_interval", rate_interval), ("__interval", interval), ("__range", range_), ("partition", ".*"), ("model", ".*"),
    ):  # fmt: skip
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"a Grafana variable left in {expr!r}"
    return expr


_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords, labels and strings left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range and subquery selectors
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", e):
        if e[m.end() :].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(m.group(0))
    return names


def family(name: str) -> str:
    """A histogram's series name back to its family: x_bucket, x_sum, x_count -> x."""
    return re.sub(r"_(bucket|sum|count)$", "", name)


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"] if "alert" in rule]
