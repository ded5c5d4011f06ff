"""Priority failover through the real Envoy (Backend `fallback: true`): the primary Backend is
killed under load, traffic moves to the fallback, and back when the primary returns.

One `meshgate run` for the module. The upstreams are echo processes (`meshgate.devtools.upstreams`)
so that the primary can be killed (SIGKILL, by PID) and started again on its port. Health comes
from an active HTTP health check on the rule (BackendTrafficPolicy). Every wait is bounded;
nothing asserts on speed: the failed requests of the switch-over are counted and reported, and
the assertions are on where the requests went.
"""

from __future__ import annotations

import threading

import pytest

from harness import EchoProcess, Meshgate, free_port, get_json, request, wait_until

pytestmark = pytest.mark.timeout(120)


CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: {port}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: primary}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {primary}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: standby}}
spec:
  fallback: true
  endpoints: [{{address: 127.0.0.1, port: {standby}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - backendRefs:
        - {{group: meshgate.io, kind: Backend, name: primary}}
        - {{group: meshgate.io, kind: Backend, name: standby}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: app}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}}]
  retry: {{numRetries: 2, retryOn: {{triggers: [connect-failure, reset]}}}}
  healthCheck:
    active: {{type: HTTP, http: {{path: /healthz}}, interval: 200ms, timeout: 200ms, unhealthyThreshold: 2,
             healthyThreshold: 1}}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("failover")
    primary, standby = EchoProcess("primary", free_port()), EchoProcess("standby", free_port())
    mg = None
    try:
        primary.start()
        standby.start()
        port = free_port()
        (work / "config.yaml").write_text(CONFIG.format(port=port, primary=primary.port, standby=standby.port))
        mg = Meshgate([str(work / "config.yaml")], work).start()
        mg.port, mg.primary, mg.standby = port, primary, standby
        wait_until(lambda: request(port, "/").upstream == "primary", timeout=15, what="the primary to serve")
        yield mg
    finally:
        if mg is not None:
            assert mg.stop() == 0, mg.output()
        primary.kill()
        standby.kill()


class Load:
    """Requests one after another from a thread, each recorded as (status, upstream)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.results: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = request(self.port, "/work", timeout=3)
                self.results.append((r.status, r.upstream))
            except OSError:
                self.results.append((0, None))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def mark(self) -> int:
        return len(self.results)

    def wait_for(self, upstream: str, after: int, count: int = 20, timeout: float = 20) -> int:
        """Until `count` answers in a row came from `upstream` (after index `after`); the index of the first."""
        def streak() -> int | None:
            run = 0
            for i in range(after, len(self.results)):
                run = run + 1 if self.results[i] == (200, upstream) else 0
                if run >= count:
                    return (i - count + 1,)  # a tuple: index 0 is an answer too
            return None
        try:
            return wait_until(streak, timeout=timeout, what=f"{count} answers in a row from {upstream}")[0]
        except AssertionError as e:
            from collections import Counter
            raise AssertionError(f"{e}; since then: {Counter(self.results[after:])}") from None


def test_traffic_fails_over_to_the_fallback_and_back(gw) -> None:  # noqa: ANN001
    with Load(gw.port) as load:
        start = load.wait_for("primary", 0)
        assert all(r == (200, "primary") for r in load.results[start:load.mark()]), "the fallback got traffic too early"
        killed_at = load.mark()
        gw.primary.kill()
        over = load.wait_for("standby", killed_at)
        failed_over = [r for r in load.results[killed_at:over] if r[0] != 200]
        gw.primary.start()  # same port: the health check finds it again
        back_at = load.mark()
        back = load.wait_for("primary", back_at)
        failed_back = [r for r in load.results[back_at:back] if r[0] != 200]
        end = load.mark()
    total = len(load.results)
    print(f"\nfailover: {total} requests; {len(failed_over)} failed between the kill and the switch to the "
          f"fallback ({over - killed_at} requests), {len(failed_back)} failed on the way back")
    # After the switch, the fallback serves everything; once back, the primary does.
    assert all(r == (200, "standby") for r in load.results[over:back_at])
    assert not failed_back, failed_back  # recovery loses nothing: the fallback serves until the primary is healthy
    assert all(r[0] == 200 for r in load.results[back:end])
    # Envoy saw it too: the primary's health checks failed, and the cluster has two priorities.
    stats = get_json(f"{gw.admin_url}/stats?format=json&filter=failover")["stats"]
    values = {s["name"]: s.get("value") for s in stats if "name" in s}
    failures = [v for k, v in values.items() if k.endswith("health_check.failure")]
    assert failures and failures[0] >= 2, values


def test_the_route_uses_one_cluster_with_two_priorities(gw) -> None:  # noqa: ANN001
    dump = get_json(f"{gw.admin_url}/clusters?format=json")
    [cluster] = [c for c in dump["cluster_statuses"] if "/failover-" in c["name"] and "/policy-" in c["name"]]
    priorities = {h.get("priority", 0): h["hostname"] if "hostname" in h else h["address"]["socket_address"]["port_value"]
                  for h in cluster["host_statuses"]}
    assert priorities == {0: gw.primary.port, 1: gw.standby.port}, cluster["host_statuses"]
