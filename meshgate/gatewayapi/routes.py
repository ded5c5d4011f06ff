"""Routes and Backends → IR: matches in Gateway API precedence order, filters, weighted
destinations, and the clusters Backends become. Used by `meshgate.gatewayapi.translator`."""

from __future__ import annotations

import re
from collections.abc import Callable

from meshgate.api.models import (
    Backend,
    GRPCRoute,
    HTTPHeaderFilter,
    HTTPRouteFilter,
    duration_seconds,
)
from meshgate.ir import (
    Cluster,
    CorsPolicy,
    Destination,
    Endpoint,
    HashPolicy,
    HeaderMatch,
    HeaderMods,
    Match,
    Mirror,
    PathMatch,
    Redirect,
    Rewrite,
    Route,
)


def cluster_name(backend: Backend) -> str:
    # A Kubernetes Service port resolved as a Backend (gatewayapi/services.py) names its own cluster.
    own = getattr(backend, "cluster", None)
    return own if own is not None else cluster_name_of(backend.metadata.namespace, backend.metadata.name)


def cluster_name_of(namespace: str, name: str) -> str:
    """The Envoy cluster (and ClusterLoadAssignment) name of a Backend."""
    return f"backend/{namespace}/{name}"


def backend_cluster(backend: Backend) -> Cluster:
    spec = backend.spec
    return Cluster(
        name=cluster_name(backend),
        endpoints=tuple(Endpoint(e.address, e.port, e.weight) for e in spec.endpoints),
        lb=spec.load_balancer.type,
        protocol=spec.protocol,
        connect_timeout_s=duration_seconds(spec.connect_timeout),
        dns=any(not _is_ip(e.address) for e in spec.endpoints),
    )


