"""The Grafana dashboards and Prometheus alert rules (charts/meshgate/) against a REAL Prometheus.

One `meshgate run` serves `tests/e2e/dashboards/` (HTTP and HTTPS listeners; JWT, RBAC and
local rate-limit rules; an actively health-checked backend). The test starts the Debian
`prometheus` binary on a free loopback port, scraping the control plane's /metrics (job
`meshgate`), Envoy's stats listener (job `meshgate-envoy`) and the edge companion's /metrics (job
`meshgate-edge`) every second and loading the alert rules, sends a little load (allowed, 401,
403, 429, signed and unsigned, HTTPS) and one config change, then evaluates
every dashboard panel's query and every rule's expression through /api/v1/query:

- each panel returns data (at least one series with a number, not NaN);
- each alert says in its `when_healthy` annotation what it does while all is well: `silent` ones
  must return nothing, and Prometheus must show none pending or firing; every metric an alert
  names must exist (a typo would make an alert silent forever).

`promtool check rules` and `promtool test rules` (charts/meshgate/rules/tests/: each alert fires)
run too. Also here, since this module has the one `meshgate run`: /readyz's JSON detail of it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import ROOT, Meshgate, free_port, get_json, request, wait_until, write, write_tls_files

CONFIG = Path(__file__).parent / "e2e" / "dashboards"
DASHBOARDS = ROOT / "charts" / "meshgate" / "dashboards"
RULES = ROOT / "charts" / "meshgate" / "rules" / "meshgate.rules.yaml"
RULE_TESTS = ROOT / "charts" / "meshgate" / "rules" / "tests"
RATE_INTERVAL = "30s"  # what Grafana's $__rate_interval becomes here: >= 4 scrapes of 1 s, and the test's whole load

pytestmark = pytest.mark.skipif(not (shutil.which("prometheus") and shutil.which("promtool")),
                                reason="the Debian `prometheus` package (prometheus, promtool) is not installed: "
                                       "./scripts/setup installs it")


def jwks() -> str:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return json.dumps({"keys": [{**jwk, "kid": "k1"}]})


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("dashboards")
    config = work / "config"
    shutil.copytree(CONFIG, config)  # a copy: the test changes it
    write_tls_files(work, ["api.example.com"])
    env = {"HTTP_PORT": str(free_port()), "HTTPS_PORT": str(free_port()), "ECHO_PORT": str(free_port()),
           "TLS_DIR": str(work), "JWKS": jwks()}
    mg = Meshgate([str(config)], work, env=env).start()
    mg.http, mg.https, mg.config_dir = int(env["HTTP_PORT"]), int(env["HTTPS_PORT"]), config
    yield mg
    assert mg.stop() == 0, mg.output()


class Prometheus:
    """The real Prometheus server, started on a free loopback port with a temp config."""

    def __init__(self, work: Path, targets: dict[str, tuple[str, str]]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": job, "metrics_path": path, "static_configs": [{"targets": [address]}]}
                               for job, (address, path) in targets.items()],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), stdin=subprocess.DEVNULL)
        try:
            wait_until(self._ready, timeout=30, what="Prometheus to be ready")
        except AssertionError:
            self.stop()
            raise AssertionError(f"Prometheus did not start:\n{self.log.read_text()[-3000:]}") from None

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:  # noqa: S310 - loopback
            return resp.status == 200

    def api(self, path: str, **params: str) -> object:
        body = get_json(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def prom(gw: Meshgate, tmp_path_factory: pytest.TempPathFactory):
    envoy = urllib.parse.urlsplit(gw.status()["metrics"]["envoy"])
    edge = urllib.parse.urlsplit(gw.status()["edge"]["metrics"])
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), {
        "meshgate": (f"127.0.0.1:{gw.status_port}", "/metrics"),
        "meshgate-envoy": (envoy.netloc, envoy.path),
        "meshgate-edge": (edge.netloc, edge.path),
    })
    try:
        wait_until(lambda: {t["labels"]["job"]: t["health"] for t in server.api("targets")["activeTargets"]}
                   == {"meshgate": "up", "meshgate-envoy": "up", "meshgate-edge": "up"}, timeout=20,
                   what="the three targets scraped")
        _load(gw, server)
        yield server
    finally:
        server.stop()


def _load(gw: Meshgate, prom: Prometheus) -> None:
    """A few seconds of light traffic of every kind the panels show, and one config change (a
    reload, for the translation-time panel), until Prometheus has the latency histograms."""
    import ssl

    stop = threading.Event()
    tls = ssl.create_default_context(cafile=str(gw.workdir / "ca.pem"))
    tls.check_hostname = False  # connected by IP: the chain is still verified
    errors: list[BaseException] = []

    def traffic() -> None:
        try:
            _traffic()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    def _traffic() -> None:
        import http.client

        while not stop.is_set():
            for path, expected in (("/public/a", 200), ("/jwt/a", 401), ("/admin/a", 403)):
                assert request(gw.http, path).status == expected, path
            request(gw.http, "/limited/a")  # 200 twice, then 429 (2 an hour)
            assert request(gw.http, "/signed/a").status == 401  # the edge companion refuses: no signature
            assert _signed(gw, "/signed/b").status == 200  # and lets a signed one through
            conn = http.client.HTTPSConnection("127.0.0.1", gw.https, context=tls, timeout=5)
            try:
                conn.request("GET", "/public/tls", headers={"Host": "api.example.com"})
                assert conn.getresponse().status == 200
            finally:
                conn.close()
            stop.wait(0.05)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        write(gw.config_dir / "extra.yaml", """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: extra}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /extra}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: echo}]
