"""Metrics, traces and access-log redaction, through the real Envoy.

One `meshgate run` serves `tests/e2e/observability/`, with Envoy's stats listener on a free port
and tracing sent to an OTLP receiver started here (`OTEL_EXPORTER_OTLP_ENDPOINT`): a real gRPC
server implementing OpenTelemetry's `TraceService`, built from the `opentelemetry-proto` package.
Prometheus output is read with prometheus_client's text parser, and linted with `promtool` where
the Debian `prometheus` package is installed (scripts/setup installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Meshgate, free_port, request, wait_until
from otlp_receiver import OtlpReceiver, otlp_receiver
from otlp_receiver import attributes as _attributes

CONFIG = Path(__file__).parent / "e2e" / "observability"
HOST = "api.example.com"
SIGNING_KEY = "k-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def otlp():
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver):
    work = tmp_path_factory.mktemp("observability")
    env = {"HTTP_PORT": str(free_port()), "ECHO_PORT": str(free_port()), "SIGNING_KEY": SIGNING_KEY,
           "PARTNER_PORT": str(free_port()), "OTLP_PORT": str(otlp.port),
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp.port}", "OTEL_SERVICE_NAME": "meshgate-test",
           "OTEL_METRIC_EXPORT_INTERVAL": "500"}  # the Python processes' metric pushes, every 0.5 s
    mg = Meshgate([str(CONFIG)], work, env=env).start()
    mg.http = int(env["HTTP_PORT"])
    mg.access_log = work / "state" / "access.log"
    mg.edge_log = work / "state" / "edge.log"
    mg.partner = int(env["PARTNER_PORT"])
    mg.config_dir = CONFIG
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
    """Sum of a per-route series for one rule of HTTPRoute `app` on the api.example.com virtual host."""
    want = {"envoy_route": f"httproute/default/app/rule/{rule}", **labels}
    return sum(v for (n, ls), v in samples.items()
               if n == name and want.items() <= dict(ls).items()
               and re.fullmatch(r"default/edge/\d+/api_example_com", dict(ls).get("envoy_virtual_host", "")))


# -- metrics ---------------------------------------------------------------------------------------


def test_summary_and_status_name_every_metrics_endpoint(gw: Meshgate) -> None:
    metrics = gw.status()["metrics"]
    assert set(metrics) == {"control_plane", "envoy", "edge_companion"}  # a signed route: the companion runs
    assert metrics["control_plane"] == f"{gw.status_url}/metrics"
    assert metrics["envoy"].startswith("http://127.0.0.1:") and metrics["envoy"].endswith("/stats/prometheus")
    assert metrics["edge_companion"] == gw.status()["edge"]["metrics"]
    summary = gw.stdout_path.read_text()
    assert (f"metrics:    {metrics['control_plane']}  (control plane), {metrics['envoy']}  (Envoy), "
            f"{metrics['edge_companion']}  (edge companion)") in summary
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
    samples = series(text)
    names = {n for n, _ in samples}
    assert {"meshgate_xds_pushes_total", "meshgate_xds_acks_total", "meshgate_config_reloads_total"} <= names
    # Push latency per xDS type: from the response's write to the Envoy's ACK, one per ACKed push.
    for kind in ("Listener", "Cluster", "RouteConfiguration", "ClusterLoadAssignment"):
        count = samples[("meshgate_xds_push_seconds_count", (("type", kind),))]
        assert count >= 1 and samples[("meshgate_xds_push_seconds_sum", (("type", kind),))] > 0, kind
        assert count <= sum(v for (n, ls), v in samples.items() if n == "meshgate_xds_acks_total" and ls == (("type", kind),))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_checks_both(gw: Meshgate) -> None:
    def check(url: str) -> subprocess.CompletedProcess:
        return subprocess.run(["promtool", "check", "metrics"], input=fetch(url)[1], capture_output=True,
                              text=True, timeout=30)

    metrics = gw.status()["metrics"]
    for url in (metrics["control_plane"], metrics["edge_companion"]):  # meshgate's own: lint-clean
        own = check(url)
        assert own.returncode == 0 and not (own.stdout + own.stderr).strip(), (url, own.stdout + own.stderr)
    # Envoy's names are Envoy's (counters without `_total`, no HELP, `_ms` units): promtool lints
    # them, but the page parses (a parse error is reported as "error while linting: ...").
    envoy = check(metrics["envoy"])
    output = envoy.stdout + envoy.stderr
    assert "error while linting" not in output and "parsing error" not in output, output


# -- traces -------------------------------------------------------------------------------------------


def _span_of(otlp: OtlpReceiver, trace_id: str):
    """The span Envoy exported for the trace (bounded wait: Envoy flushes spans every 5 s)."""
    return wait_until(lambda: next((pair for pair in otlp.spans() if pair[1].trace_id.hex() == trace_id), None),
                      timeout=20, what=f"a span of trace {trace_id}")


def test_a_request_yields_a_span_whose_trace_the_upstream_saw(gw: Meshgate, otlp: OtlpReceiver) -> None:
    r = request(gw.http, "/a/traced", host=HOST)
    assert r.status == 200
    traceparent = r.json["headers"]["traceparent"]  # W3C: 00-TRACEID-PARENTID-FLAGS
    version, trace_id, parent_id, flags = traceparent.split("-")
    assert version == "00" and len(trace_id) == 32 and flags == "01"
    resource, span = _span_of(otlp, trace_id)
    assert resource["service.name"] == "meshgate-test"
    assert span.span_id.hex() == parent_id  # the upstream's parent is Envoy's server span
    attributes = _attributes(span)
    assert attributes["http.status_code"] == "200"
    assert attributes["meshgate.route"] == "httproute/default/app/rule/0/match/0"
    assert attributes["http.url"] == f"http://{HOST}/a/traced"
    assert attributes["upstream_cluster"] == "backend/default/echo"
    assert attributes["guid:x-request-id"] == r.json["headers"]["x-request-id"]


def test_an_incoming_traceparent_is_continued(gw: Meshgate, otlp: OtlpReceiver) -> None:
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    r = request(gw.http, "/b/continued", host=HOST, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert r.json["headers"]["traceparent"].split("-")[1] == trace_id
    _, span = _span_of(otlp, trace_id)
    assert span.parent_span_id.hex() == parent


def test_a_gateways_envoy_proxy_sets_its_own_tracer(gw: Meshgate, otlp: OtlpReceiver) -> None:
    """The partner Gateway's EnvoyProxy: its spans carry its service name and custom tags (a
    literal, a request header), beside the other Gateway's spans under the environment's name."""
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    r = request(gw.partner, "/p", headers={"traceparent": f"00-{trace_id}-{parent}-01", "x-tenant": "acme"})
    assert r.status == 200 and r.json["headers"]["traceparent"].split("-")[1] == trace_id
    resource, span = _span_of(otlp, trace_id)
    assert resource["service.name"] == "partner-gateway"
    tags = _attributes(span)
    assert tags["env"] == "production" and tags["tenant"] == "acme", tags
    assert tags["meshgate.route"].startswith("httproute/default/partner/")
    # A request without the header gets the tag's default.
    other = uuid.uuid4().hex
    assert request(gw.partner, "/p", headers={"traceparent": f"00-{other}-{parent}-01"}).status == 200
    assert _attributes(_span_of(otlp, other)[1])["tenant"] == "none"


def test_status_and_summary_name_the_trace_exporter(gw: Meshgate, otlp: OtlpReceiver) -> None:
    endpoint = f"http://127.0.0.1:{otlp.port}"
    assert gw.status()["tracing"] == {"enabled": True, "exporter": "otlp-grpc", "endpoint": endpoint,
                                      "sampling_percent": 100.0, "service_name": "meshgate-test"}
    assert f"traces:     OTLP/gRPC to {endpoint}  (100% of requests, service.name meshgate-test)" in gw.stdout_path.read_text()


# -- redaction ----------------------------------------------------------------------------------------

SECRET_HEADERS = {
    "authorization": "Bearer SECRET-AUTHORIZATION",
    "proxy-authorization": "Basic SECRET-PROXY-AUTHORIZATION",
    "cookie": "session=SECRET-COOKIE",
    "x-api-key": "SECRET-X-API-KEY",
    "api-key": "SECRET-API-KEY",
}
SECRET_QUERY = {"token": "SECRET-TOKEN", "api_key": "SECRET-QUERY-API-KEY", "access_token": "SECRET-ACCESS-TOKEN"}


def test_credentials_are_never_in_the_access_log_nor_in_spans(gw: Meshgate, otlp: OtlpReceiver) -> None:
    query = "&".join(f"{k}={v}" for k, v in SECRET_QUERY.items())
    r = request(gw.http, f"/cookie/x?{query}&page=2", host=HOST, headers=SECRET_HEADERS)
    assert r.status == 200 and r.headers["set-cookie"].startswith("sid=SECRET-SET-COOKIE")
    assert r.json["headers"]["authorization"] == SECRET_HEADERS["authorization"]  # still forwarded upstream
    request_id, trace_id = r.json["headers"]["x-request-id"], r.json["headers"]["traceparent"].split("-")[1]

    line = wait_until(lambda: next((json.loads(l) for l in gw.access_log.read_text().splitlines()
                                    if json.loads(l)["request_id"] == request_id), None),
                      timeout=10, what="the request's access log line")
    assert line["trace_id"] == trace_id  # beside the request id
    assert line["path"] == "/cookie/x"  # without the query string
    _span_of(otlp, trace_id)

    secrets = [*SECRET_HEADERS.values(), *SECRET_QUERY.values(), "SECRET-SET-COOKIE"]
    secrets += [v.split(" ", 1)[-1].split("=", 1)[-1] for v in SECRET_HEADERS.values()]  # the bare values too
    log = gw.access_log.read_text()
    spans = [span.SerializeToString() + str(resource).encode() for resource, span in otlp.spans()]
    for secret in secrets:
        assert secret not in log, f"{secret} in the access log"
        assert not [s for s in spans if secret.encode() in s], f"{secret} in a span"


def test_the_control_plane_traces_its_reloads_and_each_push_until_envoy_acks(gw: Meshgate, otlp: OtlpReceiver) -> None:
    """Beside Envoy's request spans, the control plane reports (as service NAME-control-plane)
    one span per reload and one per xDS response, lasting until that Envoy ACKed it."""
    def ours(name: str) -> list:
        return [(r, s) for r, s in otlp.spans() if s.name == name]

    pushes = wait_until(lambda: (lambda p: p if {_attributes(s)["meshgate.xds_type"] for _, s in p} >= {
        "Listener", "Cluster", "RouteConfiguration", "ClusterLoadAssignment"} else None)(ours("meshgate.xds.push")),
        timeout=10, what="push spans of every xDS type")
    [(resource, reload)] = ours("meshgate.reload")[:1]
    assert resource["service.name"] == "meshgate-test-control-plane"
    attributes = _attributes(reload)
    assert attributes["meshgate.outcome"] == "accepted" and attributes["meshgate.problems"] == "0", attributes
    assert reload.end_time_unix_nano > reload.start_time_unix_nano
    status = json.loads(fetch(f"{gw.status_url}/status")[1])
    for _, span in pushes:
        a = _attributes(span)
        # Envoy, and the edge companion (it takes its config over ADS too)
        assert a["meshgate.result"] == "ACK" and a["meshgate.node"] in ("edge-local", "meshgate-edge-local"), a
        assert int(a["meshgate.resources"]) >= 1 or a["meshgate.xds_type"] == "RateLimitConfig", a  # none here
        assert span.start_time_unix_nano >= reload.start_time_unix_nano
        assert span.end_time_unix_nano > span.start_time_unix_nano  # written, then ACKed
        # One trace per change: each push is a child of the reload that produced its config.
        assert span.trace_id == reload.trace_id and span.parent_span_id == reload.span_id
    assert {_attributes(s)["meshgate.node"] for _, s in pushes} == {"edge-local", "meshgate-edge-local"}
    assert status["config_version"] == attributes["meshgate.snapshot_version"], status


def test_envoy_pushes_its_metrics_over_otlp(gw: Meshgate, otlp: OtlpReceiver) -> None:
    """The same OTEL_EXPORTER_OTLP_ENDPOINT makes `meshgate run`'s Envoy push its stats over OTLP
    (the OpenTelemetry stat sink, every 5 s): per-cluster request counters with the cluster name
    as an attribute, cumulative like Prometheus'."""
    for _ in range(3):
        assert request(gw.http, "/a/metrics", host=HOST).status == 200

    def upstream_requests():
        for metric in otlp.metrics.metrics():
            if metric.name == "cluster.upstream_rq_total":
                for point in metric.sum.data_points:
                    attributes = {a.key: a.value.string_value for a in point.attributes}
                    if attributes.get("envoy.cluster_name") == "backend/default/echo" and point.as_int >= 3:
                        return metric, point
        return None

    metric, point = wait_until(upstream_requests, timeout=20, what="the echo cluster's request counter over OTLP")
    assert metric.sum.is_monotonic and metric.sum.aggregation_temporality == 2  # CUMULATIVE


