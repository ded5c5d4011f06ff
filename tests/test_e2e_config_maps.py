"""ConfigMaps in files with a real Envoy: a JWT provider's key set from a ConfigMap (`localJWKS`
`valueRef`, Envoy Gateway's shape). Editing the ConfigMap's file rotates the key Envoy verifies
with, without touching the policy; a ConfigMap that goes away leaves the route closed (500), never
open. (Kubernetes mode: tests/test_e2e_kubernetes.py, an error page from a ConfigMap.)"""

from __future__ import annotations

import json
import time

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import Meshgate, free_port, request, wait_until, write

pytestmark = pytest.mark.timeout(120)

KEY_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_B = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ISSUER = "https://auth.example.com"


def jwks(kid: str, key) -> str:  # noqa: ANN001
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg="RS256", use="sig")
    return json.dumps({"keys": [jwk]})


def token(kid: str, key) -> str:  # noqa: ANN001
    now = int(time.time())
    return pyjwt.encode({"iss": ISSUER, "sub": "alice", "iat": now, "exp": now + 600}, key, algorithm="RS256",
                        headers={"kid": kid})


def config_map(value: str) -> str:
    # A JSON string is a YAML scalar: the key set goes in as written.
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: company-keys}}\ndata:\n  jwks: {json.dumps(value)}\n"


ROUTES = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners: [{{name: http, protocol: HTTP, port: {http}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{group: meshgate.io, kind: Backend, name: app}}]}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata:
  name: app
  annotations: {{meshgate.io/sample-upstream: echo}}
spec:
  endpoints: [{{address: 127.0.0.1, port: {app}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: company-jwt}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}}]
  jwt:
    providers:
      - name: company
        issuer: {issuer}
        localJWKS:
          type: ValueRef
          valueRef: {{group: "", kind: ConfigMap, name: company-keys}}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("config-maps")
    config = work / "config"
    config.mkdir()
    http = free_port()
    write(config / "routes.yaml", ROUTES.format(http=http, app=free_port(), issuer=ISSUER))
    write(config / "keys.yaml", config_map(jwks("a", KEY_A)))
    mg = Meshgate([str(config)], work)
    mg.config_dir, mg.port = config, http
    try:
        mg.start()
        yield mg
        assert mg.stop() == 0, mg.output()
    finally:
        mg.stop()


def status(gw: Meshgate, bearer: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return request(gw.port, "/", headers=headers).status


def test_the_key_set_comes_from_the_config_map_and_rotates_live(gw: Meshgate) -> None:
    wait_until(lambda: status(gw, token("a", KEY_A)) == 200, timeout=15, what="key A's token to pass")
    assert status(gw) == 401
    assert status(gw, token("b", KEY_B)) == 401

    # Rotation: only the ConfigMap changes; Envoy now verifies with key B.
    write(gw.config_dir / "keys.yaml", config_map(jwks("b", KEY_B)))
    wait_until(lambda: status(gw, token("b", KEY_B)) == 200, timeout=15, what="key B's token to pass")
    assert status(gw, token("a", KEY_A)) == 401


def test_a_config_map_that_is_not_a_key_set_leaves_the_route_closed(gw: Meshgate) -> None:
    write(gw.config_dir / "keys.yaml", config_map('{"keys": []}'))
    # Never served unprotected: the route answers 500 until the ConfigMap is fixed.
    wait_until(lambda: status(gw, token("b", KEY_B)) == 500, timeout=15, what="the route to close")
    assert status(gw) == 500
    objects = {(o["kind"], o["name"]): o for o in json.loads(request(gw.status_port, "/status/objects").body)}
    resolved = next(c for c in objects[("SecurityPolicy", "company-jwt")]["conditions"] if c["type"] == "ResolvedRefs")
    assert resolved["status"] == "False"
    assert "ConfigMap default/company-keys key jwks must be a JSON Web Key Set" in resolved["message"]
    write(gw.config_dir / "keys.yaml", config_map(jwks("a", KEY_A)))
    wait_until(lambda: status(gw, token("a", KEY_A)) == 200, timeout=15, what="the fixed ConfigMap to serve")
