"""SecurityPolicy → IR: which policy applies to each route rule on each listener, merged along
Gateway → listener → route → rule (the merge rule of `meshgate.gatewayapi.policies`: the more
specific target wins, field by field), resolved into `ir.Security` on the rule's IR routes.

A route attached to two listeners can be secured differently on each (a policy on one
listener): its IR routes are resolved per listener. A remote JWKS URL becomes a cluster of its
own (`jwks/<scheme>/<host>:<port>`), through which Envoy fetches the keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from meshgate import ir
from meshgate.api.models import duration_seconds
from meshgate.api.security_policy import SecurityPolicy
from meshgate.gatewayapi.policies import attach_policies, merged_spec
from meshgate.gatewayapi.status import Condition

if TYPE_CHECKING:
    from meshgate.gatewayapi.translator import _Translator

DEFAULT_JWKS_CACHE_S = 300.0
# The edge companion (meshgate edge): the cluster Envoy's ext_authz calls, and where the companion
# listens unless told otherwise (`meshgate edge --address`).
EDGE_COMPANION_CLUSTER = "meshgate/edge-companion"
EDGE_COMPANION_DEFAULT_ADDRESS = ("127.0.0.1", 18002)
MIN_SIGNING_KEY_BYTES = 16
# The trusted CAs for a remote JWKS over https: the system bundle (Debian's ca-certificates),
# read by Envoy from its own machine.
SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
SYSTEM_CA_SECRET = "meshgate/system-ca"


def edge_companion_cluster() -> ir.Cluster:
    """The cluster through which Envoy calls the edge companion (gRPC: ext_authz, rate-limit
    service, quota server): EDS, with a default endpoint that `meshgate run` (and a deployment)
    replaces with where the companion listens."""
    return ir.Cluster(name=EDGE_COMPANION_CLUSTER, endpoints=(ir.Endpoint(*EDGE_COMPANION_DEFAULT_ADDRESS, 1),),
                      lb="RoundRobin", protocol="GRPC", connect_timeout_s=1.0, dns=False)


class SecurityPolicies:
    """The SecurityPolicies of one translation: their status, and their effect on routes."""

    def __init__(self, t: _Translator) -> None:
        self.t = t
        self.winners = attach_policies(t, [p for p in t.policies if isinstance(p, SecurityPolicy)])
        self.jwks_clusters: dict[str, ir.Cluster] = {}
        self.secrets: dict[str, ir.CASecret] = {}
        self._resolved: dict[tuple, ir.Security | None] = {}
        self._applied: dict[tuple[int, ir.Security], ir.Route] = {}

    def apply(self, route: Any, matches: list, built: list, gateway_key: tuple, listener: str) -> list:
        """`built` ((precedence key, IR route) per match) as served on one listener, with the
        SecurityPolicy in force there; the same objects where none applies."""
        if not self.winners:
            return built
        key = self.t.key_of[id(route)]
        out = []
        for (where, _), (precedence, ir_route) in zip(matches, built):
            rule_name = route.spec.rules[where[2]].name
            chain = ((gateway_key, None), (gateway_key, listener), (key, None)) + (((key, rule_name),) if rule_name else ())
            if chain not in self._resolved:
                spec = merged_spec(self.winners, list(chain))
                if "jwt" in spec and not spec["jwt"].get("providers"):
                    self._no_providers(route, chain)
                    spec = {k: v for k, v in spec.items() if k != "jwt"}
                self._resolved[chain] = self._security(spec, chain) if spec else None
            security = self._resolved[chain]
            if security is None:
                out.append((precedence, ir_route))
                continue
            # One object per (route, security): the xDS translator's memo then serializes it once.
            secured = self._applied.get((id(ir_route), security))
            if secured is None or secured.name != ir_route.name:
                secured = self._applied[(id(ir_route), security)] = replace(ir_route, security=security)
            out.append((precedence, secured))
        return out

    def clusters(self) -> tuple[ir.Cluster, ...]:
        return tuple(self.jwks_clusters[n] for n in sorted(self.jwks_clusters))

    # -- internals ---------------------------------------------------------------------------

    def _no_providers(self, route: Any, chain: tuple) -> None:
        """A `jwt` with no providers in force (say `optional: true` alone, with no less specific
        policy giving providers): nothing to verify with, so the policy says so."""
        for target in reversed(chain):
            policy = self.winners.get(target)
            if policy is not None and policy.spec.jwt is not None:
                self.t.status.condition(policy, Condition(
                    "Accepted", "False", "Invalid",
                    f"jwt has no providers for {route.ref}: neither this policy nor a policy on its Gateway or "
                    "route sets jwt.providers"), ("spec", "jwt", "providers"))
                return

    def _security(self, spec: Mapping[str, Any], chain: tuple) -> ir.Security | None:
        jwt, authorization = spec.get("jwt"), spec.get("authorization")
        api_key, basic = spec.get("api_key_auth"), spec.get("basic_auth")
        if all(spec.get(k) is None for k in ("jwt", "authorization", "api_key_auth", "basic_auth", "oidc",
                                             "request_signature")):
            return None
        problems: list[str] = []
        oidc = spec.get("oidc")
        signature = spec.get("request_signature")
        return ir.Security(
            signature=self._signature(signature, chain, problems) if signature is not None else None,
            jwt=self._jwt(jwt, chain, problems) if jwt else None,
            oidc=self._oidc(oidc, chain, problems) if oidc is not None else None,
            api_key=self._api_key(api_key, chain, problems) if api_key is not None else None,
            basic=self._basic(basic, chain, problems) if basic is not None else None,
            authorization=_authorization(authorization) if authorization is not None else None,
            invalid="; ".join(problems) or None)

    # -- Secrets: API keys and htpasswd ---------------------------------------------------------

    def _source(self, chain: tuple, field: str) -> SecurityPolicy:
        """The most specific policy of `chain` that sets `field`: the one whose namespace its
        Secret references are relative to (and whose status reports them)."""
        for target in reversed(chain):
            policy = self.winners.get(target)
            if policy is not None and getattr(policy.spec, field) is not None:
                return policy
        raise AssertionError(field)  # the merged spec has the field, so some policy set it

    def _secret(self, policy: SecurityPolicy, ref: Mapping[str, Any], where: tuple, problems: list[str]):
        """The Secret a policy names, or None with the reason in its status and in `problems`."""
        ns = ref.get("namespace") or policy.metadata.namespace
        secret = self.t.secrets.get((ns, ref["name"]))
        why = None
        if secret is None:
            why = self.t._missing("", "Secret", ns, ref["name"])
        elif ns != policy.metadata.namespace and not self.t.granted(policy, "", "Secret", ns, ref["name"]):
            why = f"Secret {ns}/{ref['name']} is in another namespace and no ReferenceGrant allows it"
        if why is not None:
            self._unresolved(policy, why, where, problems)
            return None
        return secret

    def _unresolved(self, policy: SecurityPolicy, why: str, where: tuple, problems: list[str]) -> None:
        self.t.status.condition(policy, Condition("ResolvedRefs", "False", "InvalidReference", why), where)
        problems.append(f"{policy.ref}: {why}")

    def _api_key(self, spec: Mapping[str, Any], chain: tuple, problems: list[str]) -> ir.ApiKeyAuth:
        policy = self._source(chain, "api_key_auth")
        credentials: dict[str, str] = {}
        for i, ref in enumerate(spec.get("credential_refs", ())):
            secret = self._secret(policy, ref, ("spec", "apiKeyAuth", "credentialRefs", i), problems)
            for client, key in _secret_values(secret).items() if secret is not None else ():
                credentials.setdefault(client, key)  # a client in two Secrets: the first one's key
        if len(set(credentials.values())) != len(credentials):
            self._unresolved(policy, "two clients have the same API key", ("spec", "apiKeyAuth", "credentialRefs"),
                             problems)
        sources = []
        for source in spec.get("extract_from", ()):
            for kind, names in (("header", source.get("headers")), ("query", source.get("params")),
                                ("cookie", source.get("cookies"))):
                sources.extend((kind, n) for n in names or ())
        return ir.ApiKeyAuth(credentials=tuple(sorted(credentials.items())), sources=tuple(sources),
                             forward_client_id_header=spec.get("forward_client_id_header"),
                             sanitize=bool(spec.get("sanitize", False)))

    def _signature(self, spec: Mapping[str, Any], chain: tuple, problems: list[str]) -> ir.RequestSignature:
        """requestSignature: keys from Secrets (like apiKeyAuth's), for the edge companion only."""
        from meshgate.edge.rfc9421 import ED25519, load_public_key, public_key_bytes

        policy = self._source(chain, "request_signature")
        keys: dict[str, bytes] = {}
        for i, ref in enumerate(spec.get("key_refs", ())):
            where = ("spec", "requestSignature", "keyRefs", i)
            secret = self._secret(policy, ref, where, problems)
            for key_id, key in _secret_values(secret).items() if secret is not None else ():
                if len(key.encode()) < MIN_SIGNING_KEY_BYTES:
                    # Say which key id, never what it holds.
                    self._unresolved(policy, f"signing key {key_id!r} is shorter than {MIN_SIGNING_KEY_BYTES} bytes",
                                     where, problems)
                    continue
                keys.setdefault(key_id, key.encode())  # a key id in two Secrets: the first one's key
        algorithms: dict[str, str] = {}
        for i, ref in enumerate(spec.get("public_key_refs", ())):
            # ed25519 public keys (RFC9421): parsed here, so a bad one is this policy's error, and
            # the companion gets the 32 raw bytes.
            where = ("spec", "requestSignature", "publicKeyRefs", i)
            secret = self._secret(policy, ref, where, problems)
            for key_id, text in _secret_values(secret).items() if secret is not None else ():
                if key_id in keys:
                    self._unresolved(policy, f"key id {key_id!r} is both a shared key and a public key", where,
                                     problems)
                    continue
                try:
                    keys[key_id] = public_key_bytes(load_public_key(text))
                except ValueError as exc:
                    self._unresolved(policy, f"public key {key_id!r} is not an ed25519 public key: {exc}", where,
                                     problems)
                    continue
                algorithms[key_id] = ED25519
        settings = dict(
            headers=tuple(spec.get("headers", ())),
            max_skew_s=int(duration_seconds(spec["max_clock_skew"])) if "max_clock_skew" in spec else 300,
            max_body_bytes=int(spec.get("max_body_size", 65536)),
            timeout_s=duration_seconds(spec["timeout"]) if "timeout" in spec else 0.5,
            failure_mode_allow=bool(spec.get("failure_mode_allow", False)),
        )
        extra = dict(scheme=spec.get("scheme", "Meshgate"), nonce_store=spec.get("nonce_store", "Memory"))
        if extra["scheme"] == "RFC9421":
            extra["components"] = tuple(spec.get("components") or ("@method", "@authority", "@path", "@query"))
        # Named after the policy and its settings, not its keys: a rotated key changes the
        # companion's config only, and Envoy's stays the same (nothing to re-push, nothing of the
        # key in Envoy's config). Settings left at their defaults are not in the digest, so adding
        # a setting doesn't rename every policy.
        named = {**settings, **{k: v for k, v in extra.items() if v not in ("Meshgate", "Memory")}}
        name = f"{policy.metadata.namespace}/{policy.metadata.name}/{_digest(tuple(sorted(named.items())))}"
        self._companion_cluster()
        return ir.RequestSignature(policy=name, keys=tuple(sorted(keys.items())),
                                   algorithms=tuple(sorted(algorithms.items())), **settings, **extra)

    def _companion_cluster(self) -> None:
        """The cluster through which Envoy calls the edge companion (gRPC): EDS, with a default
        endpoint that `meshgate run` (and a deployment) replaces with where the companion listens."""
        if EDGE_COMPANION_CLUSTER not in self.jwks_clusters:
            self.jwks_clusters[EDGE_COMPANION_CLUSTER] = edge_companion_cluster()

    def _oidc(self, spec: Mapping[str, Any], chain: tuple, problems: list[str]) -> ir.OIDC:
        policy = self._source(chain, "oidc")
        where = ("spec", "oidc", "clientSecret")
        secret = self._secret(policy, spec["client_secret"], where, problems)
        client_secret = _secret_values(secret).get("client-secret") if secret is not None else None
        if secret is not None and client_secret is None:
            self._unresolved(policy, f"Secret {secret.metadata.namespace}/{secret.metadata.name} has no client-secret key",
                             where, problems)
        provider = spec["provider"]
        redirect = spec.get("redirect_url") or DEFAULT_REDIRECT_URL
        settings = dict(
            client_id=spec["client_id"], authorization_endpoint=provider["authorization_endpoint"],
            token_endpoint=provider["token_endpoint"],
            token_cluster=self._url_cluster(provider["token_endpoint"], "oauth2"),
            redirect_uri=redirect, redirect_path=_url_path(redirect),
            logout_path=spec.get("logout_path", "/logout"), scopes=tuple(spec.get("scopes", ())),
            resources=tuple(spec.get("resources", ())),
            forward_access_token=bool(spec.get("forward_access_token", False)),
            refresh_token=bool(spec.get("refresh_token", False)),
            default_token_ttl_s=duration_seconds(spec["default_token_ttl"]) if "default_token_ttl" in spec else None,
            default_refresh_token_ttl_s=duration_seconds(spec["default_refresh_token_ttl"])
            if "default_refresh_token_ttl" in spec else None,
            cookie_domain=spec.get("cookie_domain"),
            deny_redirect=tuple((h["name"].lower(), h.get("type", "Exact"), h["value"])
                                for h in spec.get("deny_redirect", {}).get("headers", ())),
            pass_through_auth_header=bool(spec.get("pass_through_auth_header", False)),
        )
        secret_value = (client_secret or "").encode()
        # The secret's value is part of the name: a rotated client secret is a new filter config.
        name = f"oidc-{_digest((tuple(sorted(settings.items())), hashlib.sha256(secret_value).hexdigest()))}"
        client, hmac_name = f"oauth2/{name}/client-secret", f"oauth2/{name}/hmac"
        self.secrets[client] = ir.GenericSecret(client, secret_value)
        # The session cookies' signing key: derived from the client secret, so every replica
        # (and every reload) signs alike without a key of its own to distribute.
        self.secrets[hmac_name] = ir.GenericSecret(
            hmac_name, hmac.new(secret_value, b"meshgate oauth2 session cookies " + name.encode(), hashlib.sha256).digest())
        return ir.OIDC(name=name, client_secret=client, hmac_secret=hmac_name, **settings)

    def _basic(self, spec: Mapping[str, Any], chain: tuple, problems: list[str]) -> ir.BasicAuth:
        policy = self._source(chain, "basic_auth")
        where = ("spec", "basicAuth", "users")
        secret = self._secret(policy, spec["users"], where, problems)
        htpasswd = _secret_values(secret).get(".htpasswd") if secret is not None else None
        if secret is not None and htpasswd is None:
            self._unresolved(policy, f"Secret {secret.metadata.namespace}/{secret.metadata.name} has no .htpasswd key",
                             where, problems)
        lines = [line.strip() for line in (htpasswd or "").splitlines() if line.strip() and not line.startswith("#")]
        for n, line in enumerate(lines, 1):
            user, _, hashed = line.partition(":")
            if not user or not re.fullmatch(r"\{SHA\}[A-Za-z0-9+/]{27}=", hashed):
                # Say which line, never what it holds.
                self._unresolved(policy, f".htpasswd line {n}: not user:{{SHA}}hash (Envoy supports only SHA "
                                 "hashes: htpasswd -s)", where, problems)
                break
        return ir.BasicAuth(htpasswd="\n".join(lines) + "\n")

    def _jwt(self, jwt: Mapping[str, Any], chain: tuple, problems: list[str]) -> ir.JwtRequirement | None:
        # A localJWKS whose ConfigMap couldn't be read is still a valueRef (config_maps.py said why
        # in the policy's status): nothing to verify tokens with, so the routes answer 500.
        unread = [p["name"] for p in jwt["providers"] if (p.get("local_jwks") or {}).get("type") == "ValueRef"]
        if unread:
            problems.append(f"{self._source(chain, 'jwt').ref}: the JWKS of provider {', '.join(unread)} can't be "
                            "read from its ConfigMap")
            return None
        providers = tuple(self._provider(p) for p in jwt["providers"])
        optional = bool(jwt.get("optional", False))
        return ir.JwtRequirement(name=f"jwt-{_digest((providers, optional))}", providers=providers, optional=optional)

    def _provider(self, p: Mapping[str, Any]) -> ir.JwtProvider:
        extract = p.get("extract_from", {})
        remote, local = p.get("remote_jwks"), p.get("local_jwks")
        fields: dict[str, Any] = dict(
            label=p["name"], issuer=p.get("issuer"), audiences=tuple(p.get("audiences", ())),
            jwks_inline=local["inline"] if local else None,
            jwks_uri=remote["uri"] if remote else None,
            jwks_cluster=self._jwks_cluster(remote["uri"]) if remote else None,
            jwks_cache_s=duration_seconds(remote["cache_duration"]) if remote and "cache_duration" in remote
            else DEFAULT_JWKS_CACHE_S,
            headers=tuple((h["name"], h.get("value_prefix", "")) for h in extract.get("headers", ())),
            cookies=tuple(extract.get("cookies", ())), params=tuple(extract.get("params", ())),
            claim_to_headers=tuple((c["header"], c["claim"]) for c in p.get("claim_to_headers", ())),
            recompute_route=bool(p.get("recompute_route", False)),
        )
        # Named by content: the same provider in two policies is one Envoy provider, and its name
        # (and so the listener's config) stays the same across reloads.
        return ir.JwtProvider(name=f"{p['name']}-{_digest(tuple(sorted(fields.items())))}", **fields)

    def _jwks_cluster(self, uri: str) -> str:
        return self._url_cluster(uri, "jwks")

    def _url_cluster(self, uri: str, kind: str) -> str:
        """The cluster through which Envoy reaches `uri`'s host itself (a JWKS, a token endpoint)."""
        m = re.fullmatch(r"(https?)://([^/:\[\]]+|\[[^\]]+\])(?::(\d+))?(/.*)?", uri)
        assert m is not None, uri  # the schema checked the URL
        scheme, host = m.group(1), m.group(2).strip("[]")
        port = int(m.group(3) or (443 if scheme == "https" else 80))
        name = f"{kind}/{scheme}/{host}:{port}"
        if name not in self.jwks_clusters:  # (all such clusters, not only JWKS ones)
            tls = None
            if scheme == "https":
                # Verified against the system's CAs, for the URL's host name (what a browser does).
                self.secrets.setdefault(SYSTEM_CA_SECRET, ir.CASecret(SYSTEM_CA_SECRET, b"", ca_file=SYSTEM_CA_FILE))
                tls = ir.UpstreamTLS(sni=None if _is_ip(host) else host, verify_name=None if _is_ip(host) else host,
                                     ca_secret=SYSTEM_CA_SECRET, client_secret=None, alpn=("http/1.1",))
            self.jwks_clusters[name] = ir.Cluster(
                name=name, endpoints=(ir.Endpoint(host, port, 1),), lb="RoundRobin", protocol="HTTP1",
                connect_timeout_s=5.0, dns=not _is_ip(host), tls=tls)
        return name


def _authorization(spec: Mapping[str, Any]) -> ir.Authorization:
    rules = []
    for i, rule in enumerate(spec.get("rules", ())):
        principal = rule["principal"]
        jwt = principal.get("jwt") or {}
        rules.append(ir.AuthzRule(
            name=rule.get("name") or f"rule-{i}",
            allow=rule["action"] == "Allow",
            methods=tuple(rule.get("operation", {}).get("methods", ())),
            principal=ir.AuthzPrincipal(
                cidrs=tuple(principal.get("client_cidrs", ())),
                jwt_provider=jwt.get("provider"),
                claims=tuple((c["name"], c.get("value_type") == "StringArray", tuple(c["values"]))
                             for c in jwt.get("claims", ())),
                scopes=tuple(jwt.get("scopes", ())),
                headers=tuple((h["name"].lower(), tuple(h["values"])) for h in principal.get("headers", ())),
            )))
    return ir.Authorization(rules=tuple(rules), default_allow=spec.get("default_action") == "Allow")


# Envoy Gateway's default: the callback on the host and scheme the browser used.
DEFAULT_REDIRECT_URL = "%REQ(x-forwarded-proto)%://%REQ(:authority)%/oauth2/callback"


def _url_path(url: str) -> str:
    """The path of a redirect URL, which may start with Envoy formatters (%REQ(...)%)."""
    rest = url.split("://", 1)[1] if "://" in url else url
    rest = re.sub(r"%[A-Z_]+\([^)]*\)%", "host", rest)
    path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return path.split("?", 1)[0]


def _secret_values(secret: Any) -> dict[str, str]:
    """A Secret's entries as text: stringData as is, data base64-decoded (invalid base64 and
    non-UTF-8 entries are skipped; the Secret's own status reports base64)."""
    out: dict[str, str] = {}
    for name, value in secret.data.items():
        try:
            out[name] = base64.b64decode(value, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            continue
    out.update(secret.string_data)
    return out


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()[:10]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


__all__ = ["SecurityPolicies", "SYSTEM_CA_FILE"]
