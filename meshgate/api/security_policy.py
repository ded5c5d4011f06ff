"""SecurityPolicy: who may call a Gateway, listener, route or rule (Envoy Gateway's SecurityPolicy).

Shaped and named like Envoy Gateway's `SecurityPolicy` (`gateway.envoyproxy.io/v1alpha1`), in
meshgate's group: `jwt` (verified by Envoy's `jwt_authn` filter), `apiKeyAuth` (`api_key_auth`), `basicAuth`
(`basic_auth`) and `authorization` (Envoy's `rbac` filter, on client addresses, methods,
headers and JWT claims and scopes). Every check runs inside Envoy; no Python on the request
path. The other fields of Envoy Gateway's kind (`oidc`, `extAuth`, `cors`) are rejected with an
error saying so.

How it attaches and merges is `meshgate.gatewayapi.security`; this module is only shapes.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from meshgate.api.models import (
    MESHGATE_V1ALPHA1,
    ConfigMapReference,
    Duration,
    HeaderName,
    Method,
    Model,
    Resource,
    SecretObjectReference,
)
from meshgate.api.policies import GATEWAY_GROUP, PolicyTargetReference, _reject_unsupported

# A JWT claim name, or a dotted path into nested claims ("org.department").
CLAIM_RE = r"^[A-Za-z0-9_:/.-]{1,253}$"


# A cookie or query parameter name (an RFC 9110 token).
ParamName = Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}$")]


class JWTHeaderExtractor(Model):
    name: HeaderName
    value_prefix: str | None = Field(
        None, max_length=64, description='Stripped before the token, e.g. "Bearer " (with the space).')


class JWTExtractor(Model):
    """Where the token is read from. Default: `Authorization: Bearer <token>`, then the
    `access_token` query parameter."""

    headers: list[JWTHeaderExtractor] = Field(default_factory=list, max_length=8)
    cookies: list[ParamName] = Field(default_factory=list, max_length=8)
    params: list[ParamName] = Field(default_factory=list, max_length=8)


class RemoteJWKS(Model):
    uri: str = Field(min_length=1, max_length=253,
                     description="http(s) URL of the JSON Web Key Set. Envoy fetches it itself, through a "
                     "cluster meshgate creates for the URL's host, and keeps it cached.")
    cache_duration: Duration | None = Field(
        None, description="meshgate extension. How long Envoy keeps the fetched keys before fetching them "
        "again in the background (default 5m). Keys are refreshed on this timer only: Envoy 1.40 does not "
        "re-fetch on an unknown `kid`.")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {k: "the JWKS host is reached directly (from uri)"
                                          for k in ("backendRef", "backendRefs", "backendSettings")}, "remoteJWKS")

    @field_validator("uri")
    @classmethod
    def _uri(cls, uri: str) -> str:
        return check_http_url(uri)


# The ConfigMap key a localJWKS valueRef reads (else the ConfigMap's only or first key), as in Envoy Gateway.
JWKS_CONFIG_MAP_KEY = "jwks"


def jwks_problem(text: str, what: str = "inline") -> str | None:
    """Why `text` is not a public JSON Web Key Set Envoy can use, or None."""
    try:
        keys = json.loads(text)
    except ValueError as exc:
        return f"{what} is not JSON: {exc}"
    if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list) or not keys["keys"]:
        return f'{what} must be a JSON Web Key Set: {{"keys": [ ... ]}} with at least one key'
    for key in keys["keys"]:
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            return 'every key of the set needs "kty"'
        if any(k in key for k in ("d", "p", "q", "dp", "dq", "qi", "k")) and key.get("kty") != "oct":
            return "the key set holds a private key: give Envoy the public keys only"
    return None


class LocalJWKS(Model):
    type: Literal["Inline", "ValueRef"] = "Inline"
    inline: str | None = Field(None, max_length=65536, description="The JSON Web Key Set, as JSON.")
    value_ref: ConfigMapReference | None = Field(
        None, description=f"A ConfigMap in the policy's namespace holding the key set under key `{JWKS_CONFIG_MAP_KEY}` "
        "(else its first key, alphabetically); a change to it takes effect live.")

    @model_validator(mode="after")
    def _jwks(self) -> LocalJWKS:
        if self.type == "ValueRef":
            if self.value_ref is None or self.inline is not None:
                raise ValueError("type ValueRef needs valueRef (and no inline)")
            return self
        if self.inline is None or self.value_ref is not None:
            raise ValueError("type Inline needs inline (and no valueRef)")
        problem = jwks_problem(self.inline)
        if problem:
            raise ValueError(problem)
        return self


class ClaimToHeader(Model):
    header: HeaderName
    claim: str = Field(pattern=CLAIM_RE)


class JWTProvider(Model):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    issuer: str | None = Field(None, max_length=253, description="The `iss` a token must carry (not checked if unset).")
    audiences: list[str] = Field(default_factory=list, max_length=8,
                                 description="A token's `aud` must hold one of these (not checked if empty).")
    remote_jwks: RemoteJWKS | None = Field(None, alias="remoteJWKS")
    local_jwks: LocalJWKS | None = Field(None, alias="localJWKS")
    claim_to_headers: list[ClaimToHeader] = Field(default_factory=list, max_length=16)
    recompute_route: bool | None = Field(None, description="Choose the route again after the claim headers are set.")
    extract_from: JWTExtractor | None = None

    @model_validator(mode="after")
    def _one_jwks(self) -> JWTProvider:
        if (self.remote_jwks is None) == (self.local_jwks is None):
            raise ValueError("exactly one of remoteJWKS and localJWKS must be set")
        if self.recompute_route and not self.claim_to_headers:
            raise ValueError("recomputeRoute needs claimToHeaders")
        return self


class JWT(Model):
    optional: bool | None = Field(
        None, description="A request without a token passes (a request with a bad token is still refused).")
    providers: list[JWTProvider] | None = Field(
        None, min_length=1, max_length=4,
        description="A token verified by any one of them is accepted. May be left out by a policy on a more "
        "specific target that only changes `optional` (meshgate extension: the providers come from the "
        "less specific policy, by the merge rule).")

    @field_validator("providers")
    @classmethod
    def _unique(cls, providers: list[JWTProvider] | None) -> list[JWTProvider] | None:
        names = [p.name for p in providers or ()]
        if len(set(names)) != len(names):
            raise ValueError("provider names must be unique")
        return providers


class JWTClaim(Model):
    name: str = Field(pattern=CLAIM_RE)
    value_type: Literal["String", "StringArray"] = "String"
    values: list[str] = Field(min_length=1, max_length=16)


class JWTPrincipal(Model):
    provider: str = Field(min_length=1, max_length=253)
    claims: list[JWTClaim] = Field(default_factory=list, max_length=16)
    scopes: list[str] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _something(self) -> JWTPrincipal:
        if not self.claims and not self.scopes:
            raise ValueError("at least one of claims or scopes must be specified")
        for scope in self.scopes:
            if not scope or " " in scope:
                raise ValueError(f"{scope!r} is not a scope (one word, no spaces)")
        return self


class AuthorizationHeaderMatch(Model):
    name: HeaderName
    values: list[str] = Field(min_length=1, max_length=256)


class Principal(Model):
    client_cidrs: list[str] = Field(default_factory=list, max_length=256, alias="clientCIDRs")
    jwt: JWTPrincipal | None = None
    headers: list[AuthorizationHeaderMatch] = Field(default_factory=list, max_length=256)

    @field_validator("client_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"{cidr[:60]!r} is not a CIDR range like 10.0.0.0/8 ({exc})") from None
        return cidrs

    @model_validator(mode="after")
    def _something(self) -> Principal:
        if not self.client_cidrs and self.jwt is None and not self.headers:
            raise ValueError("at least one of clientCIDRs, jwt or headers must be specified")
        return self


class Operation(Model):
    methods: list[Method] = Field(min_length=1, max_length=16)


class AuthorizationRule(Model):
    name: str | None = Field(None, min_length=1, max_length=253)
    action: Literal["Allow", "Deny"]
    operation: Operation | None = None
    principal: Principal


class Authorization(Model):
    rules: list[AuthorizationRule] = Field(default_factory=list, max_length=128,
                                           description="Evaluated in order; the first rule that matches decides.")
    default_action: Literal["Allow", "Deny"] | None = Field(None, description="When no rule matches. Default Deny.")


class ExtractFrom(Model):
    """Where an API key is read from: exactly one of headers, params or cookies (names tried in order)."""

    headers: list[HeaderName] | None = Field(None, min_length=1, max_length=8)
    params: list[ParamName] | None = Field(None, min_length=1, max_length=8)
    cookies: list[ParamName] | None = Field(None, min_length=1, max_length=8)

    @model_validator(mode="after")
    def _one(self) -> ExtractFrom:
        if sum(x is not None for x in (self.headers, self.params, self.cookies)) != 1:
            raise ValueError("exactly one of headers, params or cookies must be specified")
        return self


class APIKeyAuth(Model):
    """API keys checked by Envoy's `api_key_auth` filter. Each Secret named holds one key per
    client: the data key is the client id, its value the API key."""

    credential_refs: list[SecretObjectReference] = Field(min_length=1, max_length=16)
    extract_from: list[ExtractFrom] = Field(min_length=1, max_length=8)
    forward_client_id_header: HeaderName | None = Field(
        None, alias="forwardClientIDHeader", description="Send the client id to the upstream in this header.")
    sanitize: bool | None = Field(None, description="Remove the API key from the request before it goes upstream.")


class BasicAuth(Model):
    """HTTP basic authentication checked by Envoy's `basic_auth` filter, against the htpasswd
    file in the Secret's `.htpasswd` key (SHA hashes: `htpasswd -s`, the only kind Envoy supports)."""

    users: SecretObjectReference

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"forwardUsernameHeader": "Envoy sets it per listener, not per route"},
                                   "basicAuth")


