"""The intermediate representation: a flat, Envoy-agnostic picture of what the gateway does.

`build_ir(config)` resolves everything per route (which port and hosts it serves, its matches in
precedence order, its filters, its weighted destinations), so that translating to Envoy is a
mechanical walk (`meshgate.xds.translate`). Both stages are pure functions, tested with golden
files. The IR is also the place a future policy resolves per route, as in Envoy Gateway's `ir/`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from meshgate.api.config import AnyRoute, Config, TLSCertificate
from meshgate.api.models import (
    Backend,
    GRPCRoute,
    HTTPHeaderFilter,
    HTTPRouteFilter,
    duration_seconds,
    template_variables,
)


@dataclass(frozen=True)
class HeaderMatch:
    name: str
    value: str
    regex: bool = False


@dataclass(frozen=True)
class PathMatch:
    kind: str  # "exact" | "prefix" | "regex" | "template"
    value: str


@dataclass(frozen=True)
class Match:
    path: PathMatch
    method: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True)
class HeaderMods:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True)
class Rewrite:
    host: str | None = None
    full_path: str | None = None  # literal, or a template using {variables} when the match is a template
    prefix: str | None = None


@dataclass(frozen=True)
class Redirect:
    scheme: str | None
    host: str | None
    port: int | None
    full_path: str | None
    prefix: str | None
    status_code: int


@dataclass(frozen=True)
class HashPolicy:
    header: str | None = None
    cookie: str | None = None
    cookie_ttl_s: float | None = None
    query_param: str | None = None
    source_ip: bool = False


@dataclass(frozen=True)
class Destination:
    cluster: str
    weight: int


@dataclass(frozen=True)
class Route:
    name: str  # "<kind>/<namespace>/<name>/rule/<i>/match/<j>", shown in access logs and stats
    match: Match
    destinations: tuple[Destination, ...] = ()
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderMods = HeaderMods()
    response_headers: HeaderMods = HeaderMods()
    timeout_s: float | None = None
    per_try_timeout_s: float | None = None
    hash_policy: HashPolicy | None = None
    grpc: bool = False


@dataclass(frozen=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class TLSServerName:
    """One certificate on an HTTPS port, served to clients asking for these SNI names."""

    server_names: tuple[str, ...]  # empty: the default certificate
    certificate: TLSCertificate


@dataclass(frozen=True)
class Listener:
    name: str
    port: int
    tls: tuple[TLSServerName, ...]  # empty: plain HTTP
    virtual_hosts: tuple[VirtualHost, ...]


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    weight: int


@dataclass(frozen=True)
class Cluster:
    name: str
    endpoints: tuple[Endpoint, ...]
    lb: str  # RoundRobin | LeastRequest | Random | RingHash | Maglev
    protocol: str  # HTTP1 | HTTP2 | GRPC
    connect_timeout_s: float
    dns: bool  # endpoints are names Envoy resolves itself (no EDS)


@dataclass(frozen=True)
class IR:
    listeners: tuple[Listener, ...] = ()
    clusters: tuple[Cluster, ...] = ()


def cluster_name(backend: Backend) -> str:
    return f"backend/{backend.metadata.namespace}/{backend.metadata.name}"


def build_ir(config: Config) -> IR:
    """Resolve a validated Config into listeners (per port) and clusters (per Backend)."""
    clusters = tuple(_cluster(b) for _, b in sorted(config.backends.items()))
    # port -> hostname -> routes; a route with several hostnames lands in several virtual hosts.
    by_port: dict[int, dict[str, list[tuple[tuple, Route]]]] = defaultdict(lambda: defaultdict(list))
    for route in [*config.http_routes, *config.grpc_routes]:
        built = list(_routes(config, route))
        for att in config.attachments.get(id(route), []):
            for host in att.hostnames:
                by_port[att.listener.port][host].extend(built)
    listeners = []
    for port, name, tls in _ports(config):
        hosts = by_port.get(port, {})
        vhosts = []
        for host in sorted(hosts, key=_host_order):
            routes = sorted(dict((r.name, (k, r)) for k, r in hosts[host]).values(), key=lambda kr: kr[0])
            vhosts.append(VirtualHost(name=f"{name}/{host}", domains=(host,), routes=tuple(r for _, r in routes)))
        listeners.append(Listener(name=name, port=port, tls=tls, virtual_hosts=tuple(vhosts)))
    return IR(listeners=tuple(listeners), clusters=clusters)


def _host_order(host: str) -> tuple:
    # Envoy picks the most specific domain itself; sorting only keeps the output deterministic.
    return (host == "*", host.startswith("*"), host)


def _ports(config: Config) -> list[tuple[int, str, tuple[TLSServerName, ...]]]:
    """One Envoy listener per port, named after the first Gateway that uses it."""
    seen: dict[int, tuple[str, list[TLSServerName]]] = {}
    for gateway in config.gateways:
        for listener in gateway.spec.listeners:
            name = f"{gateway.metadata.namespace}/{gateway.metadata.name}/{listener.port}"
            _, tls = seen.setdefault(listener.port, (name, []))
            if listener.tls is not None:
                cert = config.certificates.get((gateway.metadata.namespace, gateway.metadata.name, listener.name))
                if cert is not None:
                    tls.append(TLSServerName((listener.hostname,) if listener.hostname else (), cert))
    # The certificate without SNI names is the default; it goes last so named ones win.
    return [(port, name, tuple(sorted(tls, key=lambda t: (not t.server_names, t.server_names))))
            for port, (name, tls) in sorted(seen.items())]


def _cluster(backend: Backend) -> Cluster:
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


def _routes(config: Config, route: AnyRoute):
    """Yield (precedence key, Route) for every match of every rule of a route."""
    kind = "grpcroute" if isinstance(route, GRPCRoute) else "httproute"
    meta = route.metadata
    for r, rule in enumerate(route.spec.rules):
        destinations, hash_policy = [], None
        for ref in rule.backend_refs:
            if ref.weight == 0:
                continue
            backend = config.backend_for(route, ref)
            destinations.append(Destination(cluster_name(backend), ref.weight))
            hash_policy = hash_policy or _hash_policy(backend)
        filters = {f.type: f for f in rule.filters}
        timeouts = getattr(rule, "timeouts", None)
        for m, match in enumerate(rule.matches):
            ir_match = _grpc_match(match) if kind == "grpcroute" else _http_match(match)
            built = Route(
                name=f"{kind}/{meta.namespace}/{meta.name}/rule/{r}/match/{m}",
                match=ir_match,
                destinations=tuple(destinations),
                redirect=_redirect(filters.get("RequestRedirect")),
                rewrite=_rewrite(filters.get("URLRewrite")),
                request_headers=_header_mods(filters.get("RequestHeaderModifier"), "request_header_modifier"),
                response_headers=_header_mods(filters.get("ResponseHeaderModifier"), "response_header_modifier"),
                timeout_s=duration_seconds(timeouts.request) if timeouts and timeouts.request else None,
                per_try_timeout_s=(
                    duration_seconds(timeouts.backend_request) if timeouts and timeouts.backend_request else None
                ),
                hash_policy=hash_policy,
                grpc=kind == "grpcroute",
            )
            yield _precedence(ir_match, meta.namespace, meta.name, r, m), built


_PATH_RANK = {"exact": 0, "template": 1, "regex": 2, "prefix": 3}


def _precedence(match: Match, namespace: str, name: str, rule: int, index: int) -> tuple:
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


def _http_match(match) -> Match:
    kind = {"Exact": "exact", "PathPrefix": "prefix", "RegularExpression": "regex", "Template": "template"}
    return Match(
        path=PathMatch(kind[match.path.type], match.path.value),
        method=match.method,
        headers=tuple(HeaderMatch(h.name.lower(), h.value, h.type == "RegularExpression") for h in match.headers),
        query=tuple(HeaderMatch(q.name, q.value, q.type == "RegularExpression") for q in match.query_params),
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


def _header_mods(f: HTTPRouteFilter | None, attr: str) -> HeaderMods:
    if f is None:
        return HeaderMods()
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


__all__ = ["IR", "build_ir", "template_variables"]
