"""SecurityPolicy through the real Envoy: JWT verification (jwt_authn) with the classic attacks,
claims to headers, optional tokens, authorization on claims, scopes, methods and client
addresses (rbac), and a remote JWKS that Envoy fetches itself and refreshes (key rotation).

The test makes its own keys: an RSA key the Gateway trusts (inline JWKS), another RSA key and an
EC key it doesn't, and the partner's keys served by a JWKS server the test runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from harness import ROOT, Meshgate, ThreadedHTTPServer, free_port, request, wait_until, write

CONFIG = Path(__file__).parent / "e2e" / "security"
ISSUER, AUDIENCE = "https://issuer.test", "api"


# Credentials the test configures; none may ever show in a log, /status, metrics or `translate`.
SECRETS = {"KEY_A": "key-a-" + secrets.token_hex(12), "KEY_B": "key-b-" + secrets.token_hex(12)}
PASSWORD = "wonderland-" + secrets.token_hex(6)


def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(*pairs) -> str:
    keys = []
    for kid, key in pairs:
        jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid=kid, alg="RS256", use="sig")
        keys.append(jwk)
    return json.dumps({"keys": keys})


TRUSTED, OTHER, PARTNER_1, PARTNER_2 = _rsa_key(), _rsa_key(), _rsa_key(), _rsa_key()
EC_KEY = ec.generate_private_key(ec.SECP256R1())


class _JWKSServer(BaseHTTPRequestHandler):
    body = _jwks(("p1", PARTNER_1)).encode()
    fetches = 0  # by Envoy (the control plane's dependency probes say who they are)
    failing = False  # answer 503: the IdP is down

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.headers.get("User-Agent") != "meshgate-dependency-check":
            type(self).fetches += 1
        if type(self).failing:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    with ThreadedHTTPServer(_JWKSServer) as jwks_server:
        env = {"HTTP_PORT": str(free_port()), "APP_PORT": str(free_port()), "JWKS": _jwks(("k1", TRUSTED)),
               "PARTNER_JWKS_URL": f"http://127.0.0.1:{jwks_server.port}/.well-known/jwks.json",
               **SECRETS, "ALICE_SHA": base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode(),
               "MESHGATE_DEPENDENCY_CHECK_INTERVAL": "0.2"}  # /readyz's view of the IdP follows quickly
        work = tmp_path_factory.mktemp("security")
        config = work / "config"
        shutil.copytree(CONFIG, config)
        mg = Meshgate([str(config)], work, env=env)
        mg.config_dir = config
        try:
            mg.start()
            mg.port = int(env["HTTP_PORT"])
            yield mg
            assert mg.stop() == 0, mg.output()
        finally:
            mg.stop()


def token(key=TRUSTED, kid: str = "k1", alg: str = "RS256", **claims) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return pyjwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict, payload: dict, signature: bytes = b"") -> str:
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), _b64(signature)])


def call(gw: Meshgate, path: str, bearer: str | None = None, method: str = "GET", headers: dict | None = None):
    hdrs = dict(headers or {})
    if bearer is not None:
        hdrs["Authorization"] = f"Bearer {bearer}"
    return request(gw.port, path, method=method, headers=hdrs)


# -- JWT: who is calling -----------------------------------------------------------------------------


def test_a_valid_token_passes_and_its_claim_reaches_the_upstream(gw: Meshgate) -> None:
    r = call(gw, "/api/items", token())
    assert r.status == 200, r.body
    echoed = r.json["headers"]
    assert echoed["x-user"] == "alice"  # claimToHeaders
    assert "authorization" not in echoed  # the token is not forwarded upstream


def test_a_request_without_a_token_is_refused(gw: Meshgate) -> None:
    r = call(gw, "/api/items")
    assert r.status == 401
    assert r.headers["www-authenticate"].startswith("Bearer realm=")
    assert r.upstream is None
    # A body a client can act on: which check refused and why, and the id in the access log.
    assert r.headers["content-type"] == "application/json"
    assert r.json["status"] == 401 and r.json["error"] == "unauthorized"
    assert r.json["reason"].startswith("jwt_authn_access_denied") and "missing" in r.json["reason"].lower()
    assert len(r.json["request_id"]) >= 16


def _now() -> int:
    return int(time.time())


ATTACKS = {
    # The classic ones: each must get 401 and a www-authenticate header, never the upstream.
    "alg-none": lambda: _unsigned({"alg": "none", "kid": "k1"},
                                  {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": _now() + 600}),
    "hs256-with-the-rsa-public-key": lambda: _hs256_with_public_key(),
    "expired": lambda: token(exp=_now() - 3600, iat=_now() - 7200),
    "not-yet-valid": lambda: token(nbf=_now() + 3600),
    "wrong-issuer": lambda: token(iss="https://evil.test"),
    "unknown-kid": lambda: token(key=OTHER, kid="nope"),
    "another-key-same-kid": lambda: token(key=OTHER, kid="k1"),
    "tampered-payload": lambda: _tampered(),
    "wrong-algorithm-family": lambda: token(key=EC_KEY, alg="ES256"),
    "garbage": lambda: "abc.def.ghi",
    "not-a-jwt": lambda: "hello",
    "oversized-garbage": lambda: "a" * 20_000 + "." + "b" * 10 + "." + "c" * 10,
    "signature-stripped": lambda: token().rsplit(".", 1)[0] + ".",
}


def _hs256_with_public_key() -> str:
    # The "key confusion" attack: HMAC-sign with the RSA public key a verifier might treat as a secret.
    secret = TRUSTED.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": "k1", "typ": "JWT"}
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": _now() + 600}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return signing_input + "." + _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def _tampered() -> str:
    head, payload, sig = token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    return f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacks_are_refused_with_401(gw: Meshgate, attack: str) -> None:
    r = call(gw, "/api/items", ATTACKS[attack]())
    assert r.status == 401, (attack, r.status, r.body)
    assert "www-authenticate" in r.headers and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r.upstream is None


def test_a_wrong_audience_is_refused_with_403(gw: Meshgate) -> None:
    # Envoy's jwt_authn answers a token that is valid but for another audience with 403 (still
    # error="invalid_token"): documented in docs/security.md.
    r = call(gw, "/api/items", token(aud="someone-else"))
    assert r.status == 403
    assert r.upstream is None


def test_the_token_may_be_optional_on_one_rule(gw: Meshgate) -> None:
    assert call(gw, "/status").status == 200  # no token: fine here
    assert call(gw, "/status", token()).json["headers"]["x-user"] == "alice"
    assert call(gw, "/status", token(exp=_now() - 3600, iat=_now() - 7200)).status == 401  # a bad one is not


def test_routes_without_a_policy_need_no_token(gw: Meshgate) -> None:
    assert call(gw, "/public/x").status == 200


# -- authorization: may they ---------------------------------------------------------------------------


def test_admins_with_the_scope_are_allowed(gw: Meshgate) -> None:
    r = call(gw, "/admin/users", token(roles=["user", "admin"], scope="read admin.write"))
    assert r.status == 200, r.body


@pytest.mark.parametrize("claims", [
    {"roles": ["user"], "scope": "read admin.write"},  # not an admin
    {"roles": ["admin"], "scope": "read"},  # missing the scope
    {"roles": ["admin"]},  # no scope at all
    {"roles": "admin", "scope": "admin.write"},  # a string, not the list the rule asks for
])
def test_others_are_denied_with_403(gw: Meshgate, claims: dict) -> None:
    r = call(gw, "/admin/users", token(**claims))
    assert r.status == 403, (claims, r.body)
    assert r.upstream is None


def test_a_deny_rule_before_the_allow_rule_wins(gw: Meshgate) -> None:
    r = call(gw, "/admin/users/7", token(roles=["admin"], scope="admin.write"), method="DELETE")
    assert r.status == 403
    assert r.json["error"] == "forbidden" and "no-deletes" in r.json["reason"]  # the rule that matched


def test_authorization_runs_after_authentication(gw: Meshgate) -> None:
    assert call(gw, "/admin/users").status == 401  # no token: 401, not 403


# -- per-user limits --------------------------------------------------------------------------------


def test_a_rate_limit_keyed_on_the_verified_user(gw: Meshgate) -> None:
    # A bucket of 3 per user an hour (refills can't interfere): the 4th of carol's requests is
    # refused, dave still passes, and carol can't borrow dave's bucket by sending his name herself:
    # Envoy sets x-user from the verified token, over what the client sent.
    carol, dave = token(sub="carol"), token(sub="dave")
    assert [call(gw, "/limited/x", carol).status for _ in range(3)] == [200, 200, 200]
    refused = call(gw, "/limited/x", carol)
    assert refused.status == 429 and refused.upstream is None
    assert call(gw, "/limited/x", dave).status == 200
    spoofed = call(gw, "/limited/x", carol, headers={"x-user": "dave"})
    assert spoofed.status == 429


# -- remote JWKS --------------------------------------------------------------------------------------


def partner_token(key, kid: str) -> str:
    # A fresh jti: a token Envoy has already verified is answered from its token cache (until the
    # token expires, even after its key is retired), so each check here uses a token never seen.
    now = _now()
    return pyjwt.encode({"iss": "https://partner.test", "sub": "p", "exp": now + 600, "jti": secrets.token_hex(8)},
                        key, algorithm="RS256", headers={"kid": kid})


def test_a_remote_jwks_is_fetched_by_envoy(gw: Meshgate) -> None:
    hdr = {"x-partner-token": partner_token(PARTNER_1, "p1")}
    r = wait_until(lambda: (r := request(gw.port, "/partners/x", headers=hdr)).status == 200 and r,
                   timeout=15, what="Envoy to fetch the partner's keys")
    assert r.upstream is not None
    assert _JWKSServer.fetches >= 1
    # The token is read from the configured header only.
    assert call(gw, "/partners/x", partner_token(PARTNER_1, "p1")).status == 401


def test_a_rotated_remote_key_is_picked_up_without_a_restart(gw: Meshgate) -> None:
    pid = gw.envoy_pid
    new = {"x-partner-token": partner_token(PARTNER_2, "p2")}
    assert request(gw.port, "/partners/x", headers=new).status == 401  # not published yet
    _JWKSServer.body = _jwks(("p2", PARTNER_2)).encode()  # the partner rotates its key
    wait_until(lambda: request(gw.port, "/partners/x", headers=new).status == 200, timeout=15,
               what="the rotated key (cacheDuration 1s)")
    wait_until(lambda: request(gw.port, "/partners/x", headers={"x-partner-token": partner_token(PARTNER_1, "p1")})
               .status == 401, timeout=15, what="the retired key to stop working (for tokens not verified before)")
    assert gw.envoy_pid == pid


def _readyz(gw: Meshgate) -> dict:
    try:
        with urllib.request.urlopen(f"{gw.status_url}/readyz", timeout=5) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def test_the_idps_jwks_is_a_degrading_dependency_in_readyz(gw: Meshgate) -> None:
    """/readyz checks each remote JWKS the config names; an IdP that is down degrades (Envoy
    keeps the keys it fetched), it does not make the gateway unready."""
    url = gw.env["PARTNER_JWKS_URL"]
    check = wait_until(lambda: (c := _readyz(gw)["checks"]["dependencies"].get(f"jwks:{url}")) and c["ok"] and c,
                       timeout=10, what="the JWKS check")
    assert check["gating"] is False and check["message"].endswith("ok, 1 key(s)"), check
    assert check["from"] == "the control plane" and check["last_check"] > 0
    _JWKSServer.failing = True
    try:
        body = wait_until(lambda: (b := _readyz(gw)) and not b["checks"]["dependencies"][f"jwks:{url}"]["ok"] and b,
                          timeout=10, what="the JWKS check to fail")
        assert body["ready"] is True  # degraded, not unready
        assert body["checks"]["dependencies"][f"jwks:{url}"]["error"] == "HTTP 503"
    finally:
        _JWKSServer.failing = False
    wait_until(lambda: _readyz(gw)["checks"]["dependencies"][f"jwks:{url}"]["ok"], timeout=10, what="the IdP back")


# -- API keys and basic auth ---------------------------------------------------------------------


def test_an_api_key_in_the_header_or_the_query_passes(gw: Meshgate) -> None:
    r = request(gw.port, "/keyed/x", headers={"x-api-key": SECRETS["KEY_A"]})
    assert r.status == 200, r.body
    assert r.json["headers"]["x-client-id"] == "client-a"  # forwarded to the upstream
    assert "x-api-key" not in r.json["headers"]  # sanitize: the key itself is not
    r = request(gw.port, f"/keyed/x?api_key={SECRETS['KEY_B']}&page=2")
    assert r.status == 200 and r.json["headers"]["x-client-id"] == "client-b"
    assert SECRETS["KEY_B"] not in json.dumps(r.json)  # nor in the query the upstream sees


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"x-other": "x"}], ids=["none", "wrong", "elsewhere"])
def test_a_missing_or_unknown_api_key_is_refused(gw: Meshgate, headers: dict) -> None:
    r = request(gw.port, "/keyed/x", headers=headers)
    assert r.status == 401 and r.upstream is None


def test_basic_auth(gw: Meshgate) -> None:
    def basic(user: str, password: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    assert request(gw.port, "/console/x", headers=basic("alice", PASSWORD)).status == 200
    for headers in ({}, basic("alice", "wrong"), basic("bob", PASSWORD)):
        r = request(gw.port, "/console/x", headers=headers)
        assert r.status == 401 and r.upstream is None


def test_a_revoked_api_key_stops_working_on_reload(gw: Meshgate) -> None:
    assert request(gw.port, "/keyed/x", headers={"x-api-key": SECRETS["KEY_B"]}).status == 200
    write(gw.config_dir / "api-keys.yaml", (CONFIG / "api-keys.yaml").read_text().replace("  client-b: ${KEY_B}\n", ""))
    wait_until(lambda: request(gw.port, "/keyed/x", headers={"x-api-key": SECRETS["KEY_B"]}).status == 401,
               what="client-b's key to be refused")
    assert request(gw.port, "/keyed/x", headers={"x-api-key": SECRETS["KEY_A"]}).status == 200


def test_no_secret_shows_in_logs_status_metrics_or_translate(gw: Meshgate) -> None:
    secret_values = [*SECRETS.values(), PASSWORD, base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()]
    request(gw.port, "/keyed/x", headers={"x-api-key": "guess-" + SECRETS["KEY_A"]})  # a failed attempt is logged
    seen = {
        "meshgate output": gw.output(),
        "/status": json.dumps(gw.status()),
        "/status/objects": json.dumps(gw.objects()),
        "/metrics": request(gw.status_port, "/metrics").body.decode(),
    }
    env = {**dict(__import__("os").environ), **gw.env}
    translate = subprocess.run([sys.executable, "-m", "meshgate", "translate", str(gw.config_dir)], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60)
    assert translate.returncode == 0, translate.stderr
    seen["meshgate translate"] = translate.stdout + translate.stderr
    assert "[redacted]" in translate.stdout
    for where, text in seen.items():
        for value in secret_values:
            assert value not in text, f"a configured secret shows in {where}"


# -- status ----------------------------------------------------------------------------------------


def test_policies_are_accepted(gw: Meshgate) -> None:
    policies = {o["name"]: o for o in gw.objects() if o["kind"] == "SecurityPolicy"}
    assert set(policies) == {"api-jwt", "status-optional", "admin-rules", "partners", "api-keys", "console-users"}
    for name, policy in policies.items():
        accepted = next(c for c in policy["conditions"] if c["type"] == "Accepted")
        assert accepted["status"] == "True", (name, policy)
