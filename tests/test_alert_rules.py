"""The shipped Prometheus alert rules (``deploy/prometheus/alerts.yml``) are valid, behave as their
unit tests say, and use only metric names labelloop exports (or redis_exporter's, said so)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
# Metrics from oliver006/redis_exporter, named as such in alerts.yml's header.
REDIS_EXPORTER = {"redis_memory_used_bytes", "redis_memory_max_bytes"}
# PromQL words that look like metric names in an expression.
PROMQL = {"sum", "max", "min", "rate", "increase", "or", "and", "unless", "by", "without", "on", "ignoring"}


def promtool() -> str:
    """promtool from PATH or next to the interpreter (``scripts/bootstrap.sh`` puts it in .venv/bin)."""
    found = shutil.which("promtool") or shutil.which("promtool", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("promtool not installed: run scripts/bootstrap.sh")
    return found


def test_promtool_checks_the_alert_rules() -> None:
    """``promtool check rules`` accepts alerts.yml and finds every rule in it."""
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_the_alert_rules_fire_as_their_unit_tests_say() -> None:
    """``promtool test rules``: each alert fires on the series it watches, and not before its ``for``."""
    done = subprocess.run(
        [promtool(), "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=60, cwd=RULES.parent
    )
    assert done.returncode == 0, done.stdout + done.stderr


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, strings and durations left out)."""
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL and not re.fullmatch(r"[0-9]+[smhdwy]?", w) and "_" in w}


def test_every_metric_the_rules_use_is_exported_by_labelloop() -> None:
    """Each metric name in alerts.yml is registered in labelloop's code (service, workers, labelloop), a counter
    by its name without ``_total``, or is one of redis_exporter's."""
    code = "\n".join(p.read_text() for d in ("service", "workers", "labelloop") for p in (ROOT / d).rglob("*.py"))
    used = set().union(
        *(metric_names(str(r["expr"])) for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"])
    )
    assert used >= {"labelloop_queue_depth", "labelloop_worker_tasks_total", "redis_memory_used_bytes"}
    missing = {
        name
        for name in used - REDIS_EXPORTER
        if f'"{name}"' not in code and f'"{name.removesuffix("_total")}"' not in code
    }
    assert not missing, f"alerts.yml uses metrics labelloop does not export: {sorted(missing)}"
