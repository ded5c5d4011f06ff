"""The HTTP filter registry: every Envoy HTTP filter meshgate can put in a listener's chain.

Envoy runs a listener's HTTP filters in the order of the HttpConnectionManager's `http_filters`
list, the router (which forwards the request upstream) last. Each module here describes one filter:

- `NAME`: the Envoy filter name (also the key of its per-route config);
- `listener_config(listener) -> message | None`: its config in the chain of this listener, or
  None when the listener doesn't need it;
- `route_config(route) -> message | None` (optional): its per-route config, put in the route's
  `typed_per_filter_config` (e.g. to enable or tune the filter for one route only);
- `patch_connection_manager(listener, hcm) -> None` (optional): called when the filter is in the
  chain, to set what it needs on the HttpConnectionManager itself (e.g. `local_reply_config`
  mappers, which are appended to, never replaced);
- `DISABLED_BY_DEFAULT = True` (optional): the filter is in the chain but off, and on only for the
  routes whose `route_config` returns a `FilterConfig`;
- `listener_filters(listener) -> [(name, config)]` and `route_filters(route) -> [(name, config)]`
  (instead of `listener_config` / `route_config`): for a filter that appears once per distinct
  setting (one `oauth2` instance per OIDC client, named `NAME/<id>`), each route enabling its own.

Adding a feature = one module here and one line in `HTTP_FILTERS`, at its place in the chain.
Envoy's list of HTTP filters: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/http_filters
"""

from __future__ import annotations

from types import ModuleType

from meshgate.xds.translator.filters import (
    adaptive_concurrency,
    api_key_auth,
    bandwidth_limit,
    basic_auth,
    cache,
    compressor,
    cors,
    custom_response,
    ext_authz,
    fault,
    grpc_json_transcoder,
    grpc_web,
    health_check,
    jwt_authn,
    local_ratelimit,
    oauth2,
    rate_limit_quota,
    ratelimit,
    rbac,
    router,
)

# Chain order. Filters that answer on their own (health check, CORS preflights) come first; the
# router is last.
HTTP_FILTERS: tuple[ModuleType, ...] = (
    health_check,
    compressor,  # sees responses last (encoders run in reverse): compresses what the filters below write too
    custom_response,  # error pages: replaces the replies of every filter below (and the upstream's)
    cors,
    oauth2,  # OIDC login: a browser without a session goes to the provider; sets the bearer token
    jwt_authn,  # who is calling: verifies the token, keeps its claims as request metadata
    api_key_auth,  # API keys, where a route asks for them (too)
    basic_auth,  # user and password, likewise
    rbac,  # may they: reads those claims; after CORS, so preflights need no credentials
    ext_authz,  # request signatures (a call to the edge companion): after the native checks, which cost no call
    local_ratelimit,  # after authentication and authorization: refused requests spend no tokens
    rate_limit_quota,  # global limits as budgets (RLQS): after the local ones, which cost nothing to ask
    ratelimit,  # exact global limits (a call to the edge companion per request): the costliest, last
    bandwidth_limit,  # after the limits (refused requests aren't slowed); before the cache: hits are limited too
    grpc_web,  # after CORS: a browser's preflight is answered before gRPC-Web sees it
    grpc_json_transcoder,
    fault,  # stands in for the backend: after auth, limits and the gRPC transcoders
    cache,  # late, as Envoy recommends: a hit skips only what comes after it
    adaptive_concurrency,  # right before the router: it measures and limits only what reaches the backend
    router,
)

__all__ = ["HTTP_FILTERS"]