# -- the edge companion in the trace; the Python processes' metrics over OTLP -----------------------

def _trace_spans(otlp: OtlpReceiver, trace_id: str) -> list:
    return [(resource["service.name"], span) for resource, span in otlp.spans() if span.trace_id.hex() == trace_id]


def test_the_edge_companion_continues_envoys_trace_and_logs_its_id(gw: Meshgate, otlp: OtlpReceiver) -> None:
    """A request to a signed route, refused by the edge companion: the companion's span is a child
    of Envoy's span for the ext_authz call, in the client's trace; the companion's log line for
    the refusal names that trace id and Envoy's request id, as Envoy's access log does."""
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    r = request(gw.http, "/signed/x", host=HOST, headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert r.status == 401, (r.status, r.body)

    def all_three():
        spans = _trace_spans(otlp, trace_id)
        edge = [span for service, span in spans if service == "meshgate-test-edge"]
        return (spans, edge[0]) if edge and len(spans) >= 3 else None

    spans, check = wait_until(all_three, timeout=20, what="Envoy's and the companion's spans of one trace")
    envoy = {span.span_id: span for service, span in spans if service == "meshgate-test"}
    assert check.name == "meshgate.edge.check"
    authz = envoy.get(check.parent_span_id)  # Envoy's client span of the Check call is the parent
    assert authz is not None and "Check" in authz.name, [s.name for s in envoy.values()]
    assert _attributes(check)["meshgate.decision"] == "deny"
    assert _attributes(check)["meshgate.reason"] == "missing-signature"
    assert check.start_time_unix_nano >= authz.start_time_unix_nano

    def refusal():
        for line in gw.edge_log.read_text().splitlines():
            if line.startswith("{") and trace_id in line:
                return json.loads(line)
        return None

    logged = wait_until(refusal, timeout=10, what="the companion's log line of the refusal")
    assert logged["msg"] == "request refused" and logged["trace_id"] == trace_id, logged
    request_id = _attributes(check)["guid:x-request-id"]
    assert logged["x_request_id"] == request_id and request_id
    access = wait_until(lambda: next((json.loads(line) for line in gw.access_log.read_text().splitlines()
                                      if trace_id in line), None), timeout=10, what="the access-log line")
    assert access["request_id"] == request_id, access


def _point_values(metric) -> list[tuple[dict[str, str], float]]:
    kind = metric.WhichOneof("data")
    points = getattr(metric, kind).data_points
    return [({a.key: a.value.string_value for a in p.attributes},
             p.count if kind == "histogram" else (p.as_double or p.as_int)) for p in points]


def test_the_control_plane_and_the_companion_push_their_metrics_over_otlp(gw: Meshgate, otlp: OtlpReceiver) -> None:
    """The same metrics /metrics serves, pushed over OTLP by each Python process: counters as
    cumulative monotonic sums, histograms with their buckets, process memory as a gauge."""
    assert request(gw.http, "/signed/y", host=HOST).status == 401

    def latest(service: str, name: str):
        found = [m for m in otlp.metrics.metrics(service) if m.name == name]
        return found[-1] if found else None

    reloads = wait_until(lambda: latest("meshgate-test-control-plane", "meshgate_config_reloads"), timeout=10,
                         what="the control plane's reload counter over OTLP")
    assert reloads.sum.is_monotonic and reloads.sum.aggregation_temporality == 2  # CUMULATIVE
    assert ({"result": "success"}, 1.0) in [(a, v) for a, v in _point_values(reloads)] or any(
        v >= 1 for _, v in _point_values(reloads)), _point_values(reloads)
    translation = latest("meshgate-test-control-plane", "meshgate_translation_seconds")
    assert translation.WhichOneof("data") == "histogram"
    [point] = translation.histogram.data_points
    assert point.count >= 1 and len(point.bucket_counts) == len(point.explicit_bounds) + 1
    assert sum(point.bucket_counts) == point.count
    memory = latest("meshgate-test-control-plane", "process_resident_memory_bytes")
    assert memory.WhichOneof("data") == "gauge" and _point_values(memory)[0][1] > 10e6

    def denied():
        metric = latest("meshgate-test-edge", "meshgate_edge_decisions")
        if metric is None:
            return None
        return next((v for a, v in _point_values(metric) if a.get("decision") == "deny"
                     and a.get("reason") == "missing-signature" and v >= 2), None)

    wait_until(denied, timeout=10, what="the companion's decision counter over OTLP")
