"""`envoy.filters.http.oauth2`: OpenID Connect login (SecurityPolicy `oidc`).

One filter instance per OIDC client on the listener (`envoy.filters.http.oauth2/<id>`), each
*disabled by default* and enabled by the routes of its policy (a per-route `FilterConfig` with an
empty config: the filter's settings live in the chain). A browser without a valid session is
redirected to the provider's authorization endpoint (code flow with PKCE); Envoy answers the
callback itself, exchanges the code at the token endpoint (through a cluster meshgate makes),
and sets HMAC-signed session cookies. The client secret and the HMAC key come by SDS.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/oauth2_filter
"""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2, http_uri_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.oauth2.v3 import oauth_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2

from meshgate import ir
from meshgate.xds.translator.filters.denials import add_json_denials

NAME = "envoy.filters.http.oauth2"
# Its 401/403 replies carry a JSON body (reason, request id): see denials.py.
patch_connection_manager = add_json_denials
DISABLED_BY_DEFAULT = True  # the routes of each policy enable their instance


def _name(oidc: ir.OIDC) -> str:
    return f"{NAME}/{oidc.name}"


def listener_filters(listener: ir.Listener) -> list[tuple[str, oauth_pb2.OAuth2]]:
    found: dict[str, ir.OIDC] = {}
    for vhost in listener.virtual_hosts:
        for route in vhost.routes:
            if route.security is not None and route.security.oidc is not None:
                found.setdefault(route.security.oidc.name, route.security.oidc)
    return [(_name(found[n]), _config(found[n])) for n in sorted(found)]


def route_filters(route: ir.Route) -> list[tuple[str, rc.FilterConfig]]:
    if route.security is None or route.security.oidc is None:
        return []
    enable = rc.FilterConfig()
    enable.config.SetInParent()  # an empty config: just "on here" (Envoy refuses a FilterConfig without one)
    return [(_name(route.security.oidc), enable)]


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    ads = config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                         resource_api_version=config_source_pb2.V3)
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads)


def _config(o: ir.OIDC) -> oauth_pb2.OAuth2:
    c = oauth_pb2.OAuth2Config(
        authorization_endpoint=o.authorization_endpoint,
        redirect_uri=o.redirect_uri,
        forward_bearer_token=o.forward_access_token,
        auth_scopes=["openid", *[s for s in o.scopes if s != "openid"]],
        resources=list(o.resources),
        stat_prefix=o.name,
    )
    c.token_endpoint.CopyFrom(http_uri_pb2.HttpUri(uri=o.token_endpoint, cluster=o.token_cluster))
    c.token_endpoint.timeout.FromSeconds(5)
    c.redirect_path_matcher.path.exact = o.redirect_path
    c.signout_path.path.exact = o.logout_path
    c.use_refresh_token.value = o.refresh_token
    if o.default_token_ttl_s is not None:
        c.default_expires_in.FromMilliseconds(int(o.default_token_ttl_s * 1000))
    if o.default_refresh_token_ttl_s is not None:
        c.default_refresh_token_expires_in.FromMilliseconds(int(o.default_refresh_token_ttl_s * 1000))
    creds = c.credentials
    creds.client_id = o.client_id
    creds.token_secret.CopyFrom(_sds(o.client_secret))
    creds.hmac_secret.CopyFrom(_sds(o.hmac_secret))
    if o.cookie_domain:
        creds.cookie_domain = o.cookie_domain
    # Cookie names of their own, so two OIDC clients on one host don't overwrite each other.
    suffix = o.name.rsplit("-", 1)[-1]
    names = creds.cookie_names
    names.bearer_token, names.oauth_hmac, names.oauth_expires = (f"BearerToken-{suffix}", f"OauthHMAC-{suffix}",
                                                                 f"OauthExpires-{suffix}")
    names.id_token, names.refresh_token = f"IdToken-{suffix}", f"RefreshToken-{suffix}"
    names.oauth_nonce, names.code_verifier = f"OauthNonce-{suffix}", f"CodeVerifier-{suffix}"
    for header, kind, value in o.deny_redirect:
        c.deny_redirect_matcher.add(name=header, string_match=_match(kind, value))
    if o.pass_through_auth_header:
        c.pass_through_matcher.add(name="authorization", present_match=True)
    return oauth_pb2.OAuth2(config=c)


def _match(kind: str, value: str) -> string_pb2.StringMatcher:
    if kind == "Prefix":
        return string_pb2.StringMatcher(prefix=value)
    if kind == "Suffix":
        return string_pb2.StringMatcher(suffix=value)
    if kind == "RegularExpression":
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=value))
    return string_pb2.StringMatcher(exact=value)


_ = path_pb2  # PathMatcher's module, imported so its type is in the descriptor pool
