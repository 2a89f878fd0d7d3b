"""Alert rules, their promtool tests, the dashboard and the scrape setup cannot silently rot.

promtool (Debian's ``prometheus`` package) checks and unit-tests the rules. Where it is not
installed the promtool tests skip, unless ``CDRPIPE_REQUIRE_PROMTOOL=1`` (``.ci/run`` sets it):
then a missing promtool fails them, so CI can never pass without running the rules' tests.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from pipeline.metrics import VaultSinkMetrics, WorkerMetrics
from pipeline.topics import load_topic_policy

REPO = Path(__file__).resolve().parents[3]
MONITORING = REPO / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "dashboard.json"
RULE_TESTS = sorted((REPO / "tests" / "monitoring").glob("*.test.yaml"))
OPERATIONS = REPO / "docs" / "operations.md"
COMPOSE = REPO / "deploy" / "compose.yaml"
K8S_MONITORING = REPO / "deploy" / "k8s" / "base" / "monitoring.yaml"
ENV_REQUIRE = "CDRPIPE_REQUIRE_PROMTOOL"
#: Series the rules and panels may name that cdrpipe does not export (Prometheus, kube-state-metrics).
FOREIGN_METRICS = {"up", "kube_job_status_failed", "kube_pod_status_ready", "kube_pod_container_status_restarts_total"}
#: The panels the dashboard must have (issue: "Operate it").
REQUIRED_PANELS = ("Records/s in and out by output", "DLQ by reason", "Worker lag by partition",
                   "Batch latency quantiles", "Transactions and aborts", "Vault stored / duplicate / expired",
                   "Privacy requests applied")


@pytest.fixture(scope="module")
def yaml() -> ModuleType:
    return pytest.importorskip("yaml", reason="PyYAML parses the rule files; pip install pyyaml")


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary; a skip where it is absent, a failure where CI requires it."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get(ENV_REQUIRE) == "1":
            pytest.fail(f"promtool is not installed but {ENV_REQUIRE}=1: apt-get install prometheus")
        pytest.skip(f"promtool not installed (apt-get install prometheus; {ENV_REQUIRE}=1 makes this a failure)")
    return path


@pytest.fixture(scope="module")
def rules(yaml: ModuleType) -> list[dict[str, Any]]:
    """Every alerting rule of deploy/monitoring/alerts.yaml."""
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def _run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- promtool


def test_promtool_checks_the_rule_file(promtool: str) -> None:
    done = _run([promtool, "check", "rules", str(ALERTS)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_the_rules_pass(promtool: str) -> None:
    assert RULE_TESTS, "no promtool test files in tests/monitoring/"
    done = _run([promtool, "test", "rules", *map(str, RULE_TESTS)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_tests_can_fail(promtool: str, tmp_path: Path) -> None:
    """The same tests against rules with one threshold moved must fail: they test the rules."""
    alerts = tmp_path / "deploy" / "monitoring" / "alerts.yaml"
    alerts.parent.mkdir(parents=True)
    text = ALERTS.read_text()
    assert "cdrpipe_suppressions_age_seconds{job=\"cdrpipe-worker\"} > 300" in text
    alerts.write_text(text.replace('cdrpipe_suppressions_age_seconds{job="cdrpipe-worker"} > 300',
                                   'cdrpipe_suppressions_age_seconds{job="cdrpipe-worker"} > 3000'))
    tests = tmp_path / "tests" / "monitoring"
    tests.mkdir(parents=True)
    for path in RULE_TESTS:
        shutil.copy(path, tests / path.name)
    done = _run([promtool, "test", "rules", *(str(tests / p.name) for p in RULE_TESTS)], cwd=tmp_path)
    assert done.returncode != 0 and "CdrpipeSuppressionsStale" in done.stdout + done.stderr


def test_the_compose_prometheus_config_and_its_rules_check(promtool: str, yaml: ModuleType, tmp_path: Path) -> None:
    """The inline prometheus.yml compose mounts is valid and loads the rule file."""
    compose = yaml.safe_load(COMPOSE.read_text())
    config = compose["configs"]["prometheus"]["content"]
    (tmp_path / "alerts.yaml").write_text(ALERTS.read_text())
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/alerts.yaml", "alerts.yaml"))
    done = _run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"SUCCESS: [1-9]\d* rules found", done.stdout + done.stderr), done.stdout + done.stderr


# --------------------------------------------------------------------------- the rules themselves


def _tested(yaml: ModuleType) -> Iterator[tuple[str, bool]]:
    """(alert name, fires?) of every expectation in the promtool test files."""
    for path in RULE_TESTS:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                yield case["alertname"], bool(case.get("exp_alerts"))


def test_every_alert_is_tested_firing_and_not_firing(yaml: ModuleType, rules: list[dict[str, Any]]) -> None:
    names = {r["alert"] for r in rules}
    cases = set(_tested(yaml))
    assert {n for n, _ in cases} <= names, "a test names an alert that does not exist"
    for name in sorted(names):
        assert (name, True) in cases, f"{name} is never tested firing"
        assert (name, False) in cases, f"{name} is never tested staying quiet"


def _headings() -> set[str]:
    """GitHub anchors of the headings of docs/operations.md."""
    anchors = set()
    for line in OPERATIONS.read_text().splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section(rules: list[dict[str, Any]]) -> None:
    anchors = _headings()
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/operations.md" and anchor in anchors, f"{rule['alert']}: no section {runbook}"


def _exported_metrics() -> set[str]:
    """Every series name the services can export (counters as _total, histograms as _bucket/_sum/_count)."""
    from pipeline.aggregates.worker import AggregateMetrics
    from pipeline.privacy.worker import PrivacyMetrics
    worker = WorkerMetrics()
    worker.follow_suppressions(SimpleNamespace(active_count=0, current_at=time.time()))
    names: set[str] = set()
    for metrics in (worker, VaultSinkMetrics(), PrivacyMetrics(), AggregateMetrics()):
        for family in metrics.registry.collect():
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                        "summary": ("_sum", "_count")}.get(family.type, ("",))
            names |= {family.name + s for s in suffixes}
    return names


def _named_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers followed by a selector, a range or a space)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not names
    expr = re.sub(r"\$\w+", "5m", expr)  # Grafana's $__rate_interval
    words = set(re.findall(r"\b([a-z_:][a-z0-9_:]*)\b(?!\s*\()", expr))
    keywords = {"sum", "by", "and", "or", "unless", "offset", "on", "ignoring", "without", "le", "max", "min",
                "time", "scalar", "rate", "deriv", "increase", "absent", "histogram_quantile", "count", "group_left"}
    labels = set(re.findall(r"\b([a-z_]+)\s*(?:=~|!~|!=|=)", expr)) | set(
        w for grp in re.findall(r"by\s*\(([^)]*)\)", expr) for w in re.findall(r"\w+", grp))
    return {w for w in words - keywords - labels if "_" in w or w == "up"}


def _dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def test_alert_and_dashboard_expressions_name_only_exported_metrics(rules: list[dict[str, Any]]) -> None:
    """A renamed or dropped metric breaks this test, not a page at 3 a.m. or a blank panel."""
    exported = _exported_metrics()
    exprs = [(r["alert"], r["expr"]) for r in rules]
    exprs += [(p["title"], t["expr"]) for p in _dashboard_panels() for t in p["targets"]]
    for where, expr in exprs:
        named = _named_metrics(expr)
        assert named, f"{where}: no metric found in {expr!r}"
        unknown = named - exported - FOREIGN_METRICS
        assert not unknown, f"{where}: {sorted(unknown)} not exported by any service"


def test_the_metric_name_check_can_fail() -> None:
    assert _named_metrics('sum by (route) (rate(cdrpipe_records_out_total{route="dlq"}[5m]))') == {
        "cdrpipe_records_out_total"}
    assert "cdrpipe_records_outt_total" not in _exported_metrics()


def test_retention_thresholds_derive_from_the_topics_retention_ms(rules: list[dict[str, Any]]) -> None:
    """Warn at a quarter and page at half of cdr.retention's retention.ms (pipeline/data/topics.toml)."""
    (spec,) = [s for s in load_topic_policy() if s.name == "cdr.retention"]
    retention_s = int(spec.config["retention.ms"]) // 1000
    by_name = {r["alert"]: r["expr"] for r in rules}
    assert by_name["CdrpipeVaultBehindRetention"].strip().endswith(f"> {retention_s // 4}")
    assert by_name["CdrpipeVaultNearRetention"].strip().endswith(f"> {retention_s // 2}")