class OIDCProvider(Model):
    issuer: str = Field(min_length=1, max_length=253)
    authorization_endpoint: str | None = Field(None, max_length=253,
                                               description="Where browsers are sent to log in.")
    token_endpoint: str | None = Field(None, max_length=253,
                                       description="Where Envoy exchanges the code for tokens (and refreshes them).")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {k: "the provider is reached directly (from its URLs)"
                                          for k in ("backendRef", "backendRefs", "backendSettings")}, "provider")

    @model_validator(mode="after")
    def _urls(self) -> OIDCProvider:
        for name in ("issuer", "authorization_endpoint", "token_endpoint"):
            value = getattr(self, name)
            if value is not None:
                check_http_url(value)
        if self.authorization_endpoint is None or self.token_endpoint is None:
            # Envoy Gateway fetches them from {issuer}/.well-known/openid-configuration; meshgate's
            # translation does no I/O, so they are named.
            raise ValueError("set authorizationEndpoint and tokenEndpoint (meshgate does not read the "
                             "provider's discovery document yet)")
        return self


class OIDCDenyRedirectHeader(Model):
    name: HeaderName
    type: Literal["Exact", "Prefix", "Suffix", "RegularExpression"] = "Exact"
    value: str = Field(min_length=1, max_length=1024)


