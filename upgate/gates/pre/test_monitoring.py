"""Pre-gate: monitoring and the components the service leans on answer (runs again as a post-gate).

Redis answers PING and reports memory and clients; Prometheus is ready and evaluates its query; the
app's /metrics parses as Prometheus text and exposes every metric named in `[monitoring] required_metrics`
(not asked for: skipped, an app that serves no metrics is not blocked).
"""

from __future__ import annotations

import pytest

from upgate.checks.monitoring import check_metrics, check_prometheus, check_redis

pytestmark = pytest.mark.upgate_component("monitoring")


@pytest.mark.upgate_component("monitoring.redis")
def test_redis_answers(redis_url, config, evidence):
    result = check_redis(redis_url, timeout_s=config.monitoring.timeout_s)
    evidence("redis", result)
    assert result.ok, result.summary


@pytest.mark.upgate_component("monitoring.prometheus")
def test_prometheus_answers(prometheus_url, monitoring, evidence):
    result = check_prometheus(prometheus_url, query=monitoring.prometheus_query, timeout_s=monitoring.timeout_s)
    evidence("prometheus", result)
    assert result.ok, result.summary


@pytest.fixture(scope="session")
def required_metrics(config, app) -> list[str]:
    """The metric names `[monitoring] required_metrics` asks the app's /metrics for; an app that serves no
    metrics is not gated on them."""
    if config.monitoring is None or not config.monitoring.required_metrics:
        pytest.skip("app metrics not asked for ([monitoring] required_metrics)")
    return list(config.monitoring.required_metrics)


@pytest.mark.upgate_component("monitoring.metrics", "app")
def test_app_metrics_parse_with_required_names(app, required_metrics, evidence):
    result = check_metrics(app.url(app.metrics_path), required_metrics, timeout_s=app.timeout_s)
    evidence("metrics", result)
    assert result.ok, result.summary
