"""deploy/grafana and deploy/prometheus read only metrics that real servers serve.

A server with ``--metrics-port`` gets a little traffic (a session with steps, a refused
Open), and a supervisor with two workers adds the supervisor's own metrics; every metric
name in the dashboard's PromQL and in the alert rules must be among the series names the
two ``/metrics`` pages serve (so ``rnnstream_steps_total``, not ``rnnstream_steps``;
``rnnstream_batch_size_bucket``, not ``rnnstream_batch_size``), with the labels it
matches on, and counters are read only through ``rate``/``increase``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import rnnstream
from tests.conftest import free_port, tiny_server_settings
from tests.deploy.promql import MetricUse, metric_uses
from tests.service.processes import REPO, start_process, stop_process

DASHBOARD = REPO / "deploy" / "grafana" / "rnnstream.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"
# Series Prometheus makes for every target itself, and the labels it adds to every series.
PROMETHEUS_MADE = frozenset({"up"})
TARGET_LABELS = frozenset({"job", "instance"})
RATE_FUNCTIONS = frozenset({"rate", "irate", "increase"})


@dataclass
class Served:
    """Series names a ``/metrics`` page serves: each one's metric type and label names."""

    types: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)

    def add(self, text: str) -> None:
        """Take in one scrape."""
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.types[sample.name] = family.type
                self.labels.setdefault(sample.name, set()).update(sample.labels)


def scrape(port: int) -> str:
    """The text of ``/metrics`` on 127.0.0.1:port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def single_server_scrape(models: Path) -> str:
    """/metrics of one server after a session with steps and a refused Open."""
    from rnnstream.server.server import BackgroundServer

    port = free_port()
    settings = tiny_server_settings(models, metrics_port=port)
    with BackgroundServer(settings) as server, rnnstream.Client(server.address) as client:
        with client.session("tiny", return_sequences=True) as session:
            session.steps(np.zeros((6, 2), dtype=np.float32))
            session.steps(np.ones((3, 2), dtype=np.float32))
        with pytest.raises(rnnstream.NotFoundError), client.session("no-such-model") as missing:
            missing.steps(np.zeros((1, 2), dtype=np.float32))
        return scrape(port)


def supervisor_scrape(models: Path) -> str:
    """/metrics of ``rnnstream serve --workers 2`` once both workers are running."""
    port = free_port()
    proc, _ = start_process(
        models, "", "--workers", "2", "--metrics-port", str(port), "--default-model", "tiny"
    )
    try:
        # start_process saw one worker serving; a worker stopped before it serves would
        # die of the signal instead of draining.
        assert proc.stderr is not None
        while "serving" not in (line := proc.stderr.readline()):
            assert line, "the supervisor exited before its second worker served"
        text = scrape(port)
        assert 'worker="1"' in text and 'worker="2"' in text, text
    finally:
        assert stop_process(proc, signal.SIGTERM) == 0
    return text


@pytest.fixture(scope="module")
def served(tiny_models: Path) -> Served:
    """What a single server and a supervisor serve, together."""
    single = single_server_scrape(tiny_models)
    assert 'rnnstream_errors_total{code="NOT_FOUND"}' in single, "the refused Open is counted"
    result = Served()
    result.add(single)
    result.add(supervisor_scrape(tiny_models))
    return result


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard as JSON."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel query and every query variable of the dashboard."""
    board = dashboard()
    found = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(SELECTOR, LABEL): the selector is the PromQL.
            query = variable["query"]
            assert query.startswith("label_values(") and query.endswith(")"), query
            selector, _, _ = query[len("label_values(") : -1].rpartition(",")
            found.append((f"variable {variable['name']!r}", selector))
    return found


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def all_uses() -> list[tuple[str, MetricUse]]:
    """(where, use) of every metric name read by the dashboard and the alert rules."""
    expressions = dashboard_expressions()
    expressions += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    return [(where, use) for where, expr in expressions for use in metric_uses(expr)]


def test_the_promql_reader_finds_names_functions_and_matched_labels() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"$job"}[$__rate_interval])))'
        " / on (job) group_left sum without (code) (b) or vector(0) > bool 2 offset 5m"
    )
    assert metric_uses(expr) == [
        MetricUse("a_bucket", "rate", frozenset({"job"})),
        MetricUse("b", "sum", frozenset()),
    ]
    assert [u.name for u in metric_uses('absent(up{job="x"}) and c_total')] == ["up", "c_total"]


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    names = {use.name for where, use in all_uses() if where.startswith(("panel", "variable"))}
    wanted = {
        "up",
        "rnnstream_sessions",  # streams (state="live") and sessions
        "rnnstream_steps_total",  # steps/s
        "rnnstream_batch_size_bucket",  # batch size
        "rnnstream_step_latency_seconds_bucket",  # latency quantiles
        "rnnstream_errors_total",  # errors by code
        "rnnstream_sessions_ended_total",  # end reasons
        "rnnstream_workers",
        "rnnstream_worker_restarts_total",
    }
    assert wanted <= names, f"not on the dashboard: {sorted(wanted - names)}"


def test_every_metric_the_dashboard_and_alerts_read_is_served(served: Served) -> None:
    missing, bad_labels = [], []
    for where, use in all_uses():
        if use.name in PROMETHEUS_MADE:
            continue
        if use.name not in served.types:
            missing.append(f"{where}: {use.name}")
            continue
        unknown = use.labels - served.labels[use.name] - TARGET_LABELS
        if unknown:
            bad_labels.append(f"{where}: {use.name} has no label {sorted(unknown)}")
    assert not missing, "not served by /metrics:\n" + "\n".join(missing)
    assert not bad_labels, "\n".join(bad_labels)


def test_counters_are_read_as_rates_and_gauges_are_not(served: Served) -> None:
    wrong = []
    for where, use in all_uses():
        kind = served.types.get(use.name)
        if kind is None:
            continue
        counting = kind in ("counter", "histogram")  # _total; _bucket, _sum, _count
        if counting != (use.function in RATE_FUNCTIONS):
            wrong.append(f"{where}: {kind} {use.name} read through {use.function or 'nothing'}")
    assert not wrong, "\n".join(wrong)


def test_the_dashboard_imports_into_any_grafana() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    seen_ids = []
    for panel in panels(board):
        seen_ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        sources = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        assert all(s == {"type": "prometheus", "uid": "${datasource}"} for s in sources), panel
        assert panel["targets"] and panel["description"], panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"
    assert len(seen_ids) == len(set(seen_ids)), "panel ids are unique"
    assert "__inputs" not in board, "no import-time inputs: the variable picks the data source"


def test_every_alert_says_what_and_how_bad() -> None:
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_promtool_accepts_the_rules_and_their_unit_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        done = subprocess.run(
            [promtool, *command], capture_output=True, text=True, timeout=120, cwd=ALERTS.parent
        )
        assert done.returncode == 0, f"promtool {' '.join(command)}:\n{done.stdout}{done.stderr}"