class OIDCDenyRedirect(Model):
    headers: list[OIDCDenyRedirectHeader] = Field(min_length=1, max_length=16)


class OIDC(Model):
    """OpenID Connect login (authorization code flow with PKCE) by Envoy's `oauth2` filter: a
    browser without a session is sent to the provider, and comes back with session cookies."""

    provider: OIDCProvider
    client_id: str = Field(min_length=1, max_length=253, alias="clientID")
    client_secret: SecretObjectReference = Field(description="A Secret whose `client-secret` key holds it.")
    scopes: list[str] = Field(default_factory=list, max_length=32, description="`openid` is always asked for.")
    resources: list[str] = Field(default_factory=list, max_length=16)
    redirect_url: str | None = Field(
        None, alias="redirectURL", description="Default `%REQ(x-forwarded-proto)%://%REQ(:authority)%/oauth2/callback`: "
        "the callback on the host the browser asked for.")
    logout_path: str | None = Field(None, pattern=r"^/[^\s?#]*$", description="Clears the session (default /logout).")
    forward_access_token: bool | None = Field(None, description="Send the access token upstream as a bearer token.")
    refresh_token: bool | None = Field(
        None, description="Use the refresh token to renew an expired access token without a new login (default off).")
    default_token_ttl: Duration | None = Field(None, alias="defaultTokenTTL")
    default_refresh_token_ttl: Duration | None = Field(None, alias="defaultRefreshTokenTTL")
    cookie_domain: str | None = Field(None, max_length=253)
    deny_redirect: OIDCDenyRedirect | None = Field(
        None, description="Requests matching these headers (an API client, say) get 401 instead of a redirect to log in.")
    pass_through_auth_header: bool | None = Field(
        None, description="A request that already carries an Authorization header passes without a session "
        "(let a jwt provider of the same policy check it).")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {k: "" for k in (
            "cookieNames", "cookieConfig", "csrfTokenTTL", "disableTokenEncryption", "endSessionEndpoint")}, "oidc")

    @field_validator("redirect_url")
    @classmethod
    def _redirect(cls, value: str | None) -> str | None:
        if value is not None and "%" not in value:
            check_http_url(value)
        return value


