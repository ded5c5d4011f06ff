"""RFC 9421 HTTP Message Signatures (meshgate.edge.rfc9421, SecurityPolicy requestSignature
`scheme: RFC9421`) without Envoy: the RFC's own test vectors (Appendix B.2.5 hmac-sha256 and
B.2.6 ed25519, with the keys of Appendix B.1.4 and B.1.5), requests signed by an independent
implementation (`http-message-signatures`) accepted, and every way of getting it wrong refused
with its reason. Also the shared nonce store's claim against a real Redis, and its failure mode
when Redis is gone."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshgate.edge import rfc9421
from meshgate.edge.signing import Policy, Verifier
from rfc9421_client import sign

# RFC 9421 Appendix B.1.5 (test-shared-secret) and B.1.4 (test-key-ed25519).
SHARED_SECRET = base64.b64decode("uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==")
ED25519_PUBLIC_PEM = ("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n"
                      "-----END PUBLIC KEY-----\n")
ED25519_PUBLIC_JWK_X = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"  # the same key, base64url of its 32 bytes
ED25519_PRIVATE_D = "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU"
# RFC 9421 Appendix B.2: the test request.
TEST_BODY = b'{"hello": "world"}'
TEST_HEADERS = {"host": "example.com", "date": "Tue, 20 Apr 2021 02:07:55 GMT", "content-type": "application/json",
                "content-digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEm"
                                  "THWXvJwew==:", "content-length": "18"}
B25_INPUT = 'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
B25_SIGNATURE = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
B25_BASE = ('"date": Tue, 20 Apr 2021 02:07:55 GMT\n"@authority": example.com\n"content-type": application/json\n'
            '"@signature-params": ("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"')
B26_INPUT = ('sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;'
             'keyid="test-key-ed25519"')
B26_SIGNATURE = ("sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:")
CREATED = 1618884473


def _test_request(signature_input: str, signature: str) -> rfc9421.Request:
    return rfc9421.Request("POST", "/foo?param=Value&Pet=dog", "example.com", "https",
                           {**TEST_HEADERS, "signature-input": signature_input, "signature": signature}, TEST_BODY)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- the RFC's vectors ---------------------------------------------------------------------------


def test_b25_hmac_sha256_vector() -> None:
    request = _test_request(B25_INPUT, B25_SIGNATURE)
    (signature,) = rfc9421.signatures_of(request.headers)
    base = rfc9421.signature_base(signature, request)
    assert base == B25_BASE.encode()
    assert rfc9421.verify_signature("hmac-sha256", SHARED_SECRET, base, signature.value)
    assert not rfc9421.verify_signature("hmac-sha256", SHARED_SECRET[:-1], base, signature.value)


@pytest.mark.parametrize("public", [ED25519_PUBLIC_PEM, ED25519_PUBLIC_JWK_X,
                                    base64.b64encode(_b64url(ED25519_PUBLIC_JWK_X)).decode()])
def test_b26_ed25519_vector(public: str) -> None:
    request = _test_request(B26_INPUT, B26_SIGNATURE)
    (signature,) = rfc9421.signatures_of(request.headers)
    base = rfc9421.signature_base(signature, request)
    key = rfc9421.load_public_key(public)
    assert rfc9421.verify_signature("ed25519", key, base, signature.value)
    # ed25519 is deterministic: the private key of B.1.4 signs the same bytes.
    private = Ed25519PrivateKey.from_private_bytes(_b64url(ED25519_PRIVATE_D))
    assert private.sign(base) == signature.value
    assert not rfc9421.verify_signature("ed25519", key, base.replace(b"POST", b"PUT"), signature.value)


def test_the_rfc_content_digest_and_ours() -> None:
    assert rfc9421.digest_matches(TEST_HEADERS["content-digest"], TEST_BODY)
    assert not rfc9421.digest_matches(TEST_HEADERS["content-digest"], TEST_BODY + b" ")
    ours = rfc9421.content_digest(TEST_BODY)
    assert ours == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"  # RFC 9530 section 2's example
    assert rfc9421.digest_matches(ours, TEST_BODY)
    assert not rfc9421.digest_matches("md5=:AAAA:", TEST_BODY)  # no supported algorithm: not a match
    assert not rfc9421.digest_matches("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:AAAA:",
                                      TEST_BODY)  # one wrong digest is enough to refuse


def test_the_vectors_through_a_policy() -> None:
    """The B.2.5 request through the verifier with a policy that asks for what it covers (the
    vectors carry no nonce: the policy's check of that is the only refusal)."""
    policy = Policy(name="ns/p/x", keys={"test-shared-secret": SHARED_SECRET}, headers=("date", "content-type"),
                    scheme="RFC9421", components=("@authority",), sign_body=False)
    v = Verifier(policies={"p": policy})
    request = _test_request(B25_INPUT, B25_SIGNATURE)
    verdict = v.verify("p", method="POST", path=request.path, headers=request.headers, body=b"", host="example.com",
                       scheme="https", now=CREATED)
    assert verdict.reason == "malformed"  # no nonce
    with_nonce = B25_INPUT + ';nonce="not-in-the-rfc-0123456789"'
    request = _test_request(with_nonce, B25_SIGNATURE)
    verdict = v.verify("p", method="POST", path=request.path, headers=request.headers, body=b"", host="example.com",
                       scheme="https", now=CREATED)
    assert verdict.reason == "bad-signature"  # the nonce is signed too


# -- the independent client against the verifier ---------------------------------------------------------

HMAC_KEY = b"a-shared-secret-0123456789"
PRIVATE = Ed25519PrivateKey.generate()
PUBLIC_RAW = rfc9421.public_key_bytes(PRIVATE.public_key())
NOW = 1767225600
URL = "https://api.example.com/v1/payments?currency=EUR&amount=10"
HEADERS = {"host": "api.example.com", "content-type": "application/json"}
BODY = b'{"amount": 10}'


def _verifier(**policy) -> Verifier:
    settings = dict(name="default/partners/abc", keys={"hmac-1": HMAC_KEY, "ed-1": PUBLIC_RAW},
                    algorithms={"ed-1": "ed25519"}, headers=("content-type",), scheme="RFC9421",
                    components=("@method", "@authority", "@path", "@query"), max_skew_s=300)
    settings.update(policy)
    return Verifier(policies={"p": Policy(**settings)})


def _signed(key_id="hmac-1", body=BODY, covered=("@method", "@authority", "@path", "@query", "content-type"), **kw):
    key = PRIVATE if key_id == "ed-1" else HMAC_KEY
    return sign(method="POST", url=URL, key_id=key_id, key=key, alg="ed25519" if key_id == "ed-1" else "hmac-sha256",
                headers=HEADERS, body=body, covered=covered, created=kw.pop("created", NOW), **kw)


def _verify(v: Verifier, headers, method="POST", path="/v1/payments?currency=EUR&amount=10", body=BODY,
            host="api.example.com", now=NOW):
    return v.verify("p", method=method, path=path, headers=headers, body=body, host=host, scheme="https", now=now)


@pytest.mark.parametrize("key_id", ["hmac-1", "ed-1"])
def test_a_request_signed_by_the_independent_client_passes_once(key_id: str) -> None:
    v = _verifier()
    headers = _signed(key_id)
    assert "content-digest" in headers and "content-digest" in headers["signature-input"]
    verdict = _verify(v, headers)
    assert verdict.ok, verdict
    assert verdict.key_id == key_id
    assert _verify(v, headers).reason == "replayed"


def test_target_uri_and_scheme_components() -> None:
    v = _verifier(components=("@method", "@target-uri", "@scheme"))
    assert _verify(v, _signed(covered=("@method", "@target-uri", "@scheme", "content-type"))).ok
    assert _verify(v, _signed(covered=("@method", "@target-uri", "content-type"))).reason == "not-covered"


def test_without_a_body_no_digest_is_needed() -> None:
    v = _verifier()
    headers = _signed(body=None)
    assert "content-digest" not in headers
    assert _verify(v, headers, body=b"").ok


@pytest.mark.parametrize("change, reason", [
    ({"method": "PUT"}, "bad-signature"),
    ({"path": "/v1/payments?currency=EUR&amount=1000"}, "bad-signature"),
    ({"path": "/v1/refunds?currency=EUR&amount=10"}, "bad-signature"),
    ({"host": "evil.example.com"}, "bad-signature"),
    ({"body": b'{"amount": 1000}'}, "bad-digest"),
    ({"now": NOW + 301}, "stale-timestamp"),
    ({"now": NOW - 301}, "stale-timestamp"),
])
@pytest.mark.parametrize("key_id", ["hmac-1", "ed-1"])
def test_tampering(key_id, change, reason) -> None:
    assert _verify(_verifier(), _signed(key_id), **change).reason == reason


def test_refusals() -> None:
    v = _verifier()
    good = _signed()
    cases = {
        "missing-signature": {k: x for k, x in good.items() if k != "signature"},
        "malformed": {**good, "signature-input": good["signature-input"] + ", ("},
        "unknown-key": _signed() | {"signature-input": good["signature-input"].replace('"hmac-1"', '"hmac-9"')},
        "not-covered": _signed(covered=("@method", "@authority", "@path", "content-type")),  # no @query
        "missing-header": {k: x for k, x in sign(method="POST", url=URL, key_id="hmac-1", key=HMAC_KEY, created=NOW,
                                                  headers={**HEADERS, "date": "Thu, 01 Jan 2026 00:00:00 GMT"},
                                                  body=BODY, covered=("@method", "@authority", "@path", "@query",
                                                                      "content-type", "date")).items() if k != "date"},
        "bad-signature": {**good, "content-type": "text/plain"},
        "bad-algorithm": _signed() | {"signature-input": good["signature-input"].replace('"hmac-sha256"', '"ed25519"')},
    }
    for reason, headers in cases.items():
        assert _verify(v, headers).reason == reason, reason
    # The body must be covered by content-digest, and the digest be the body's.
    uncovered = sign(method="POST", url=URL, key_id="hmac-1", key=HMAC_KEY, headers=HEADERS, created=NOW,
                     covered=("@method", "@authority", "@path", "@query", "content-type"))
    assert _verify(v, uncovered).reason == "not-covered"
    assert _verify(v, {**good, "content-digest": rfc9421.content_digest(b"other")}).reason == "bad-signature"
    # No nonce, or an expired signature.
    nonceless = _signed(nonce="")
    assert _verify(v, nonceless).reason == "malformed"
    assert _verify(v, _signed(expires=NOW - 1)).reason == "stale-timestamp"
    assert _verify(v, _signed(expires=NOW + 60)).ok


def test_a_second_signature_with_an_unknown_key_is_ignored() -> None:
    v = _verifier()
    good = _signed()
    other = sign(method="POST", url=URL, key_id="someone-else", key=b"another-secret-0123456789", headers=HEADERS,
                 created=NOW, label="proxy", body=BODY)
    headers = {**good, "signature-input": other["signature-input"] + ", " + good["signature-input"],
               "signature": other["signature"] + ", " + good["signature"]}
    assert _verify(v, headers).ok


def test_alg_may_be_left_out() -> None:
    assert _verify(_verifier(), _signed("ed-1", include_alg=False)).ok


def test_a_refused_signature_spends_no_nonce() -> None:
    v = _verifier()
    good = _signed(nonce="shared-nonce-0123456789")
    assert _verify(v, {**good, "content-type": "text/plain"}).reason == "bad-signature"
    assert _verify(v, good).ok


def test_a_redis_policy_hands_the_nonce_to_the_shared_store() -> None:
    v = _verifier(nonce_store="Redis")
    verdict = _verify(v, _signed(nonce="nonce-for-redis-0123456789"), now=NOW + 10)
    assert verdict.ok and verdict.claim is not None
    # Named after the policy's namespace/name (not its settings' digest), the key id and the nonce;
    # kept as long as the timestamp could still be accepted.
    assert verdict.claim.key == "meshgate:nonce:default%2Fpartners:hmac-1:nonce-for-redis-0123456789"
    assert verdict.claim.ttl_s == 300 + 1 - 10
    assert len(v.replay) == 0  # not in the companion's own memory


@pytest.mark.parametrize("text", [
    "partner-1=", 'sig1=("@method");created=1;keyid="k', "sig1=:not base64!:", "sig1=(\"@Method\")",
    'sig1=("@method";req)', 'sig1=("@method" "@method")', "sig1=(1 2)", "x" * 9000,
])
def test_malformed_fields(text: str) -> None:
    headers = {"signature-input": text, "signature": "sig1=:AAAA:"}
    with pytest.raises(rfc9421.StructuredFieldError):
        rfc9421.signatures_of(headers)


def test_structured_field_round_trip() -> None:
    text = '("@method" "x");created=1;keyid="a\\"b";alg="ed25519";flag;n=-5'
    (items, params), = [rfc9421.parse_dictionary("s=" + text)["s"]]
    assert params == {"created": 1, "keyid": 'a"b', "alg": "ed25519", "flag": True, "n": -5}
    assert rfc9421.serialize_inner_list(items, params) == text


def test_bad_public_keys() -> None:
    for text in ("not a key", base64.b64encode(b"x" * 31).decode(), "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"):
        with pytest.raises(ValueError):
            rfc9421.load_public_key(text)
    assert hashlib.sha256(PUBLIC_RAW).digest()  # (the generated key is 32 raw bytes)
    assert len(PUBLIC_RAW) == 32


# -- the shared store against a real Redis ---------------------------------------------------------------

from redis_server import RedisServer  # noqa: E402


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


async def _companion(url: str):
    from meshgate.edge.server import Companion, EdgeOptions

    companion = Companion(EdgeOptions(redis_url=url, metrics_address=None))
    return companion


@pytest.mark.parametrize("allow", [False, True])
async def test_the_nonce_claim_and_its_failure_mode(redis_server, allow: bool) -> None:
    from meshgate.edge.server import STORE_UNAVAILABLE

    v = _verifier(nonce_store="Redis", failure_mode_allow=allow)
    headers = _signed(nonce=f"claimed-once-{allow}-0123456789")
    companion = await _companion(redis_server.url)
    try:
        first, unchecked = await companion._claim(_verify(v, headers, now=NOW))
        assert first.ok and not unchecked
        again, _ = await companion._claim(_verify(v, headers, now=NOW))
        assert again.reason == "replayed"
        with redis_server.client() as c:
            ttl = c.ttl(first.claim.key)
        assert 0 < ttl <= 301
    finally:
        await companion.ratelimit.redis.aclose()
    # Redis gone (a port nobody listens on): refused with 503, or let through unchecked.
    from harness import free_port

    companion = await _companion(f"redis://127.0.0.1:{free_port()}/0")
    try:
        verdict, unchecked = await asyncio.wait_for(companion._claim(_verify(v, _signed(), now=NOW)), 5)
    finally:
        await companion.ratelimit.redis.aclose()
    if allow:
        assert verdict.ok and unchecked
    else:
        assert (verdict.ok, verdict.reason) == (False, STORE_UNAVAILABLE)


# -- the policy's keys, as the control plane resolves them -------------------------------------------------


def test_a_bad_public_key_is_the_policys_error_naming_the_key_id_not_its_value(tmp_path) -> None:
    from meshgate.api.config import load_translation
    from meshgate.edge.config import SIGNATURE_CONFIG, companion_resources

    golden = (Path(__file__).parent / "golden" / "translate" / "security-signature-rfc9421.in.yaml").read_text()
    bad = "not-an-ed25519-key-" + "x" * 20
    config = tmp_path / "config.yaml"
    config.write_text(golden.replace("partner-ed: JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs",
                                     f"partner-ed: {ED25519_PUBLIC_JWK_X}\n  partner-bad: {bad}"))
    translation, problems = load_translation([str(config)], environ={})
    text = "\n".join(str(p) for p in problems)
    assert "public key 'partner-bad' is not an ed25519 public key" in text and bad not in text
    assert f"{config}:" in text and "publicKeyRefs" in text  # file, line and field
    # The good keys still go to the companion: the HMAC key as is, the ed25519 key as its 32 bytes.
    (policy,) = companion_resources(translation.ir.listeners)[SIGNATURE_CONFIG].values()
    assert dict(policy.keys) == {"partner-1": b"golden-signing-key-0123456789",
                                 "partner-ed": _b64url(ED25519_PUBLIC_JWK_X)}
    assert policy.settings["keyAlgorithms"] == {"partner-ed": "ed25519"}
    assert (policy.settings["scheme"], policy.settings["nonceStore"]) == ("RFC9421", "Redis")


def test_readyz_checks_redis_while_a_policy_keeps_its_nonces_there(tmp_path) -> None:
    from meshgate.api.config import load_translation
    from meshgate.controlplane.dependencies import ConfigDependencies

    golden = (Path(__file__).parent / "golden" / "translate" / "security-signature-rfc9421.in.yaml").read_text()
    for store, expected in (("Redis", True), ("Memory", False)):
        config = tmp_path / f"{store}.yaml"
        config.write_text(golden.replace("nonceStore: Redis", f"nonceStore: {store}"))
        translation, problems = load_translation([str(config)], environ={})
        assert not problems
        wanted = ConfigDependencies(status=None, redis_url="redis://127.0.0.1:1/0").wanted(translation)
        assert ("redis" in wanted) is expected
