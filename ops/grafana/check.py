#!/usr/bin/env python3
"""Checks ops/grafana/esg-dashboard.json (or the file given as the only argument).

- It is valid JSON, a dashboard of schemaVersion 36 or later, with a `DS_PROMETHEUS` datasource
  input, and every panel and query uses the `${DS_PROMETHEUS}` datasource.
- Panel ids are unique and every panel has a position.
- Every query's `expr` references only the metrics the job exports (plus `up` from Prometheus and
  the `_bucket`/`_sum`/`_count` series of the histogram), and every one of those metrics is
  shown somewhere.
- Every `expr` parses as PromQL (`promtool check rules` on a throw-away rule file, Grafana's
  `$__rate_interval`/`$__interval`/`$__range` replaced by 5m), when promtool is installed.

The PromQL reader is deliberately small (strings, label matchers, ranges and grouping clauses are
removed, then every identifier not followed by `(` and not a keyword is a metric name); it tests
itself on known expressions before it reads the dashboard. Exit status 1 on any problem.
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HISTOGRAMS = {"esg_api_request_duration_seconds"}
METRICS = {
    "esg_run_start_timestamp_seconds",
    "esg_run_end_timestamp_seconds",
    "esg_last_successful_run_timestamp_seconds",
    "esg_run_in_progress",
    "esg_run_duration_seconds",
    "esg_runs_total",
    "esg_run_accounts",
    "esg_run_failure_ratio",
    "esg_api_requests_total",
    "esg_api_retries_total",
    "esg_rate_limiter_waits_total",
    "esg_api_in_flight",
    "esg_scorer_consumer_lag_records",
    "esg_alerts_sent_total",
    "esg_alert_failures_total",
    "up",
}
KNOWN = METRICS | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan"}
DATASOURCE_UID = "${DS_PROMETHEUS}"


def metric_names(expr):
    """The metric names an expression references."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def self_test():
    cases = {
        'sum by (outcome) (rate(esg_api_requests_total{outcome!="ok"}[5m]))':
            {"esg_api_requests_total"},
        "histogram_quantile(0.95, sum by (le) (rate(esg_api_request_duration_seconds_bucket"
        "[$__rate_interval])))": {"esg_api_request_duration_seconds_bucket"},
        "time() - max(esg_last_successful_run_timestamp_seconds) > 1e3": {
            "esg_last_successful_run_timestamp_seconds"},
        'a_total offset 1h and on (kind) group_left () b{x="or c"} * 1000': {"a_total", "b"},
        "max_over_time(esg_run_in_progress[1d:5m]) unless bogus_metric": {
            "esg_run_in_progress", "bogus_metric"},
    }
    for expr, want in cases.items():
        got = metric_names(expr)
        assert got == want, f"self-test: {expr!r} gave {sorted(got)}, expected {sorted(want)}"


def promql_problems(exprs):
    """Parse errors of the expressions, from promtool; None when promtool is not installed."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return None
    rules = [{"record": f"dashboard:expr_{i}", "expr": re.sub(r"\$__\w+", "5m", e)}
             for i, e in enumerate(exprs)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard-exprs.yml"
        path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
        out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    if out.returncode == 0:
        return []
    return [f"promtool: {line.strip()}" for line in (out.stdout + out.stderr).splitlines()
            if line.strip() and "Checking" not in line]


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def check(path):
    problems = []
    try:
        dash = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [f"{path}: {e}"]

    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append(f"schemaVersion {dash.get('schemaVersion')!r}: expected 36 or later")
    inputs = [i for i in dash.get("__inputs", []) if i.get("name") == "DS_PROMETHEUS"]
    if not inputs or inputs[0].get("type") != "datasource" or inputs[0].get("pluginId") != "prometheus":
        problems.append("__inputs has no prometheus datasource input named DS_PROMETHEUS")

    ids, used, exprs = set(), set(), []
    for p in panels(dash.get("panels", [])):
        title = p.get("title", "?")
        if p.get("id") in ids:
            problems.append(f"panel {title!r}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            problems.append(f"panel {title!r}: no gridPos")
        if p.get("type") == "row":
            continue
        targets = p.get("targets", [])
        if not targets:
            problems.append(f"panel {title!r}: no queries")
        if (p.get("datasource") or {}).get("uid") != DATASOURCE_UID:
            problems.append(f"panel {title!r}: datasource is not {DATASOURCE_UID}")
        for t in targets:
            expr = t.get("expr", "")
            if not expr.strip():
                problems.append(f"panel {title!r} query {t.get('refId')}: no expr")
                continue
            if (t.get("datasource") or {}).get("uid") != DATASOURCE_UID:
                problems.append(f"panel {title!r} query {t.get('refId')}: datasource is not {DATASOURCE_UID}")
            exprs.append(expr)
            names = metric_names(expr)
            if not names:
                problems.append(f"panel {title!r}: {expr!r} references no metric")
            for name in sorted(names - KNOWN):
                problems.append(f"panel {title!r}: {expr!r} references unknown metric {name!r}")
            used |= names

    parse = promql_problems(exprs)
    if parse is None:
        print("note: promtool not found, the exprs were not parsed as PromQL", file=sys.stderr)
    else:
        problems += parse

    shown = {n for n in used if n in METRICS} | {h for h in HISTOGRAMS if used & {h + "_bucket"}}
    for name in sorted(METRICS - shown):
        problems.append(f"metric {name!r} is on no panel")
    return problems


def main():
    self_test()
    path = sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("esg-dashboard.json")
    problems = check(path)
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"{path}: valid; every expr parses and uses only the job's metrics; every metric is shown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