class RequestSignature(Model):
    """meshgate extension: request signatures, verified per request by meshgate's edge companion
    (Envoy's `ext_authz` filter asks it). `scheme: Meshgate` (the default) is meshgate's own
    HMAC-SHA256 scheme (x-meshgate-* headers) over the method, path, query, the headers named
    here, a SHA-256 digest of the body and a timestamp, under a key id; `scheme: RFC9421` is RFC
    9421 HTTP Message Signatures (`Signature-Input` / `Signature`, hmac-sha256 or ed25519, bodies
    through RFC 9530 `content-digest`). Each nonce is accepted once. Slower than the Envoy-native
    checks: every request of the route makes a gRPC call to Python (docs/security.md,
    "requestSignature")."""

    scheme: Literal["Meshgate", "RFC9421"] = Field(
        "Meshgate", description="Meshgate: meshgate's x-meshgate-* HMAC scheme. RFC9421: HTTP Message Signatures "
        "(RFC 9421), algorithms hmac-sha256 (keyRefs) and ed25519 (publicKeyRefs).")
    public_key_refs: list[SecretObjectReference] = Field(
        default_factory=list, max_length=16,
        description="scheme RFC9421 only: Secrets holding ed25519 public keys: each data key is a key id, its value "
        "the key in PEM (SubjectPublicKeyInfo) or the base64 of its 32 bytes.")
    key_refs: list[SecretObjectReference] = Field(
        default_factory=list, max_length=16, validate_default=True,
        description="Secrets holding the shared keys (HMAC-SHA256): each data key is a key id, its value the key (at "
        "least 16 bytes). The keys go to the edge companion only, never to Envoy.")
    headers: list[HeaderName] = Field(
        default_factory=list, max_length=16,
        description="Request headers the signature covers, in this order (`host` is the request's authority). "
        "A request without one of them is refused. RFC9421: the header fields a signature must cover (it may "
        "cover no others than these and `content-digest`: the companion is sent only these).")
    components: list[Literal["@method", "@target-uri", "@authority", "@scheme", "@request-target", "@path",
                             "@query"]] | None = Field(
        None, max_length=7, description="scheme RFC9421 only: the derived components a signature must cover "
        "(default @method, @authority, @path, @query); it may cover the others of this list too.")
    nonce_store: Literal["Memory", "Redis"] = Field(
        "Memory", description="Where nonces seen are remembered: Memory, in each companion (a replay sent to "
        "another companion replica passes); Redis, shared by every companion (the companion's Redis, "
        "$MESHGATE_REDIS_URL), needed with more than one companion. Redis unreachable: the request is refused "
        "with 503, or with failureModeAllow let through with `x-meshgate-replay-unchecked: true`.")
    max_clock_skew: Duration | None = Field(
        None, description="How far the signed timestamp may be from the gateway's clock, either way (default "
        "5m, at most 1h). Nonces are remembered that long.")
    max_body_size: int | None = Field(
        None, ge=0, le=8 * 1024 * 1024,
        description="The largest body Envoy buffers for the digest, in bytes (default 65536); a larger body gets "
        "413. 0: the body is not signed (its digest is that of an empty body).")
    timeout: Duration | None = Field(
        None, description="How long Envoy waits for the companion's answer (default 500ms).")
    failure_mode_allow: bool | None = Field(
        None, description="When the companion can't be reached or doesn't answer in time: false (default) "
        "refuses the request with 503; true lets it through unverified, with `x-envoy-auth-failure-mode-allowed: "
        "true` added for the upstream.")

    @field_validator("key_refs")
    @classmethod
    def _keys(cls, refs: list, info: ValidationInfo) -> list:
        # (publicKeyRefs is declared first so that it is known here)
        if not refs and not info.data.get("public_key_refs"):
            raise ValueError("list should have at least 1 item (or publicKeyRefs, with scheme RFC9421), not 0")
        return refs

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: list[str]) -> list[str]:
        lower = [h.lower() for h in headers]
        if len(set(lower)) != len(lower):
            raise ValueError("headers must be unique")
        if any(h.startswith("x-meshgate-") or h.startswith(":") for h in lower):
            raise ValueError("the x-meshgate-* headers of the scheme are always signed; don't list them")
        return lower

    @field_validator("max_clock_skew")
    @classmethod
    def _skew(cls, value: str | None) -> str | None:
        from meshgate.api.models import duration_seconds

        if value is not None and not 1 <= duration_seconds(value) <= 3600:
            raise ValueError("maxClockSkew must be between 1s and 1h")
        return value

    @model_validator(mode="after")
    def _scheme(self) -> RequestSignature:
        if self.scheme == "Meshgate":
            if self.public_key_refs:
                raise ValueError("publicKeyRefs (ed25519) needs scheme RFC9421: the Meshgate scheme is HMAC only")
            if self.components is not None:
                raise ValueError("components is for scheme RFC9421 (the Meshgate scheme always signs method, path, "
                                 "query)")
        else:
            bad = sorted({"host", "signature", "signature-input"} & set(self.headers))
            if bad:
                raise ValueError(f"with scheme RFC9421, headers can't list {', '.join(bad)} (the authority is the "
                                 "component @authority)")
            if self.components is not None and len(set(self.components)) != len(self.components):
                raise ValueError("components must be unique")
        return self


