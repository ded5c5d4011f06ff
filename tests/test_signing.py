"""The request-signature scheme (meshgate.edge.signing) alone: a fixed vector a client can test
its implementation against (also in docs/security.md), verification, the clock-skew window,
replays, and tampering of each covered part. The companion's config type round trip too."""

from __future__ import annotations

import hashlib

import pytest

from meshgate import ir
from meshgate.edge import config as edge_config
from meshgate.edge.signing import (
    KEY_ID_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Policy,
    ReplayCache,
    Verifier,
    canonical_text,
    sign,
    sign_request,
)

KEY = b"test-key-0123456789abcdef"
NOW = 1767225600
BODY = b'{"amount": 10}'
# The vector of docs/security.md: computed by hand from the scheme's definition.
VECTOR_TEXT = ("MESHGATE-HMAC-SHA256\n1767225600\nnonce-0123456789abcdef\npartner-1\nPOST\n/v1/payments\n"
               "currency=EUR&amount=10\nhost;content-type\nhost:api.example.com\ncontent-type:application/json\n"
               "7f8b279ef4be0909382db4442750f8eb84f2874cf43c826a86acffb6dc28c84d")
VECTOR_SIGNATURE = "v1=3662dd9a2460f14cb5555a08d60b6d3ce79566de4e27ecc43ec243df4d935359"
REQUEST_HEADERS = {"host": "api.example.com", "content-type": "application/json"}


def test_the_vector() -> None:
    assert hashlib.sha256(BODY).hexdigest() == VECTOR_TEXT.rsplit("\n", 1)[1]
    text = canonical_text(method="post", path="/v1/payments", query="currency=EUR&amount=10",
                          headers=[("host", "api.example.com"), ("content-type", " application/json ")],
                          body_sha256=hashlib.sha256(BODY).hexdigest(), timestamp="1767225600",
                          nonce="nonce-0123456789abcdef", key_id="partner-1")
    assert text == VECTOR_TEXT.encode()
    assert sign(KEY, text) == VECTOR_SIGNATURE
    headers = sign_request("partner-1", KEY, method="POST", path_and_query="/v1/payments?currency=EUR&amount=10",
                           headers=REQUEST_HEADERS, signed_headers=("host", "content-type"), body=BODY,
                           timestamp=NOW, nonce="nonce-0123456789abcdef")
    assert headers == {KEY_ID_HEADER: "partner-1", TIMESTAMP_HEADER: "1767225600",
                       NONCE_HEADER: "nonce-0123456789abcdef", SIGNATURE_HEADER: VECTOR_SIGNATURE}


def _verifier(**policy) -> Verifier:
    p = Policy(name="p", keys={"partner-1": KEY, "partner-2": b"another-key-0123456789"},
               headers=("host", "content-type"), max_skew_s=300, **policy)
    return Verifier(policies={"p": p})


def _signed(method="POST", path="/v1/payments?currency=EUR&amount=10", body=BODY, key=KEY, key_id="partner-1",
            ts=NOW, nonce=None, headers=None):
    hdrs = dict(REQUEST_HEADERS if headers is None else headers)
    hdrs.update(sign_request(key_id, key, method=method, path_and_query=path, headers=hdrs,
                             signed_headers=("host", "content-type"), body=body, timestamp=ts, nonce=nonce))
    return hdrs


def _verify(v: Verifier, headers, method="POST", path="/v1/payments?currency=EUR&amount=10", body=BODY, now=NOW,
            policy="p"):
    return v.verify(policy, method=method, path=path, headers=headers, body=body, now=now)


def test_a_signed_request_passes_and_its_nonce_only_once() -> None:
    v = _verifier()
    headers = _signed()
    assert _verify(v, headers).ok
    again = _verify(v, headers)
    assert (again.ok, again.reason) == (False, "replayed")
    assert _verify(v, _signed()).ok  # a new nonce


@pytest.mark.parametrize("change, reason", [
    ({"method": "PUT"}, "bad-signature"),
    ({"path": "/v1/payment?currency=EUR&amount=10"}, "bad-signature"),
    ({"path": "/v1/payments?currency=EUR&amount=1000"}, "bad-signature"),
    ({"path": "/v1/payments?amount=10&currency=EUR"}, "bad-signature"),  # the query as sent: order counts
    ({"path": "/v1/payments"}, "bad-signature"),
    ({"body": b'{"amount": 1000}'}, "bad-signature"),
    ({"body": b""}, "bad-signature"),
])
def test_tampering_with_a_covered_part_fails(change, reason) -> None:
    v = _verifier()
    assert _verify(v, _signed(), **change).reason == reason


@pytest.mark.parametrize("header, value", [("host", "evil.example.com"), ("content-type", "text/plain"),
                                           (KEY_ID_HEADER, "partner-2"), (TIMESTAMP_HEADER, str(NOW + 1)),
                                           (NONCE_HEADER, "another-nonce-0123456789")])
def test_tampering_with_a_header_fails(header, value) -> None:
    headers = {**_signed(), header: value}
    assert _verify(_verifier(), headers).reason == "bad-signature"


def test_a_wrong_key_and_an_unknown_key_id() -> None:
    assert _verify(_verifier(), _signed(key=b"wrong-key-0123456789abc")).reason == "bad-signature"
    verdict = _verify(_verifier(), _signed(key_id="partner-9"))
    assert (verdict.reason, verdict.key_id) == ("unknown-key", "partner-9")


def test_the_clock_skew_window() -> None:
    v = _verifier()
    assert _verify(v, _signed(ts=NOW - 300)).ok
    assert _verify(v, _signed(ts=NOW + 300)).ok
    assert _verify(v, _signed(ts=NOW - 301)).reason == "stale-timestamp"
    assert _verify(v, _signed(ts=NOW + 301)).reason == "stale-timestamp"


