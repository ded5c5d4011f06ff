"""requestSignature `nonceStore: Redis` through real parts: two `meshgate run`s (two Envoys, each
with its own edge companion, as two replicas of a Gateway) and one real Redis. A signed request
passes once: the same request replayed to the *other* Envoy is refused (its companion finds the
nonce in Redis), for meshgate's scheme and for RFC 9421. With Redis stopped, each policy gives
its failure mode at once: 503 (`replay-store-unavailable`), or (failureModeAllow) through with
`x-meshgate-replay-unchecked: true`; a bad signature is still refused.

One Redis and two meshgates for the module; the test that stops Redis runs last.
"""

from __future__ import annotations

import secrets
import time
import urllib.request
from pathlib import Path

import pytest

from harness import Meshgate, request
from meshgate.edge.signing import REASON_HEADER, sign_request
from redis_server import RedisServer, gateways_sharing, redis_server  # noqa: F401 - the module fixture
from rfc9421_client import sign as sign_rfc9421

CONFIG = Path(__file__).parent / "e2e" / "signing_redis"
KEY_1 = "k1-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def gws(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer):
    yield from gateways_sharing(redis_server, CONFIG, tmp_path_factory, "signing-redis", {"KEY_1": KEY_1})


def _meshgate_headers(mg: Meshgate, path: str, nonce: str, ts: int) -> dict[str, str]:
    # Signed for a's authority: both Envoys are on 127.0.0.1, each on its own port, so the
    # replay to b carries a's Host header (as a replay through a load balancer would).
    host = f"127.0.0.1:{mg.port}"
    return {"host": host, **sign_request("partner-1", KEY_1.encode(), method="GET", path_and_query=path,
                                         headers={"host": host}, signed_headers=("host",), nonce=nonce, timestamp=ts)}


def _rfc9421_headers(mg: Meshgate, path: str, nonce: str | None = None) -> dict[str, str]:
    host = f"127.0.0.1:{mg.port}"
    return sign_rfc9421(method="GET", url=f"http://{host}{path}", key_id="partner-1", key=KEY_1.encode(),
                        headers={"host": host}, nonce=nonce)


def _send(mg: Meshgate, path: str, headers: dict[str, str]):
    return request(mg.port, path, headers={k: v for k, v in headers.items() if k != "host"}, host=headers["host"],
                   timeout=5)


def _metrics(mg: Meshgate) -> str:
    with urllib.request.urlopen(mg.status()["edge"]["metrics"], timeout=5) as r:  # noqa: S310 - loopback
        return r.read().decode()


def test_a_replay_to_the_other_gateway_is_refused(gws: list[Meshgate]) -> None:
    a, b = gws
    headers = _meshgate_headers(a, "/shared/items", secrets.token_urlsafe(18), int(time.time()))
    r = _send(a, "/shared/items", headers)
    assert r.status == 200, (r.status, r.body)
    r = _send(b, "/shared/items", headers)
    assert r.status == 401, (r.status, r.body)
    assert r.headers[REASON_HEADER] == "replayed" and r.upstream is None
    # And to the first one again.
    assert _send(a, "/shared/items", headers).headers.get(REASON_HEADER) == "replayed"


def test_an_rfc9421_replay_to_the_other_gateway_is_refused(gws: list[Meshgate]) -> None:
    a, b = gws
    headers = _rfc9421_headers(a, "/rfc9421/items?x=1")
    assert _send(a, "/rfc9421/items?x=1", headers).status == 200
    r = _send(b, "/rfc9421/items?x=1", headers)
    assert (r.status, r.headers.get(REASON_HEADER)) == (401, "replayed")


def test_the_nonces_are_in_redis_with_an_expiry(gws: list[Meshgate], redis_server: RedisServer) -> None:
    a, _ = gws
    nonce = secrets.token_urlsafe(18)
    assert _send(a, "/shared/x", _meshgate_headers(a, "/shared/x", nonce, int(time.time()))).status == 200
    with redis_server.client() as c:
        keys = [k.decode() for k in c.scan_iter(match=f"meshgate:nonce:*:{nonce}")]
        assert keys == [f"meshgate:nonce:default%2Fshared:partner-1:{nonce}"]
        assert 0 < c.ttl(keys[0]) <= 61  # the skew window: after it the clock refuses the request anyway


def test_nonce_claims_are_counted(gws: list[Meshgate]) -> None:
    a, b = gws
    assert 'meshgate_edge_nonce_store_operations_total{result="claimed"}' in _metrics(a)
    text = _metrics(b)
    assert 'meshgate_edge_nonce_store_operations_total{result="replayed"}' in text
    assert "meshgate_edge_nonce_store_seconds_bucket" in text and KEY_1 not in text


def test_redis_down_gives_each_policy_its_failure_mode(gws: list[Meshgate], redis_server: RedisServer) -> None:
    a, b = gws
    redis_server.stop()  # our own redis-server, by PID
    # Fail closed (the default): 503 at once, saying why; never a hung request.
    r = _send(a, "/shared/items", _meshgate_headers(a, "/shared/items", secrets.token_urlsafe(18), int(time.time())))
    assert r.status == 503, (r.status, r.body)
    assert r.headers[REASON_HEADER] == "replay-store-unavailable" and r.upstream is None
    # failureModeAllow: through, and the upstream is told the nonce wasn't checked.
    r = _send(b, "/rfc9421/items", _rfc9421_headers(b, "/rfc9421/items"))
    assert r.status == 200, (r.status, r.body)
    assert r.json["headers"].get("x-meshgate-replay-unchecked") == "true"
    # The signature is still verified first: a bad one is refused whatever Redis does.
    forged = {**_rfc9421_headers(b, "/rfc9421/items"), "signature": "sig1=:" + "A" * 43 + "=:"}
    r = _send(b, "/rfc9421/items", forged)
    assert (r.status, r.headers.get(REASON_HEADER)) == (401, "bad-signature")
    assert 'meshgate_edge_nonce_store_operations_total{result="error"}' in _metrics(a)
