"""SecurityPolicy requestSignature through real Envoy and the real edge companion (`meshgate edge`,
started and supervised by `meshgate run`, configured over ADS): a correctly signed request
reaches the upstream; a wrong key, tampered body, path, query or header, an old timestamp and a
replayed nonce each get 401 with a reason header that reveals no secret; a key rotated in the
Secret takes effect on reload with nothing restarted; a killed companion gives exactly the
configured failure mode (fail closed: 503 at once; fail open: through, marked unverified).
RFC 9421 (`scheme: RFC9421`): requests signed by an independent client (`http-message-signatures`)
with a shared key (hmac-sha256) and an ed25519 key pass; tampering, a replay, a body that isn't
its content-digest's and missing coverage are refused. Signed WebSocket upgrades, with either scheme.

One `meshgate run` for the module; the companion-killing test runs last.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness import Meshgate, free_port, get_json, pid_alive, request, wait_until, write
from meshgate.edge.rfc9421 import public_key_bytes
from meshgate.edge.signing import REASON_HEADER, sign_request
from rfc9421_client import sign as sign_rfc9421

CONFIG = Path(__file__).parent / "e2e" / "signing"
KEY_1 = "k1-" + secrets.token_hex(16)
SIGNED_HEADERS = ("host", "content-type")
ED25519_KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    env = {"HTTP_PORT": str(free_port()), "APP_PORT": str(free_port()), "WS_PORT": str(free_port()), "KEY_1": KEY_1,
           "ED25519_PUBLIC": base64.b64encode(public_key_bytes(ED25519_KEY.public_key())).decode()}
    work = tmp_path_factory.mktemp("signing")
    config = work / "config"
    shutil.copytree(CONFIG, config)
    mg = Meshgate([str(config)], work, env=env)
    mg.config_dir = config
    # The WebSocket upstream of the signed upgrades (tests/ws_upstream.py), stopped by its Popen.
    upstream = subprocess.Popen([sys.executable, str(Path(__file__).parent / "ws_upstream.py"), env["WS_PORT"]],
                                stdout=subprocess.PIPE, stderr=(work / "ws.stderr").open("wb"), stdin=subprocess.DEVNULL)
    try:
        assert upstream.stdout.readline() == b"ready\n", (work / "ws.stderr").read_text()
        mg.start()
        mg.port = int(env["HTTP_PORT"])
        yield mg
        assert mg.stop() == 0, mg.output()
        edge_log = work / "state" / "edge.log"
        text = edge_log.read_text() if edge_log.exists() else ""
        for key in (KEY_1, ROTATED):
            assert key not in text and key not in mg.output()  # no key in any log
    finally:
        mg.stop()
        upstream.terminate()
        try:
            upstream.wait(timeout=5)
        except subprocess.TimeoutExpired:
            upstream.kill()
            upstream.wait(timeout=5)


ROTATED = "k2-" + secrets.token_hex(16)


def signed(gw: Meshgate, path: str, *, method: str = "GET", body: bytes = b"", key_id: str = "partner-1",
           key: str = KEY_1, headers: dict | None = None, send_path: str | None = None, send_body: bytes | None = None,
           send_headers: dict | None = None, **sign_args):
    """Sign a request for `path`/`body`/`headers`, then send it (optionally changed: send_*)."""
    host = f"127.0.0.1:{gw.port}"
    hdrs = {"host": host, "content-type": "application/json", **(headers or {})}
    hdrs.update(sign_request(key_id, key.encode(), method=method, path_and_query=path, headers=hdrs,
                             signed_headers=SIGNED_HEADERS, body=body, **sign_args))
    hdrs.update(send_headers or {})
    sent = {k: v for k, v in hdrs.items() if k != "host"}
    return request(gw.port, send_path or path, method=method, headers=sent,
                   body=(send_body if send_body is not None else body) or None, timeout=5)


def _refused(r, reason: str) -> None:
    assert r.status == 401, (r.status, r.body)
    assert r.headers[REASON_HEADER] == reason
    assert r.upstream is None  # answered before the upstream
    for secret in (KEY_1, ROTATED):
        assert secret not in r.body.decode(errors="replace") and secret not in str(r.headers)


def edge_status(gw: Meshgate) -> dict:
    return gw.status()["edge"]


# -- passes ------------------------------------------------------------------------------------------


def test_a_signed_request_reaches_the_upstream(gw: Meshgate) -> None:
    r = signed(gw, "/signed/items?page=2&sort=name")
    assert r.status == 200, r.body
    assert r.upstream is not None
    echoed = r.json
    assert echoed["path"] == "/signed/items" and echoed["query"] == {"page": "2", "sort": "name"}
    assert echoed["headers"]["x-meshgate-key-id"] == "partner-1"


def test_a_signed_body_passes(gw: Meshgate) -> None:
    body = b'{"amount": 42}'
    r = signed(gw, "/signed/payments", method="POST", body=body)
    assert r.status == 200, r.body
    assert r.json["body"] == body.decode()


def test_an_unsigned_route_is_not_checked(gw: Meshgate) -> None:
    r = request(gw.port, "/open/x")
    assert r.status == 200


# -- refused -----------------------------------------------------------------------------------------


def test_no_signature(gw: Meshgate) -> None:
    _refused(request(gw.port, "/signed/items"), "missing-signature")


def test_wrong_key(gw: Meshgate) -> None:
    _refused(signed(gw, "/signed/items", key="not-the-key-" + secrets.token_hex(8)), "bad-signature")


def test_unknown_key_id(gw: Meshgate) -> None:
    _refused(signed(gw, "/signed/items", key_id="partner-9"), "unknown-key")


def test_tampered_body(gw: Meshgate) -> None:
    _refused(signed(gw, "/signed/payments", method="POST", body=b'{"amount": 42}', send_body=b'{"amount": 4200}'),
             "bad-signature")


def test_tampered_path(gw: Meshgate) -> None:
    _refused(signed(gw, "/signed/items/1", send_path="/signed/items/2"), "bad-signature")


def test_tampered_query(gw: Meshgate) -> None:
    _refused(signed(gw, "/signed/items?limit=10", send_path="/signed/items?limit=10000"), "bad-signature")


def test_tampered_signed_header(gw: Meshgate) -> None:
    _refused(signed(gw, "/signed/items", send_headers={"content-type": "text/plain"}), "bad-signature")


def test_tampered_method(gw: Meshgate) -> None:
    r = signed(gw, "/signed/items", method="GET", send_headers={})
    assert r.status == 200
    # The same signature on a DELETE.
    hdrs = {"content-type": "application/json"}
    hdrs.update(sign_request("partner-1", KEY_1.encode(), method="GET", path_and_query="/signed/items",
                             headers={"host": f"127.0.0.1:{gw.port}", **hdrs}, signed_headers=SIGNED_HEADERS))
    _refused(request(gw.port, "/signed/items", method="DELETE", headers=hdrs), "bad-signature")


def test_a_missing_signed_header(gw: Meshgate) -> None:
    hdrs = sign_request("partner-1", KEY_1.encode(), method="GET", path_and_query="/signed/items",
                        headers={"host": f"127.0.0.1:{gw.port}"}, signed_headers=SIGNED_HEADERS)
    _refused(request(gw.port, "/signed/items", headers=hdrs), "missing-header")


def test_an_old_timestamp(gw: Meshgate) -> None:
    _refused(signed(gw, "/signed/items", timestamp=int(time.time()) - 600), "stale-timestamp")


def test_a_future_timestamp(gw: Meshgate) -> None:
    _refused(signed(gw, "/signed/items", timestamp=int(time.time()) + 600), "stale-timestamp")


def test_a_replayed_nonce(gw: Meshgate) -> None:
    nonce = secrets.token_urlsafe(18)
    ts = int(time.time())
    assert signed(gw, "/signed/items", nonce=nonce, timestamp=ts).status == 200
    _refused(signed(gw, "/signed/items", nonce=nonce, timestamp=ts), "replayed")


def test_decisions_are_counted_by_route_and_reason(gw: Meshgate) -> None:
    import urllib.request

    with urllib.request.urlopen(edge_status(gw)["metrics"], timeout=5) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    assert 'meshgate_edge_decisions_total{decision="allow",reason="",route="httproute/default/api/rule/0/match/0"}' in text
    assert 'reason="replayed"' in text and "meshgate_edge_check_seconds_bucket" in text
    assert KEY_1 not in text


def test_refusals_are_logged_with_the_request_id(gw: Meshgate) -> None:
    # Envoy gives each request its x-request-id (a client's is not trusted at the edge): find it
    # in the access log by a path of this test's own, then in the companion's log.
    path = f"/signed/log-{secrets.token_hex(6)}"
    _refused(signed(gw, path, key_id="partner-9"), "unknown-key")
    access_log = gw.workdir / "state" / "access.log"
    entry = wait_until(lambda: next((json.loads(line) for line in access_log.read_text().splitlines()
                                     if f'"{path}"' in line), None), timeout=5, what="the request in the access log")
    log = Path(edge_status(gw)["log"])
    line = wait_until(lambda: next((line for line in log.read_text().splitlines() if entry["request_id"] in line), None),
                      timeout=5, what="the refusal in the companion's log")
    assert json.loads(line)["reason"] == "unknown-key" and json.loads(line)["key_id"] == "partner-9"


# -- RFC 9421 ------------------------------------------------------------------------------------------

RFC9421_COVERED = ("@method", "@authority", "@path", "@query", "content-type")


def rfc9421_signed(gw: Meshgate, path: str, *, alg: str = "hmac-sha256", method: str = "GET", body: bytes | None = None,
                   send_path: str | None = None, send_body: bytes | None = None, send_headers: dict | None = None,
                   **sign_args):
    """Sign with the independent client (as a partner would), then send (optionally changed)."""
    key_id, key = ("partner-ed", ED25519_KEY) if alg == "ed25519" else ("partner-1", KEY_1.encode())
    headers = sign_rfc9421(method=method, url=f"http://127.0.0.1:{gw.port}{path}", key_id=key_id, key=key, alg=alg,
                           headers={"host": f"127.0.0.1:{gw.port}", "content-type": "application/json"}, body=body,
                           **{"covered": RFC9421_COVERED, **sign_args})
    headers.update(send_headers or {})
    sent = {k: v for k, v in headers.items() if k != "host"}
    return request(gw.port, send_path or path, method=method, headers=sent,
                   body=send_body if send_body is not None else body, timeout=5)


def _refused_rfc9421(r, reason: str) -> None:
    _refused(r, reason)
    assert r.headers["www-authenticate"] == "Signature"


@pytest.mark.parametrize("alg", ["hmac-sha256", "ed25519"])
def test_rfc9421_signed_requests_pass(gw: Meshgate, alg: str) -> None:
    r = rfc9421_signed(gw, "/rfc9421/items?page=2", alg=alg)
    assert r.status == 200, (r.status, r.body)
    assert r.json["query"] == {"page": "2"} and "signature-input" in r.json["headers"]
    body = b'{"amount": 42}'
    r = rfc9421_signed(gw, "/rfc9421/payments", alg=alg, method="POST", body=body)
    assert r.status == 200, (r.status, r.body)
    assert r.json["body"] == body.decode()


@pytest.mark.parametrize("alg", ["hmac-sha256", "ed25519"])
def test_rfc9421_refusals(gw: Meshgate, alg: str) -> None:
    _refused_rfc9421(request(gw.port, "/rfc9421/items"), "missing-signature")
    _refused_rfc9421(rfc9421_signed(gw, "/rfc9421/items?limit=10", alg=alg, send_path="/rfc9421/items?limit=10000"),
                     "bad-signature")
    _refused_rfc9421(rfc9421_signed(gw, "/rfc9421/items", alg=alg, send_headers={"content-type": "text/plain"}),
                     "bad-signature")
    _refused_rfc9421(rfc9421_signed(gw, "/rfc9421/pay", alg=alg, method="POST", body=b'{"amount": 1}',
                                    send_body=b'{"amount": 9}'), "bad-digest")
    _refused_rfc9421(rfc9421_signed(gw, "/rfc9421/items", alg=alg, covered=("@method", "@authority", "@path")),
                     "not-covered")
    _refused_rfc9421(rfc9421_signed(gw, "/rfc9421/items", alg=alg, created=int(time.time()) - 600), "stale-timestamp")
    nonce = secrets.token_urlsafe(18)
    created = int(time.time())
    assert rfc9421_signed(gw, "/rfc9421/items", alg=alg, nonce=nonce, created=created).status == 200
    _refused_rfc9421(rfc9421_signed(gw, "/rfc9421/items", alg=alg, nonce=nonce, created=created), "replayed")


def test_rfc9421_every_derived_component_resolves_as_the_client_computed_it(gw: Meshgate) -> None:
    # The client's @target-uri, @scheme and @request-target are those Envoy hands the companion.
    covered = (*RFC9421_COVERED, "@target-uri", "@scheme", "@request-target")
    r = rfc9421_signed(gw, "/rfc9421/all?a=1&b=%20x", alg="ed25519", covered=covered)
    assert r.status == 200, (r.status, r.body)


def test_rfc9421_a_body_must_be_covered(gw: Meshgate) -> None:
    # Signed without the body (no content-digest), then sent with one.
    _refused_rfc9421(rfc9421_signed(gw, "/rfc9421/pay", method="POST", send_body=b'{"amount": 9}'), "not-covered")


# -- signed WebSocket upgrades -----------------------------------------------------------------------


async def _echo_over(url: str, headers: dict[str, str]) -> str:
    async with websockets.connect(url, additional_headers=headers, open_timeout=5, close_timeout=5) as ws:
        await ws.send("hello")
        return await asyncio.wait_for(ws.recv(), 5)


def _upgrade_refused(url: str, headers: dict[str, str]) -> tuple[int, str]:
    async def attempt() -> tuple[int, str]:
        try:
            async with websockets.connect(url, additional_headers=headers, open_timeout=5):
                return 101, ""
        except websockets.InvalidStatus as exc:
            return exc.response.status_code, exc.response.headers.get(REASON_HEADER, "")
    return asyncio.run(attempt())


def test_a_signed_websocket_upgrade(gw: Meshgate) -> None:
    host = f"127.0.0.1:{gw.port}"
    url = f"ws://{host}/ws/echo"
    # meshgate's scheme: the upgrade GET is signed (host covered; no body).
    signed = sign_request("partner-1", KEY_1.encode(), method="GET", path_and_query="/ws/echo", headers={"host": host},
                          signed_headers=("host",))
    assert asyncio.run(_echo_over(url, signed)) == "hello"
    assert _upgrade_refused(url, signed) == (401, "replayed")
    assert _upgrade_refused(url, {}) == (401, "missing-signature")
    # RFC 9421 with the ed25519 key.
    url = f"ws://{host}/ws/echo?scheme=rfc9421"
    signed = sign_rfc9421(method="GET", url=f"http://{host}/ws/echo?scheme=rfc9421", key_id="partner-ed",
                          key=ED25519_KEY, alg="ed25519", headers={"host": host})
    assert asyncio.run(_echo_over(url, {k: v for k, v in signed.items() if k != "host"})) == "hello"
    tampered = sign_rfc9421(method="GET", url=f"http://{host}/ws/other?scheme=rfc9421", key_id="partner-ed",
                            key=ED25519_KEY, alg="ed25519", headers={"host": host})
    assert _upgrade_refused(url, {k: v for k, v in tampered.items() if k != "host"}) == (401, "bad-signature")


# -- key rotation ------------------------------------------------------------------------------------


def test_a_rotated_key_takes_effect_on_reload_without_restarts(gw: Meshgate) -> None:
    edge_pid, envoy_pid = edge_status(gw)["pid"], gw.envoy_pid
    write(gw.config_dir / "keys.yaml", f"""apiVersion: v1