""")
        wait_until(lambda: request(gw.http, "/extra/x").status == 200, timeout=15, what="the new route to be served")
        # Histograms reach Prometheus after Envoy's stats flush (5 s) and the next scrape.
        wait_until(lambda: _has_number(prom.query(_expand(
            'histogram_quantile(0.99, sum by (le) (rate(envoy_vhost_route_upstream_rq_time_bucket[$__rate_interval])))'))),
            timeout=30, what="the route latency histogram in Prometheus")
        wait_until(lambda: _has_number(prom.query(_expand(
            'sum(rate(envoy_rate_limited{envoy_local_http_ratelimit_prefix="local_rate_limit"}[$__rate_interval]))'))),
            timeout=15, what="rate-limit rejections in Prometheus")
    finally:
        stop.set()
        worker.join(10)
    assert not errors, errors


def _signed(gw: Meshgate, path: str):  # noqa: ANN202 - a harness response
    from meshgate.edge.signing import sign_request

    headers = sign_request("partner-1", b"dashboards-test-key", method="GET", path_and_query=path,
                           headers={}, signed_headers=())
    return request(gw.http, path, headers=headers)


def _expand(expr: str) -> str:
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def _has_number(result: list[dict]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


def _panels() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        out += [(f"{path.name}: {p['title']}", p) for p in dashboard["panels"] if p["type"] != "row"]
    return out


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


# -- the files themselves ----------------------------------------------------------------------


def test_dashboards_are_grafana_dashboards() -> None:
    paths = sorted(DASHBOARDS.glob("*.json"))
    assert [p.name for p in paths] == ["meshgate-control-plane.json", "meshgate-overview.json"]
    for path in paths:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
        (var,) = dashboard["templating"]["list"]
        assert (var["name"], var["type"], var["query"]) == ("datasource", "datasource", "prometheus")
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in dashboard["panels"]:
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    tests = list(RULE_TESTS.glob("*.yaml"))
    run = subprocess.run(["promtool", "test", "rules", *map(str, tests)], capture_output=True, text=True, timeout=60,
                         cwd=RULE_TESTS)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr
    # Every alert has a unit test that expects it to fire.
    fired = set()
    for test in tests:
        for case in yaml.safe_load(test.read_text())["tests"]:
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert alerts == fired, alerts ^ fired


# -- against the real Prometheus ---------------------------------------------------------------


@pytest.mark.parametrize("name", [name for name, _ in _panels()])
def test_every_panel_returns_data(prom: Prometheus, name: str) -> None:
    panel = dict(_panels())[name]
    for target in panel["targets"]:
        result = prom.query(_expand(target["expr"]))
        assert _has_number(result), f"{name} [{target['refId']}] returned no data: {target['expr']}\n{result}"


def test_every_rule_is_healthy_and_silent_alerts_are_silent(prom: Prometheus) -> None:
    names = set(prom.api("label/__name__/values"))
    for rule in _rules():
        assert "alert" in rule, f"{rule}: only alerts here; a recording rule would need to return data"
        assert rule["annotations"].get("when_healthy") == "silent", rule["alert"]
        assert prom.query(rule["expr"]) == [], f"{rule['alert']} is not silent while healthy"
        # Every metric it names exists (a typo would keep it silent forever).
        bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)|\{[^}]*\}", " ", rule["expr"])  # label names out
        for metric in set(re.findall(r"\b(?:(?:meshgate|envoy)_[a-z0-9_]+|up)\b", bare)):
            assert metric in names, f"{rule['alert']}: no series named {metric}"
        for selector in re.findall(r"\{__name__=~\"[^\"]+\"\}", rule["expr"]):
            assert prom.query(selector), f"{rule['alert']}: nothing matches {selector}"
    # Prometheus itself evaluated them all without error, and none is pending or firing.
    wait_until(lambda: all(r.get("lastEvaluation", "").startswith("2") for r in
                           (x for g in prom.api("rules")["groups"] for x in g["rules"])), timeout=10, what="rules evaluated")
    loaded = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert {r["name"] for r in loaded} == {r["alert"] for r in _rules()}
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]
    assert prom.api("alerts")["alerts"] == []


# -- /readyz of a running `meshgate run` -------------------------------------------------------


def test_readyz_details_each_part(gw: Meshgate) -> None:
    with urllib.request.urlopen(f"{gw.status_url}/readyz", timeout=5) as resp:  # noqa: S310 - loopback
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
        body = json.loads(resp.read())
    checks = body["checks"]
    assert body["ready"] is True
    assert checks["config"]["ok"] is True and checks["config"]["state"] == "valid"
    assert checks["config"]["version"] == gw.status()["config_version"]
    # Envoy, and the edge companion (it takes its config over ADS as a node of group meshgate-edge)
    nodes = {n["node_id"]: n for n in checks["envoys"]["nodes"]}
    assert set(nodes) == {"edge-local", "meshgate-edge-local"}, nodes
    node = nodes["edge-local"]
    assert node["live"] is True and node["in_sync"] is True and node["node_id"] == "edge-local"
    assert checks["envoys"]["local"] == {"pid": gw.envoy_pid, "live": True, "restarts": 0}
    # A signed route: the companion is in use; and each Backend's health as Envoy sees it.
    assert set(checks["dependencies"]) == {"edge_companion", "upstreams"}
    assert checks["dependencies"]["edge_companion"]["ok"] is True, checks["dependencies"]
    assert all(c["healthy"] >= 1 for c in checks["dependencies"]["upstreams"]["clusters"].values()), checks
    with urllib.request.urlopen(f"{gw.status_url}/healthz", timeout=5) as resp:  # noqa: S310
        assert resp.read() == b"ok\n"


def test_objects_metric_counts_by_status(gw: Meshgate) -> None:
    text = urllib.request.urlopen(f"{gw.status_url}/metrics", timeout=5).read().decode()  # noqa: S310
    assert re.search(r'^meshgate_objects\{kind="HTTPRoute",status="ok"\} [12]\.0$', text, re.M), text
    assert 'meshgate_objects{kind="HTTPRoute",status="problem"} 0.0' in text
    assert "meshgate_xds_nacks_outstanding 0.0" in text
