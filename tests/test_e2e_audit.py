"""`--audit-log` through the real Envoy: every request Envoy itself denied (401/403) or
rate-limited (429) is one JSON line with route, reason, client address and request id, never the
credential; a 403 from the application is not an audit event; and every config change (added,
changed, deleted objects with their file and line; accepted, partially accepted; old -> new
version) is one line from the control plane, in the same file."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import pytest

from harness import Meshgate, free_port, request, wait_until, write

CONFIG = Path(__file__).parent / "e2e" / "audit"
KEY_A = "key-a-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("audit")
    config = work / "config"
    shutil.copytree(CONFIG, config)
    env = {"HTTP_PORT": str(free_port()), "APP_PORT": str(free_port()), "KEY_A": KEY_A}
    mg = Meshgate([str(config)], work, env=env, args=["--audit-log", str(work / "audit.log")])
    mg.config_dir, mg.audit = config, work / "audit.log"
    try:
        mg.start()
        mg.port = int(env["HTTP_PORT"])
        yield mg
        assert mg.stop() == 0, mg.output()
    finally:
        mg.stop()


def events(gw: Meshgate, kind: str | None = None) -> list[dict]:
    if not gw.audit.exists():
        return []
    lines = [json.loads(line) for line in gw.audit.read_text().splitlines()]
    return [e for e in lines if kind is None or e["event"] == kind]


def test_envoy_audits_its_own_denials_and_rate_limits_never_the_credential(gw: Meshgate) -> None:
    wrong = "wrong-" + secrets.token_hex(12)
    assert request(gw.port, "/keyed/a").status == 401  # no key
    assert request(gw.port, "/keyed/b", headers={"x-api-key": wrong}).status == 401
    assert request(gw.port, f"/keyed/c?api_key={wrong}").status == 401
    assert request(gw.port, "/keyed/d", headers={"x-api-key": KEY_A}).status == 200  # not an event
    assert [request(gw.port, "/limited").status for _ in range(3)] == [200, 200, 429]
    assert request(gw.port, "/__status/403").status == 403  # the application's own 403: not an event

    denied = wait_until(lambda: len(events(gw, "auth_denied")) >= 3 and events(gw, "rate_limited") and
                        events(gw, "auth_denied"), timeout=10, what="Envoy's audit lines")
    assert sorted(e["path"] for e in denied) == ["/keyed/a", "/keyed/b", "/keyed/c"], denied  # no query string
    for e in denied:
        assert e["response_code"] == 401 and e["route"] == "httproute/default/app/rule/0/match/0", e  # the rule "keyed"
        assert e["client_address"] == "127.0.0.1" and e["request_id"] and e["reason"], e
    assert len({e["request_id"] for e in denied}) == 3
    [limited] = events(gw, "rate_limited")
    assert limited["path"] == "/limited" and limited["response_code"] == 429 and limited["route"] == "httproute/default/app/rule/1/match/0"
    assert "rate_limited" in limited["reason"], limited
    assert not any(e.get("path") == "/__status/403" for e in events(gw)), "an upstream's 403 was audited"
    text = gw.audit.read_text()
    assert wrong not in text and KEY_A not in text, "a credential reached the audit log"


def test_every_config_change_is_one_line_naming_objects_files_and_versions(gw: Meshgate) -> None:
    first = next(e for e in events(gw) if e["event"] == "config_loaded")
    assert first["outcome"] == "accepted" and first["version"]["old"] is None and first["version"]["new"]
    added = {c["object"]: c for c in first["changes"]}
    route = added["HTTPRoute/default/app"]
    assert route["change"] == "added" and route["file"].endswith("gateway.yaml") and route["line"] > 1, route
    assert "Secret/default/api-keys" in added and KEY_A not in json.dumps(first)

    def changed(n: int) -> list[dict]:
        return wait_until(lambda: (lambda e: e[n:] if len(e) > n else None)(events(gw, "config_changed")),
                          timeout=10, what="the config change's audit line")

    before = len(events(gw, "config_changed"))
    extra = gw.config_dir / "extra.yaml"
    write(extra, """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: extra}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /extra}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: app}]
""")
    [event] = changed(before)
    assert event["outcome"] == "accepted" and event["version"]["old"] == first["version"]["new"], event
    assert event["changes"] == [{"object": "HTTPRoute/default/extra", "change": "added", "file": str(extra),
                                 "line": 1, "generation": {"old": None, "new": 1}}], event

    write(extra, extra.read_text().replace("/extra", "/extra2"))
    [event] = changed(before + 1)
    assert [(c["object"], c["change"], c["generation"]) for c in event["changes"]] == [
        ("HTTPRoute/default/extra", "changed", {"old": 1, "new": 2})], event

    write(extra, extra.read_text().replace("value: /extra2", "value: 42"))  # invalid: keeps serving generation 2
    [event] = changed(before + 2)
    assert event["outcome"] == "partially_accepted" and event["changes"] == [], event
    assert any(str(extra) in p and "value" in p for p in event["new_problems"]), event

    extra.unlink()
    [event] = changed(before + 3)
    assert event["outcome"] == "accepted" and event["new_problems"] == [] and event["problems"] == [], event
    assert [(c["object"], c["change"]) for c in event["changes"]] == [("HTTPRoute/default/extra", "deleted")], event
