"""The metrics Sluice's alert rules (ops/prometheus/rules.yml) and Grafana dashboards (ops/grafana/dashboards/)
query, read from the committed files: every expr, and the dashboards' variable queries."""

import json
import re
from pathlib import Path

import yaml

OPS = Path(__file__).resolve().parents[1] / "ops"
RULES = OPS / "prometheus" / "rules.yml"
DASHBOARDS = OPS / "grafana" / "dashboards"
# Sluice's names and Airflow's (through the collector) are the only metrics queried; a label is never so named
METRIC = re.compile(r"\b(?:sluice|airflow)_[A-Za-z0-9_:]*")


def rule_expressions(path: Path = RULES) -> list[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions(text: str) -> list[str]:
    """Every panel target's expr and every variable's query of one dashboard's JSON."""
    found = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    dashboard = json.loads(text)
    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        found.append(query["query"] if isinstance(query, dict) else query)
    return found


def every_expression() -> dict[str, list[str]]:
    """File name -> its expressions, for the rules and each committed dashboard."""
    files = {RULES.name: rule_expressions()}
    for path in sorted(DASHBOARDS.glob("*.json")):
        files[path.name] = dashboard_expressions(path.read_text())
    return files


def queried(expressions: list[str]) -> set[str]:
    """The metric names the expressions query. Each must query one at least: a name spelled otherwise (a typo in
    the prefix) would escape every check."""
    names = set()
    for expression in expressions:
        found = set(METRIC.findall(expression))
        assert found, f"no sluice_ or airflow_ metric in {expression!r}"
        names |= found
    return names


def unexported(names: set[str], exported: set[str]) -> list[str]:
    """The queried names no scrape exports (a histogram's _bucket, _sum and _count are its own samples)."""
    return sorted(name for name in names if name not in exported)