# --------------------------------------------------------------------------- dashboard, compose, k8s


def test_the_dashboard_has_the_panels_an_on_call_engineer_needs() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in _dashboard_panels()]
    for title in REQUIRED_PANELS:
        assert title in titles, f"missing panel {title!r}"
    assert len(set(titles)) == len(titles), "panel titles repeat"
    assert dashboard["uid"] == "cdrpipe"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids), "panel ids repeat"
    for panel in _dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


def test_compose_provisions_the_rules_and_the_dashboard(yaml: ModuleType) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services, configs = compose["services"], compose["configs"]
    assert configs["alerts"]["file"] == "./monitoring/alerts.yaml"
    assert configs["dashboard"]["file"] == "./monitoring/dashboard.json"
    assert {c["source"] for c in services["prometheus"]["configs"]} == {"prometheus", "alerts"}
    assert {c["source"] for c in services["grafana"]["configs"]} >= {"dashboard", "grafana-datasource",
                                                                    "grafana-dashboards"}
    prometheus = yaml.safe_load(configs["prometheus"]["content"])
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yaml"]
    jobs = {j["job_name"]: j["dns_sd_configs"][0]["names"] for j in prometheus["scrape_configs"]}
    # The jobs the rules select on, one per service, named like the Kubernetes workloads.
    assert jobs == {"cdrpipe-worker": ["worker"], "cdrpipe-vault": ["vault-sink", "vault-sink-pg"],
                    "cdrpipe-privacy": ["privacy"], "cdrpipe-aggregates": ["aggregates"]}
    assert all(p.startswith("127.0.0.1:") for s in ("prometheus", "grafana") for p in services[s]["ports"])


