"""Metrics, traces and access-log redaction, through the real Envoy.

One `meshgate run` serves `tests/e2e/observability/`, with Envoy's stats listener on a free port
and tracing sent to an OTLP receiver started here (`OTEL_EXPORTER_OTLP_ENDPOINT`): a real gRPC
server implementing OpenTelemetry's `TraceService`, built from the `opentelemetry-proto` package.
Prometheus output is read with prometheus_client's text parser, and linted with `promtool` where
the Debian `prometheus` package is installed (scripts/setup installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Meshgate, free_port, request, wait_until

CONFIG = Path(__file__).parent / "e2e" / "observability"
HOST = "api.example.com"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("observability")
    env = {"HTTP_PORT": str(free_port()), "ECHO_PORT": str(free_port())}
    mg = Meshgate([str(CONFIG)], work, env=env).start()
    mg.http = int(env["HTTP_PORT"])
    yield mg
    assert mg.stop() == 0, mg.output()


def fetch(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as resp:  # noqa: S310
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, parsed by prometheus_client: {(name, labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def envoy_metrics(gw: Meshgate) -> str:
    code, body = fetch(gw.status()["metrics"]["envoy"])
    assert code == 200
    return body


def route_stat(samples, name: str, rule: int, **labels: str) -> float:
    want = {"envoy_virtual_host": f"default/edge/{HTTP_PORT(samples)}/api_example_com",
            "envoy_route": f"httproute/default/app/rule/{rule}", **labels}
    return sum(v for (n, ls), v in samples.items() if n == name and want.items() <= dict(ls).items())


def HTTP_PORT(samples) -> str:  # noqa: N802 - the listener's port, as Envoy's labels show it
    hosts = {dict(ls).get("envoy_virtual_host", "") for (_, ls) in samples}
    return next(h.split("/")[2] for h in hosts if h.endswith("/api_example_com"))


# -- metrics ---------------------------------------------------------------------------------------


def test_summary_and_status_name_every_metrics_endpoint(gw: Meshgate) -> None:
    metrics = gw.status()["metrics"]
    assert set(metrics) == {"control_plane", "envoy"}
    assert metrics["control_plane"] == f"{gw.status_url}/metrics"
    assert metrics["envoy"].startswith("http://127.0.0.1:") and metrics["envoy"].endswith("/stats/prometheus")
    summary = gw.stdout_path.read_text()
    assert f"metrics:    {metrics['control_plane']}  (control plane), {metrics['envoy']}  (Envoy)" in summary
    for url in metrics.values():
        assert fetch(url)[0] == 200


def test_stats_listener_serves_metrics_and_ready_only(gw: Meshgate) -> None:
    base = gw.status()["metrics"]["envoy"].removesuffix("/stats/prometheus")
    assert fetch(f"{base}/ready") == (200, "LIVE\n")
    assert fetch(f"{base}/stats/prometheus?usedonly")[0] == 200
    # The admin interface's other pages (config, state changes) are not reachable here.
    for path in ("/config_dump", "/stats", "/clusters", "/listeners"):
        assert fetch(f"{base}{path}")[0] == 404, path
    for path in ("/quitquitquit", "/healthcheck/fail", "/logging?level=trace"):
        assert fetch(f"{base}{path}", method="POST")[0] == 404, path
    assert fetch(f"{gw.admin_url}/ready")[0] == 200  # Envoy still serves (nothing above reached admin)


def test_per_rule_statistics_with_bounded_labels(gw: Meshgate) -> None:
    for path in ("/a/1", "/b/2", "/c/3"):
        assert request(gw.http, path, host=HOST).status == 200
    # Counters are live; histograms appear once Envoy's stats flush (every 5 s) merged them.
    samples = wait_until(lambda: (s := series(envoy_metrics(gw)))
                         and route_stat(s, "envoy_vhost_route_upstream_rq_time_count", 1) >= 1 and s,
                         timeout=20, what="per-route latency histogram")
    # (The parser names counter samples NAME_total, as OpenMetrics does.)
    assert route_stat(samples, "envoy_vhost_route_upstream_rq_total", 0, envoy_response_code="200") >= 2  # /a and /b
    assert route_stat(samples, "envoy_vhost_route_upstream_rq_total", 1, envoy_response_code="200") >= 1
    assert route_stat(samples, "envoy_vhost_route_upstream_rq_time_count", 0) >= 1
    # Upstream latency per cluster, as before.
    assert any(n == "envoy_cluster_upstream_rq_time_count" and dict(ls).get("envoy_cluster_name") == "backend/default/echo"
               for n, ls in samples)
    # A hostname's dots never leak into metric names (a new metric per hostname).
    assert not [n for n, _ in samples if "example" in n]

    # Paths and query strings are not labels: a hundred distinct ones add no series.
    before = set(series(envoy_metrics(gw)))
    tokens = [uuid.uuid4().hex for _ in range(100)]
    for token in tokens:
        assert request(gw.http, f"/c/{token}?q={token}", host=HOST).status == 200
    text = envoy_metrics(gw)
    assert not any(token in text for token in tokens)
    assert set(series(text)) - before == set()


def test_meshgate_metrics_parse(gw: Meshgate) -> None:
    code, text = fetch(gw.status()["metrics"]["control_plane"])
    assert code == 200
    names = {n for n, _ in series(text)}
    assert {"meshgate_xds_pushes_total", "meshgate_xds_acks_total", "meshgate_config_reloads_total"} <= names


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_checks_both(gw: Meshgate) -> None:
    def check(url: str) -> subprocess.CompletedProcess:
        return subprocess.run(["promtool", "check", "metrics"], input=fetch(url)[1], capture_output=True,
                              text=True, timeout=30)

    metrics = gw.status()["metrics"]
    own = check(metrics["control_plane"])
    assert own.returncode == 0 and not (own.stdout + own.stderr).strip(), own.stdout + own.stderr
    # Envoy's names are Envoy's (counters without `_total`, no HELP, `_ms` units): promtool lints
    # them, but the page parses (a parse error is reported as "error while linting: ...").
    envoy = check(metrics["envoy"])
    output = envoy.stdout + envoy.stderr
    assert "error while linting" not in output and "parsing error" not in output, output
