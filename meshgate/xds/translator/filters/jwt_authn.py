"""`envoy.filters.http.jwt_authn`: JSON Web Token verification (SecurityPolicy `jwt`).

The listener's filter holds every provider its routes use and one *requirement* per distinct
route setting ("a token from provider A or B; missing allowed or not"); each secured route names
its requirement in its per-route config. Routes without one are not checked (the filter has no
`rules` of its own). Where an authorization rule reads a provider's claims, its verified payload
is kept as request metadata under the provider's name, where the `rbac` filter reads them. Envoy verifies signatures, `exp`/`nbf` (60 s of
clock skew), issuer and audiences, and answers a missing or bad token itself: 401 with
`www-authenticate: Bearer ...` (a wrong audience: 403).
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/jwt_authn_filter
"""

from __future__ import annotations

from envoy.config.core.v3 import http_uri_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from google.protobuf import empty_pb2

from meshgate import ir
from meshgate.xds.translator.filters.denials import add_json_denials

NAME = "envoy.filters.http.jwt_authn"
# Its 401/403 replies carry a JSON body (reason, request id): see denials.py.
patch_connection_manager = add_json_denials
METADATA_NAMESPACE = NAME  # where the verified payloads are kept (rbac reads them there)
# Claims that hold space-separated scopes (OAuth 2 `scope`, Azure AD's `scp`): kept as lists.
SPACE_DELIMITED_CLAIMS = ("scope", "scp")


def _requirements(listener: ir.Listener) -> tuple[dict[str, ir.JwtRequirement], set[str]]:
    """The listener's requirements by name, and the labels of the providers whose claims an
    authorization rule reads."""
    out: dict[str, ir.JwtRequirement] = {}
    read: set[str] = set()
    seen: set[int] = set()
    for vhost in listener.virtual_hosts:
        for route in vhost.routes:
            security = route.security
            if security is None or id(security) in seen:
                continue
            seen.add(id(security))
            if security.jwt is not None:
                out.setdefault(security.jwt.name, security.jwt)
            if security.authorization is not None:
                read.update(r.principal.jwt_provider for r in security.authorization.rules if r.principal.jwt_provider)
    return out, read


def listener_config(listener: ir.Listener) -> jwt_pb2.JwtAuthentication | None:
    requirements, read = _requirements(listener)
    if not requirements:
        return None
    config = jwt_pb2.JwtAuthentication(bypass_cors_preflight=True)  # browsers send no token on preflights
    for name in sorted(requirements):
        requirement = requirements[name]
        for provider in requirement.providers:
            if provider.name not in config.providers:
                config.providers[provider.name].CopyFrom(_provider(provider, provider.label in read))
        config.requirement_map[name].CopyFrom(_requirement(requirement))
    return config


def route_config(route: ir.Route) -> jwt_pb2.PerRouteConfig | None:
    if route.security is None or route.security.jwt is None:
        return None
    return jwt_pb2.PerRouteConfig(requirement_name=route.security.jwt.name)


def _requirement(requirement: ir.JwtRequirement) -> jwt_pb2.JwtRequirement:
    names = [p.name for p in requirement.providers]
    if len(names) == 1 and not requirement.optional:
        return jwt_pb2.JwtRequirement(provider_name=names[0])
    any_of = jwt_pb2.JwtRequirement()
    for name in names:
        any_of.requires_any.requirements.add(provider_name=name)
    if requirement.optional:
        # A request without a token passes; one with a bad token is still refused.
        any_of.requires_any.requirements.add().allow_missing.CopyFrom(empty_pb2.Empty())
    return any_of


def _provider(p: ir.JwtProvider, claims_read: bool) -> jwt_pb2.JwtProvider:
    out = jwt_pb2.JwtProvider(audiences=list(p.audiences), clear_route_cache=p.recompute_route)
    if claims_read:
        # The verified payload as request metadata, for the rbac filter's claim and scope rules.
        # Only where a rule reads it: building it is a good part of a request's JWT cost.
        out.payload_in_metadata = p.label
        out.normalize_payload_in_metadata.space_delimited_claims.extend(SPACE_DELIMITED_CLAIMS)
    if p.issuer:
        out.issuer = p.issuer
    if p.jwks_inline is not None:
        out.local_jwks.inline_string = p.jwks_inline
    else:
        remote = out.remote_jwks
        remote.http_uri.CopyFrom(http_uri_pb2.HttpUri(uri=p.jwks_uri, cluster=p.jwks_cluster))
        remote.http_uri.timeout.FromSeconds(5)
        remote.cache_duration.FromMilliseconds(int(p.jwks_cache_s * 1000))
        # Fetched when the listener starts and again before the cache expires, in the background;
        # `fast_listener`: a JWKS host that is down must not hold up the listener (its requests
        # get 401 until the keys arrive).
        remote.async_fetch.fast_listener = True
        remote.async_fetch.failed_refetch_duration.FromSeconds(1)
    for name, prefix in p.headers:
        out.from_headers.add(name=name, value_prefix=prefix)
    out.from_cookies.extend(p.cookies)
    out.from_params.extend(p.params)
    for header, claim in p.claim_to_headers:
        out.claim_to_headers.add(header_name=header, claim_name=claim)
    # Verified tokens are cached (per worker), so a repeated token is not verified again.
    out.jwt_cache_config.jwt_cache_size = 1000
    return out