def test_a_replay_after_the_window_is_still_refused_by_the_clock() -> None:
    v = _verifier()
    headers = _signed(nonce="fixed-nonce-0123456789")
    assert _verify(v, headers).ok
    # Later the nonce may have left the cache, but the timestamp is then out of the window.
    assert _verify(v, headers, now=NOW + 302).reason == "stale-timestamp"


def test_a_refused_signature_spends_no_nonce() -> None:
    v = _verifier()
    good = _signed(nonce="shared-nonce-0123456789")
    forged = {**good, SIGNATURE_HEADER: "v1=" + "0" * 64}
    assert _verify(v, forged).reason == "bad-signature"
    assert _verify(v, good).ok


@pytest.mark.parametrize("drop, reason", [(KEY_ID_HEADER, "missing-signature"), (SIGNATURE_HEADER, "missing-signature"),
                                          (TIMESTAMP_HEADER, "missing-signature"), (NONCE_HEADER, "missing-signature"),
                                          ("content-type", "missing-header")])
def test_a_missing_header(drop, reason) -> None:
    headers = {k: v for k, v in _signed().items() if k != drop}
    assert _verify(_verifier(), headers).reason == reason


@pytest.mark.parametrize("header, value", [(SIGNATURE_HEADER, "v2=abc"), (SIGNATURE_HEADER, "v1=" + "A" * 64),
                                           (TIMESTAMP_HEADER, "yesterday"), (NONCE_HEADER, "short"),
                                           (NONCE_HEADER, "has spaces in it 0123456")])
def test_a_malformed_header(header, value) -> None:
    assert _verify(_verifier(), {**_signed(), header: value}).reason == "malformed"


def test_an_unknown_policy_and_an_unsigned_body() -> None:
    assert _verify(_verifier(), _signed(), policy="other").reason == "unknown-policy"
    v = _verifier(sign_body=False)
    assert _verify(v, _signed(body=b""), body=b"anything").ok  # the body is not covered


def test_the_replay_cache_is_bounded() -> None:
    cache = ReplayCache(capacity=2)
    for n in ("a", "b", "c"):
        assert cache.check_and_add("p", "k", n, expires=NOW + 10, now=NOW)
    assert len(cache) == 2 and cache.evicted_live == 1
    assert not cache.check_and_add("p", "k", "c", expires=NOW + 10, now=NOW)
    assert cache.check_and_add("p", "k", "c", expires=NOW + 30, now=NOW + 11)  # expired: accepted again


def test_the_companion_config_round_trip() -> None:
    sig = ir.RequestSignature(policy="default/signed/abc", keys=(("partner-1", KEY),), headers=("host",),
                              max_skew_s=60, max_body_bytes=0)
    route = ir.Route(name="r", match=None, security=ir.Security(signature=sig))  # type: ignore[arg-type]
    listener = type("L", (), {"virtual_hosts": [type("V", (), {"routes": [route]})()]})()
    resources = edge_config.companion_resources([listener])[edge_config.SIGNATURE_CONFIG]
    assert resources["default/signed/abc"].DESCRIPTOR.full_name == "meshgate.edge.v1.SignatureConfig"
    wire = {n: edge_config.SignatureConfig.FromString(m.SerializeToString()) for n, m in resources.items()}
    policy = edge_config.policies_from(wire)["default/signed/abc"]
    assert (policy.keys, policy.headers, policy.max_skew_s, policy.sign_body) == ({"partner-1": KEY}, ("host",), 60, False)


def test_the_companion_config_round_trip_of_rfc9421_and_the_nonce_store() -> None:
    public = bytes(range(32))
    sig = ir.RequestSignature(policy="default/partners/abc", keys=(("ed-1", public), ("partner-1", KEY)),
                              headers=("content-type",), scheme="RFC9421", components=("@method", "@path"),
                              algorithms=(("ed-1", "ed25519"),), nonce_store="Redis", failure_mode_allow=True)
    route = ir.Route(name="r", match=None, security=ir.Security(signature=sig))  # type: ignore[arg-type]
    listener = type("L", (), {"virtual_hosts": [type("V", (), {"routes": [route]})()]})()
    resources = edge_config.companion_resources([listener])[edge_config.SIGNATURE_CONFIG]
    wire = {n: edge_config.SignatureConfig.FromString(m.SerializeToString()) for n, m in resources.items()}
    policy = edge_config.policies_from(wire)["default/partners/abc"]
    assert (policy.scheme, policy.components, policy.algorithms, policy.nonce_store, policy.failure_mode_allow) == (
        "RFC9421", ("@method", "@path"), {"ed-1": "ed25519"}, "Redis", True)
    assert policy.replay_scope == "default/partners"
    # An ed25519 key that isn't 32 bytes, or an unknown scheme: the config is refused (NACKed).
    wire["default/partners/abc"].keys["ed-1"] = b"short"
    with pytest.raises(ValueError, match="bad key"):
        edge_config.policies_from(wire)
    bad = edge_config.SignatureConfig(name="x")
    bad.settings.update({"scheme": "Cavage"})
    with pytest.raises(ValueError, match="unknown scheme"):
        edge_config.policies_from({"x": bad})


def test_a_redis_policy_leaves_the_nonce_to_the_shared_store() -> None:
    v = _verifier(nonce_store="Redis")
    headers = _signed(nonce="nonce-for-redis-0123456789")
    first, second = _verify(v, headers), _verify(v, headers)
    # Both valid here: the store decides which one was first (meshgate.edge.server claims it).
    assert first.ok and second.ok and first.claim == second.claim
    assert first.claim.key == "meshgate:nonce:p:partner-1:nonce-for-redis-0123456789"
    assert len(v.replay) == 0