def check_http_url(url: str) -> str:
    m = re.fullmatch(r"(https?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[^\s#]*)?", url)
    if not m:
        raise ValueError(f"{url[:80]!r} is not an http:// or https:// URL")
    if m.group(3) and not 1 <= int(m.group(3)[1:]) <= 65535:
        raise ValueError(f"port {m.group(3)[1:]} is out of range")
    return url


class SecurityPolicySpec(Model):
    target_refs: list[PolicyTargetReference] = Field(min_length=1, max_length=16)
    jwt: JWT | None = None
    oidc: OIDC | None = None
    api_key_auth: APIKeyAuth | None = Field(None, alias="apiKeyAuth")
    basic_auth: BasicAuth | None = None
    authorization: Authorization | None = None
    request_signature: RequestSignature | None = Field(
        None, description="meshgate extension: request signatures (meshgate's HMAC scheme or RFC 9421), verified "
        "by the edge companion (per-request Python; see docs/security.md).")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {
            "targetRef": "use targetRefs (a list)",
            "targetSelectors": "name targets with targetRefs",
            "cors": "use the HTTPRoute CORS filter",
            "extAuth": "",
        }, "SecurityPolicy")

    @field_validator("target_refs")
    @classmethod
    def _targets(cls, refs: list[PolicyTargetReference]) -> list[PolicyTargetReference]:
        for ref in refs:
            if (ref.group, ref.kind) not in ((GATEWAY_GROUP, "Gateway"), (GATEWAY_GROUP, "HTTPRoute"),
                                             (GATEWAY_GROUP, "GRPCRoute"), ("meshgate.io", "HTTPRoute")):
                raise ValueError(f"a SecurityPolicy targets a Gateway, HTTPRoute or GRPCRoute, not {ref.group}/{ref.kind}")
        return refs

    @model_validator(mode="after")
    def _jwt_principals(self) -> SecurityPolicySpec:
        # A claim rule reads what a provider of this policy verified (Envoy Gateway's rule too).
        providers = {p.name for p in self.jwt.providers or ()} if self.jwt else set()
        for i, rule in enumerate(self.authorization.rules if self.authorization else []):
            if rule.principal.jwt is not None and rule.principal.jwt.provider not in providers:
                raise ValueError(f"authorization.rules[{i}].principal.jwt.provider {rule.principal.jwt.provider!r} "
                                 "is not a jwt provider of this policy")
        return self


class SecurityPolicy(Resource):
    """meshgate.io/v1alpha1 SecurityPolicy: JWT authentication and authorization rules for a
    Gateway, a listener, a route or a rule."""

    api_version: Literal["meshgate.io/v1alpha1"]
    kind: Literal["SecurityPolicy"]
    spec: SecurityPolicySpec


__all__ = ["SecurityPolicy", "MESHGATE_V1ALPHA1"]
