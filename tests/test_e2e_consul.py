"""End to end with Consul: a fake Consul agent (real HTTP API, ACLs on), `meshgate run` with a
Backend that names a Consul service, a real Envoy, and real HTTP upstreams registered as the
service's instances. Traffic follows registrations and health checks through EDS alone, with no
failed request once Envoy has ACKed each update, and survives (then recovers from) a Consul
restart."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from fake_consul import FakeConsul
from harness import Meshgate, RequestLoop, free_port, request, wait_until

from meshgate.devtools.upstreams import EchoServer

pytestmark = pytest.mark.timeout(120)

TOKEN = "e2e-acl-token"


class Agent:
    """The fake Consul agent and two sample instances (echo servers), on an event loop of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.consul = FakeConsul(acl_tokens={TOKEN})
        self.call(self.consul.start())
        self.instances = [EchoServer(f"web-{i}") for i in range(2)]
        for instance in self.instances:
            self.call(instance.start())

    def call(self, coroutine):  # noqa: ANN001, ANN201
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=20)

    def do(self, function, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201 - a catalog change, on the loop
        async def run():  # noqa: ANN202
            return function(*args, **kwargs)
        return self.call(run())

    def register(self, i: int) -> str:
        return self.do(self.consul.register, "web", self.instances[i].port, id=f"web-{i}", address="127.0.0.1")

    def close(self) -> None:
        for instance in self.instances:
            self.call(instance.stop())
        self.call(self.consul.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("consul")
    agent = Agent()
    http = free_port()
    config = work / "config"
    config.mkdir()
    (config / "gateway.yaml").write_text(f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: {http}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {{name: web}}
spec:
  consul: {{service: web}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - matches: [{{path: {{value: /web}}}}]
      backendRefs: [{{group: meshgate.io, kind: Backend, name: web}}]
""")
    (work / "token").write_text(TOKEN + "\n")
    # The agent's address from $CONSUL_HTTP_ADDR (HOST:PORT, as Consul's CLI takes it), the token from a file.
    mg = Meshgate([str(config)], work, env={"CONSUL_HTTP_ADDR": f"127.0.0.1:{agent.consul.port}"},
                  args=["--consul-token-file", str(work / "token")])
    try:
        mg.start()
        yield {"agent": agent, "mg": mg, "http": http}
    finally:
        try:
            code = mg.stop()
            assert code in (0, None), f"meshgate exited with {code}:\n{mg.output()[-3000:]}"
            assert "Traceback" not in mg.output(), mg.output()[-3000:]
        finally:
            agent.close()


def served_by(port: int, n: int = 10) -> Counter:
    return Counter(r.upstream if r.status == 200 else r.status for r in (request(port, "/web/x") for _ in range(n)))


def translations(mg: Meshgate) -> float:
    text = urllib.request.urlopen(f"{mg.status_url}/metrics", timeout=5).read().decode()  # noqa: S310 - loopback
    return float(re.search(r"^meshgate_translation_seconds_count (\S+)$", text, re.M).group(1))


def backend_condition(mg: Meshgate) -> dict:
    entry = next(o for o in mg.objects() if o["kind"] == "Backend" and o["name"] == "web")
    return next(c for c in entry["conditions"] if c["type"] == "EndpointsUpToDate")


def acked_after(mg: Meshgate, version: str) -> float:
    """Wait until Envoy has ACKed a config newer than `version`; the time it was seen."""
    def done() -> bool:
        status = mg.status()
        return status["config_version"] != version and all(n["in_sync"] for n in status["nodes"].values())
    wait_until(done, timeout=10, interval=0.02, what="Envoy to ACK the endpoint update")
    return time.monotonic()


def _readyz(mg) -> dict:  # noqa: ANN001
    try:
        with urllib.request.urlopen(f"{mg.status_url}/readyz", timeout=5) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def test_traffic_follows_consul(env) -> None:
    agent, mg, http = env["agent"], env["mg"], env["http"]
    assert _readyz(mg)["checks"]["dependencies"]["consul"]["ok"] is True  # synced, though nothing is registered
    # Nothing registered yet: the Backend has no endpoints (503 from Envoy), and says it's synced.
    assert request(http, "/web/x").status == 503
    agent.register(0)
    agent.register(1)
    wait_until(lambda: set(served_by(http)) == {"web-0", "web-1"}, timeout=10, what="both instances to serve")
    assert backend_condition(mg)["status"] == "True"
    before = translations(mg)

    with RequestLoop(http, "/web/x") as loop:
        # Deregister web-0: traffic only to web-1, no failed request once Envoy has the update.
        version = mg.status()["config_version"]
        agent.do(agent.consul.deregister, "web-0")
        acked = acked_after(mg, version)
        wait_until(lambda: len(loop.since(acked)) >= 20, timeout=10, what="requests after the update")
        after = loop.since(acked)
        assert {(s, u) for _, s, u in after} == {(200, "web-1")}, Counter((s, u) for _, s, u in after)

        # web-0 comes back, then web-1's health check turns critical: only web-0 serves.
        version = mg.status()["config_version"]
        agent.register(0)
        acked_after(mg, version)
        version = mg.status()["config_version"]
        agent.do(agent.consul.set_check, "web-1", "critical")
        acked = acked_after(mg, version)
        wait_until(lambda: len(loop.since(acked)) >= 20, timeout=10, what="requests after the check turned critical")
        after = loop.since(acked)
        assert {(s, u) for _, s, u in after} == {(200, "web-0")}, Counter((s, u) for _, s, u in after)
    failures = [r for r in loop.results if r[1] != 200]
    assert not failures, f"{len(failures)} of {len(loop.results)} requests failed: {failures[:5]}"
    assert translations(mg) == before, "Consul changes went out as EDS alone"

    # Consul goes away: the last endpoints keep serving, and the Backend says they are stale.
    with RequestLoop(http, "/web/x") as loop:
        agent.call(agent.consul.stop())
        wait_until(lambda: backend_condition(mg)["status"] == "False", timeout=10, what="the Backend to go stale")
        condition = backend_condition(mg)
        assert condition["reason"] == "ConsulUnreachable" and "serving the 1 endpoint(s) last seen" in condition["message"]
        # /readyz: Consul failing, the gateway degraded but ready (the last endpoints serve).
        readyz = _readyz(mg)
        consul = readyz["checks"]["dependencies"]["consul"]
        assert readyz["ready"] is True and consul["ok"] is False and consul["gating"] is False, readyz
        assert "ConsulUnreachable" in consul["message"], consul
        assert any(o["kind"] == "Backend" for o in mg.status()["objects"]), "a stale Backend is listed in /status"
        start = time.monotonic()
        wait_until(lambda: len(loop.since(start)) >= 20, timeout=10, what="requests while Consul is down")
    assert {(s, u) for _, s, u in loop.results} == {(200, "web-0")}

    # Meanwhile web-1 recovers and web-0 goes; Consul comes back with a new Raft log (lower indexes).
    agent.do(agent.consul.set_check, "web-1", "passing")
    agent.do(agent.consul.deregister, "web-0")
    agent.call(agent.consul.restart(reset_index=True))
    wait_until(lambda: set(served_by(http, 6)) == {"web-1"}, timeout=15, what="recovery after the Consul restart")
    wait_until(lambda: backend_condition(mg)["status"] == "True", timeout=10, what="the Backend to be fresh again")
    assert _readyz(mg)["checks"]["dependencies"]["consul"]["ok"] is True
    assert translations(mg) == before