def _is_ip(address: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False


# A rule's backendRef -> the Backend it resolves to, or None when it can't be resolved.
BackendResolver = Callable[[object, int, int], Backend | None]
# A rule's RequestMirror filter (route, rule index, filter index) -> its Backend, or None.
MirrorResolver = Callable[[object, int, int], Backend | None]


def build_routes(route, resolve: BackendResolver, resolve_mirror: MirrorResolver | None = None,  # noqa: ANN001, ANN201
                 resolve_extension=None,  # noqa: ANN001 - (route, rule, filter) -> ir.GrpcJsonTranscoding | None
                 resolve_failover=None):  # noqa: ANN001 - gatewayapi.failover.FailoverResolver
    """Yield (precedence key, IR Route) for every match of every rule of a route (HTTPRoute or
    GRPCRoute).

    A backendRef that can't be resolved keeps its weight, with no cluster: Envoy answers that
    share of the rule's requests with HTTP 500, as Gateway API requires. A mirror whose backend
    can't be resolved is left out (the rule itself still serves).
    """
    kind = "grpcroute" if isinstance(route, GRPCRoute) else "httproute"
    meta = route.metadata
    for r, rule in enumerate(route.spec.rules):
        destinations, hash_policy, resolved = [], None, []
        for b, ref in enumerate(rule.backend_refs):
            if ref.weight == 0:
                continue
            backend = resolve(route, r, b)
            resolved.append((b, ref, backend))
            destinations.append(Destination(cluster_name(backend) if backend else None, ref.weight))
            if backend is not None:
                hash_policy = hash_policy or _hash_policy(backend)
        if resolve_failover is not None:  # a fallback Backend among them: one cluster with priorities
            destinations = resolve_failover(route, r, resolved) or destinations
        # What every match of the rule shares is built once per rule.
        filters = {f.type: f for f in rule.filters}
        mirrors = []
        for f, flt in enumerate(rule.filters):
            if flt.type == "RequestMirror" and resolve_mirror is not None:
                backend = resolve_mirror(route, r, f)
                if backend is not None:
                    mirrors.append(Mirror(cluster_name(backend), flt.request_mirror.per_million()))
        transcoding = None
        for f, flt in enumerate(rule.filters):
            if flt.type == "ExtensionRef" and resolve_extension is not None:
                transcoding = resolve_extension(route, r, f)
                if transcoding is None:
                    # A filter that can't be resolved is never skipped: the rule answers 500.
                    destinations = [Destination(None, 1)]
        timeouts = getattr(rule, "timeouts", None)
        shared = dict(
            transcoding=transcoding,
            destinations=tuple(destinations),
            redirect=_redirect(filters.get("RequestRedirect")),
            rewrite=_rewrite(filters.get("URLRewrite")),
            request_headers=_header_mods(filters.get("RequestHeaderModifier"), "request_header_modifier"),
            response_headers=_header_mods(filters.get("ResponseHeaderModifier"), "response_header_modifier"),
            timeout_s=duration_seconds(timeouts.request) if timeouts and timeouts.request else None,
            per_try_timeout_s=duration_seconds(timeouts.backend_request) if timeouts and timeouts.backend_request else None,
            hash_policy=hash_policy,
            grpc=kind == "grpcroute",
            mirrors=tuple(mirrors),
            cors=_cors(filters.get("CORS")),
        )
        prefix = f"{kind}/{meta.namespace}/{meta.name}/rule/{r}/match/"
        for m, match in enumerate(rule.matches):
            ir_match = _grpc_match(match) if kind == "grpcroute" else _http_match(match)
            yield precedence(ir_match, meta.namespace, meta.name, r, m), Route(name=f"{prefix}{m}", match=ir_match, **shared)


_PATH_RANK = {"exact": 0, "template": 1, "regex": 2, "prefix": 3}


def precedence(match: Match, namespace: str, name: str, rule: int, index: int) -> tuple:
    """Sort key implementing Gateway API route precedence (first wins in Envoy).

    Exact paths, then templates and regexes (more literal characters first), then the longest
    prefix; ties go to the match with a method, then more headers, then more query params, then
    to the route's namespace/name and the rule's order.
    """
    literal = len(match.path.value)
    if match.path.kind == "template":
        literal = sum(len(s) for s in match.path.value.split("/") if not s.startswith("{") and "*" not in s)
    return (
        _PATH_RANK[match.path.kind],
        -literal,
        match.method is None,
        -len(match.headers),
        -len(match.query),
        namespace,
        name,
        rule,
        index,
    )


_PATH_KIND = {"Exact": "exact", "PathPrefix": "prefix", "RegularExpression": "regex", "Template": "template"}


def _http_match(match) -> Match:
    return Match(
        path=PathMatch(_PATH_KIND[match.path.type], match.path.value),
        method=match.method,
        headers=tuple(HeaderMatch(h.name.lower(), h.value, h.type == "RegularExpression") for h in match.headers)
        if match.headers else (),
        query=tuple(HeaderMatch(q.name, q.value, q.type == "RegularExpression") for q in match.query_params)
        if match.query_params else (),
    )


def _grpc_match(match) -> Match:
    # gRPC calls are HTTP/2 POSTs to /<package.Service>/<Method>.
    method = match.method
    if method is None:
        path = PathMatch("prefix", "/")
    elif method.type == "Exact":
        if method.service and method.method:
            path = PathMatch("exact", f"/{method.service}/{method.method}")
        elif method.service:
            path = PathMatch("prefix", f"/{method.service}/")
        else:
            path = PathMatch("regex", rf"/[^/]+/{method.method}")
    else:
        path = PathMatch("regex", f"/{method.service or '[^/]+'}/{method.method or '[^/]+'}")
    headers = tuple(HeaderMatch(h.name.lower(), h.value, h.type == "RegularExpression") for h in match.headers)
    return Match(path=path, headers=headers)


_NO_HEADER_MODS = HeaderMods()


def _header_mods(f: HTTPRouteFilter | None, attr: str) -> HeaderMods:
    if f is None:
        return _NO_HEADER_MODS
    mods: HTTPHeaderFilter = getattr(f, attr)
    return HeaderMods(
        set=tuple((h.name, h.value) for h in mods.set),
        add=tuple((h.name, h.value) for h in mods.add),
        remove=tuple(mods.remove),
    )


def _rewrite(f: HTTPRouteFilter | None) -> Rewrite | None:
    if f is None:
        return None
    rw = f.url_rewrite
    path = rw.path
    return Rewrite(
        host=rw.hostname,
        full_path=path.replace_full_path if path else None,
        prefix=path.replace_prefix_match if path else None,
    )


def _redirect(f: HTTPRouteFilter | None) -> Redirect | None:
    if f is None:
        return None
    rd = f.request_redirect
    path = rd.path
    return Redirect(
        scheme=rd.scheme,
        host=rd.hostname,
        port=rd.port,
        full_path=path.replace_full_path if path else None,
        prefix=path.replace_prefix_match if path else None,
        status_code=rd.status_code,
    )


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _cors(f: HTTPRouteFilter | None) -> CorsPolicy | None:
    if f is None:
        return None
    cors = f.cors
    origins = []
    for origin in cors.allow_origins:
        if origin == "*":
            origins.append(("regex", ".*"))
            continue
        scheme, _, host = origin.partition("://")
        if host.endswith(_DEFAULT_PORTS[scheme]):  # browsers never send a default port
            host = host[: -len(_DEFAULT_PORTS[scheme])]
        if "*" not in host:
            origins.append(("exact", f"{scheme}://{host}"))
            continue
        # `*` is greedy to the left (any number of DNS labels); alone it is any host and port.
        name, colon, port = host.partition(":")
        pattern = "[^/]+" if name == "*" else "[A-Za-z0-9.-]+" + re.escape(name[1:])
        origins.append(("regex", f"(?i){re.escape(scheme)}://{pattern}{re.escape(colon + port)}"))  # case-insensitive, as exact ones
    return CorsPolicy(
        origins=tuple(origins),
        credentials=bool(cors.allow_credentials),
        methods=tuple(cors.allow_methods),
        headers=tuple(cors.allow_headers),
        expose=tuple(cors.expose_headers),
        max_age_s=cors.max_age,
    )


def _hash_policy(backend: Backend) -> HashPolicy | None:
    key = backend.spec.load_balancer.hash_key
    if key is None:
        return None
    return HashPolicy(
        header=key.header.lower() if key.header else None,
        cookie=key.cookie.name if key.cookie else None,
        cookie_ttl_s=duration_seconds(key.cookie.ttl) if key.cookie and key.cookie.ttl else None,
        query_param=key.query_param,
        source_ip=bool(key.source_ip),
    )