def test_k8s_runs_the_same_rules_and_dashboard_and_labels_jobs_by_workload(yaml: ModuleType) -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all(K8S_MONITORING.read_text()) if d}
    assert docs["PrometheusRule"]["spec"] == yaml.safe_load(ALERTS.read_text())
    assert json.loads(docs["ConfigMap"]["data"]["cdrpipe.json"]) == json.loads(DASHBOARD.read_text())
    monitor = docs["PodMonitor"]["spec"]
    assert monitor["jobLabel"] == "app.kubernetes.io/name"
    workloads = {d["metadata"]["name"] for path in K8S_MONITORING.parent.glob("*.yaml")
                 for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] in ("StatefulSet", "Deployment")}
    assert workloads == {"cdrpipe-worker", "cdrpipe-vault", "cdrpipe-privacy", "cdrpipe-aggregates"}
    rule_jobs = set(re.findall(r'job="(cdrpipe-[a-z]+)"', ALERTS.read_text()))
    assert rule_jobs == workloads, "the rules must select the jobs the PodMonitor produces"


def test_k8s_containers_log_json(yaml: ModuleType) -> None:
    """Every cdrpipe container in the cluster logs one JSON object a line."""
    seen = 0
    for path in K8S_MONITORING.parent.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] not in ("StatefulSet", "Deployment", "CronJob"):
                continue
            pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] if doc["kind"] == "CronJob" \
                else doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                assert env.get("CDRPIPE_LOG_FORMAT") == "json", f"{path.name}: {doc['metadata']['name']}"
                seen += 1
    assert seen >= 5