kind: Secret
metadata: {{name: signing-keys}}
type: Opaque
stringData:
  partner-1: {ROTATED}
""")
    wait_until(lambda: signed(gw, "/signed/items", key=ROTATED).status == 200, timeout=15,
               what="the rotated key to be accepted")
    _refused(signed(gw, "/signed/items"), "bad-signature")  # the old key no longer works
    assert edge_status(gw)["pid"] == edge_pid and gw.envoy_pid == envoy_pid  # nothing restarted


# -- the companion down: the failure mode, exactly ------------------------------------------------------


def test_a_killed_companion_gives_the_configured_failure_mode(gw: Meshgate) -> None:
    pid = edge_status(gw)["pid"]
    os.kill(pid, signal.SIGKILL)  # our own child (started by this test's meshgate run), by PID
    wait_until(lambda: not pid_alive(pid), timeout=5, what="the companion to be gone")
    # Fail closed (the default): 503 from Envoy at once, never a hung request.
    r = signed(gw, "/signed/items", key=ROTATED)
    assert r.status == 503, (r.status, r.body)
    assert r.upstream is None
    # Fail open (failureModeAllow): through, and the upstream is told it was not verified.
    r = request(gw.port, "/lenient/x")
    assert r.status == 200, r.body
    assert r.json["headers"].get("x-envoy-auth-failure-mode-allowed") == "true"
    # Supervised: it comes back (a new PID) and checks again, with the current key.
    wait_until(lambda: edge_status(gw).get("pid") not in (None, pid), timeout=15, what="the companion restarted")
    wait_until(lambda: signed(gw, "/signed/items", key=ROTATED).status == 200, timeout=15,
               what="signed requests passing again")
    _refused(request(gw.port, "/lenient/x"), "missing-signature")


_ = get_json
