"""BackendTrafficPolicy `rateLimit.global` in mode Exact through real parts: two `meshgate run`
(two Envoys, each with its own edge companion, as two replicas of a Gateway) and one real Redis
(Debian `redis-server`, started here on a free loopback port). Envoy's `ratelimit` filter asks its
companion per request (`RateLimitService/ShouldRateLimit`); the companions count in Redis, so a
limit holds across both Envoys. Over the limit: 429 with `retry-after` and the draft-03
`x-ratelimit-*` headers. Redis or the companion down: exactly the configured failure mode, at once
(let through by default; 503 with `failClosed`), never a hung request.

One Redis and two meshgates for the module; the tests that stop Redis and the companion run last.
Both trace to an OTLP receiver started here: the companion's spans continue Envoy's traces.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from harness import Meshgate, pid_alive, request, wait_until
from otlp_receiver import OtlpReceiver, otlp_receiver
from otlp_receiver import attributes as _attributes
from redis_server import RedisServer, gateways_sharing, redis_server  # noqa: F401 - the module fixture

CONFIG = Path(__file__).parent / "e2e" / "global_ratelimit"


@pytest.fixture(scope="module")
def otlp():
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def gws(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, otlp: OtlpReceiver):
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{otlp.port}", "OTEL_SERVICE_NAME": "rl",
           "MESHGATE_DEPENDENCY_CHECK_INTERVAL": "0.2"}  # /readyz's view of Redis follows quickly
    yield from gateways_sharing(redis_server, CONFIG, tmp_path_factory, "global-rl", env)


def _fresh_window(seconds: int = 60, margin: float = 6.0) -> None:
    """Fixed windows restart on the epoch's minute: don't let a sequence straddle one."""
    left = seconds - time.time() % seconds
    if left < margin:
        time.sleep(left + 0.05)


def _login(mg: Meshgate, user: str | None):
    return request(mg.port, "/login", headers={"x-user": user} if user else {}, timeout=5)


def _metrics(mg: Meshgate) -> str:
    with urllib.request.urlopen(mg.status()["edge"]["metrics"], timeout=5) as r:
        return r.read().decode()


def test_a_limit_per_user_holds_across_two_envoys(gws: list[Meshgate]) -> None:
    a, b = gws
    _fresh_window()
    user = f"alice-{os.getpid()}"
    passed = [_login((a, b)[i % 2], user) for i in range(5)]  # alternately through each Envoy
    for r in passed:
        assert r.status == 200, (r.status, r.body)
        assert r.upstream is not None
    assert [int(r.headers["x-ratelimit-remaining"]) for r in passed] == [4, 3, 2, 1, 0]
    # The closest limit first, then each rule's quota and window; no route names.
    assert passed[0].headers["x-ratelimit-limit"] == "5, 5;w=60, 1000;w=60", passed[0].headers
    for mg in (a, b):  # the 6th and 7th, through either Envoy: refused
        r = _login(mg, user)
        assert r.status == 429, (r.status, r.body)
        assert r.upstream is None
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert 0 <= int(r.headers["x-ratelimit-reset"]) <= 60
    # Another user has a count of their own; a request without x-user only meets the route's rule.
    assert _login(b, f"bob-{os.getpid()}").status == 200
    assert _login(a, None).status == 200


def test_the_companions_rate_limit_span_continues_envoys_trace(gws: list[Meshgate], otlp: OtlpReceiver) -> None:
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    r = request(gws[0].port, "/login", headers={"x-user": f"dave-{os.getpid()}",
                                                "traceparent": f"00-{trace_id}-{parent}-01"}, timeout=5)
    assert r.status == 200, (r.status, r.body)

    def spans():
        found = [(resource["service.name"], span) for resource, span in otlp.spans() if span.trace_id.hex() == trace_id]
        return found if any(service == "rl-edge" for service, _ in found) and len(found) >= 3 else None

    found = wait_until(spans, timeout=20, what="Envoy's and the companion's spans of the traced request")
    [check] = [span for service, span in found if service == "rl-edge"]
    envoy = {span.span_id: span for service, span in found if service == "rl"}
    assert check.name == "meshgate.edge.rate_limit" and check.parent_span_id in envoy, [s.name for s in envoy.values()]
    assert _attributes(check)["meshgate.result"] == "ok"
    # A caller's unsampled trace (flags 00) is continued unsampled: Envoy and the companion
    # export nothing for it. Checked after a later sampled request's spans arrived (the companion
    # exports in order, every second), so no fixed sleep.
    quiet, later = uuid.uuid4().hex, uuid.uuid4().hex
    assert request(gws[0].port, "/login", headers={"traceparent": f"00-{quiet}-{parent}-00"}, timeout=5).status == 200
    assert request(gws[0].port, "/login", headers={"traceparent": f"00-{later}-{parent}-01"}, timeout=5).status == 200
    wait_until(lambda: [s for r, s in otlp.spans() if s.trace_id.hex() == later and r["service.name"] == "rl-edge"],
               timeout=20, what="the later sampled request's companion span")
    assert not [span for _, span in otlp.spans() if span.trace_id.hex() == quiet]


def test_counters_are_fixed_windows_in_redis(gws: list[Meshgate], redis_server: RedisServer) -> None:
    _fresh_window()
    user = f"carol-{os.getpid()}"
    assert _login(gws[0], user).status == 200
    with redis_server.client() as c:
        keys = [k.decode() for k in c.keys("meshgate:rl:*")]
        mine = [k for k in keys if user in k]
        assert len(mine) == 1, keys
        window = int(mine[0].rsplit(":", 1)[1])
        assert window % 60 == 0 and 0 <= time.time() - window < 60  # the minute it started
        assert int(c.get(mine[0])) == 1
        assert 0 < c.ttl(mine[0]) <= 60


def test_an_exact_header_match_and_its_other_values(gws: list[Meshgate]) -> None:
    a, b = gws
    statuses = [request(mg.port, "/strict", headers={"x-plan": "free"}, timeout=5).status for mg in (a, b, a)]
    # An hour window: counted once per module run, unless it started in the last seconds of an hour.
    assert statuses[:2] in ([200, 200], [200, 429], [429, 429]) and statuses[2] == 429, statuses
    assert all(request(mg.port, "/strict", headers={"x-plan": "paid"}, timeout=5).status == 200 for mg in (a, b))
    assert request(a.port, "/open").status == 200


def test_decisions_are_counted(gws: list[Meshgate]) -> None:
    text = _metrics(gws[0])
    over = re.search(r'meshgate_edge_rate_limit_decisions_total\{result="over_limit"\} (\S+)', text)
    ok = re.search(r'meshgate_edge_rate_limit_decisions_total\{result="ok"\} (\S+)', text)
    assert over and float(over.group(1)) >= 1 and ok and float(ok.group(1)) >= 1, text
    assert re.search(r"meshgate_edge_rate_limit_rules \d", text)


# -- failure modes (last: they stop Redis, then a companion) --------------------------------------


def _redis_check(mg: Meshgate) -> dict:
    try:
        with urllib.request.urlopen(f"{mg.status_url}/readyz", timeout=5) as resp:  # noqa: S310 - loopback
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    return {"ready": body["ready"], **body["checks"]["dependencies"]["redis"]}


def test_redis_down_gives_the_configured_failure_mode(gws: list[Meshgate], redis_server: RedisServer) -> None:
    a, b = gws
    check = wait_until(lambda: (c := _redis_check(a))["ok"] and c, timeout=10, what="the Redis check in /readyz")
    assert check["gating"] is False and check["target"] == redis_server.url and check["ready"] is True
    redis_server.stop()  # our own redis-server, by PID
    try:
        # /readyz says so, degraded and still ready: Envoy applies each limit's failure mode.
        check = wait_until(lambda: not (c := _redis_check(a))["ok"] and c, timeout=10, what="the Redis check to fail")
        assert check["ready"] is True and check["error"], check
        for mg in (a, b):
            # Fail open (the default, as Envoy): through, at once.
            r = _login(mg, f"dave-{os.getpid()}")
            assert r.status == 200, (r.status, r.body)
            # failClosed: 503 from Envoy, never a hung request (the request's own bound is 5 s).
            r = request(mg.port, "/strict", headers={"x-plan": "free"}, timeout=5)
            assert r.status == 503, (r.status, r.body)
            assert r.upstream is None
        assert re.search(r'meshgate_edge_rate_limit_decisions_total\{result="error"\} [1-9]', _metrics(a))
    finally:
        redis_server.start()  # the same port: the companions reconnect on their own
    wait_until(lambda: _redis_check(a)["ok"], timeout=10, what="the Redis check to pass again")
    _fresh_window()
    user = f"erin-{os.getpid()}"
    wait_until(lambda: _login(a, user).headers.get("x-ratelimit-remaining") is not None, timeout=10,
               what="counting again once Redis is back")
    statuses = [_login(b, user).status for _ in range(6)]
    assert statuses.count(200) == 4 and statuses[-1] == 429, statuses  # 1 + 4 = 5 a minute, again


def test_a_killed_companion_gives_the_configured_failure_mode(gws: list[Meshgate]) -> None:
    a, _ = gws
    pid = a.status()["edge"]["pid"]
    os.kill(pid, signal.SIGKILL)  # our own child (started by this module's meshgate run), by PID
    wait_until(lambda: not pid_alive(pid), timeout=5, what="the companion to be gone")
    user = f"frank-{os.getpid()}"
    assert all(_login(a, user).status == 200 for _ in range(7))  # fail open: through, uncounted
    r = request(a.port, "/strict", headers={"x-plan": "free"}, timeout=5)
    assert r.status == 503 and r.upstream is None, (r.status, r.body)
    # Supervised: it comes back (a new PID), and counts again.
    wait_until(lambda: a.status()["edge"].get("pid") not in (None, pid), timeout=15, what="the companion restarted")
    wait_until(lambda: _login(a, f"grace-{os.getpid()}").headers.get("x-ratelimit-remaining") is not None,
               timeout=15, what="counting again")
