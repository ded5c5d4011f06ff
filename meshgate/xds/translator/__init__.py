"""IR → Envoy resources: listeners (LDS), route configurations (RDS), clusters (CDS), cluster
load assignments (EDS) and TLS secrets (SDS), as protobuf messages from `xds-protos`.

HTTP filters come from the registry in `meshgate.xds.translator.filters`: this module never names
a filter but the connection manager itself.

A pure function: `translate(ir, options)` returns `{type_url: {name: message}}`, which
`meshgate.xds.snapshot.Snapshot.build` turns into a versioned snapshot. Envoy's API reference for
everything set here: https://www.envoyproxy.io/docs/envoy/latest/api-v3/api
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, extension_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.path.match.uri_template.v3 import uri_template_match_pb2
from envoy.extensions.path.rewrite.uri_template.v3 import uri_template_rewrite_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from meshgate import ir
from meshgate.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshgate.xds.translator import audit, stats, tracing, upstream_tls, websocket
from meshgate.xds.translator.tracing import TracingOptions
from meshgate.xds.translator.filters import HTTP_FILTERS
from meshgate.xds.translator import backend_traffic, failover

Resources = dict[str, dict[str, Message]]


@dataclass(frozen=True)
class TranslateOptions:
    bind_address: str = "0.0.0.0"
    access_log_path: str | None = "/dev/stdout"  # None: no access log
    tracing: TracingOptions | None = None  # None: no tracing (see translator/tracing.py)
    # Per-rule statistics (translator/stats.py). Envoy allocates them for every rule at each
    # route-table update: at 10,000 rules they cost ~40 MB of Envoy memory and slow every reload
    # (docs/observability.md); `--route-stats off` for very large configs.
    route_stats: bool = True
    # `--audit-log`: Envoy appends its own denials and rate-limit rejections there (translator/audit.py),
    # the control plane its config changes (controlplane/audit.py). None: no audit log.
    audit_log_path: str | None = None


# The access log is one JSON object per request; x-request-id ties it to upstream logs, and the
# trace id (null while tracing is off) to the request's spans. Nothing secret is written: the path
# is logged without its query string (tokens, API keys), and no credential header (authorization,
# cookie, API keys) nor any response header is a field. docs/observability.md lists the fields.
ACCESS_LOG_FORMAT = {
    "start_time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "trace_id": "%TRACE_ID%",
    "method": "%REQ(:METHOD)%",
    "authority": "%REQ(:AUTHORITY)%",
    # The path the client sent (before any rewrite: x-envoy-original-path, else :path), without query.
    "path": "%PATH(NQ:ORIG_OR_PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "route_name": "%ROUTE_NAME%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "user_agent": "%REQ(USER-AGENT)%",
}


@dataclass
class TranslateMemo:
    """Serialized Envoy routes (as `VirtualHost.routes` records) by IR route, kept between
    reloads: an IR route the Gateway API translator reused (unchanged object) is not translated
    again."""

    routes: dict[int, tuple[ir.Route, bytes]] = field(default_factory=dict)
    # Listener name -> (what its Listener message depends on, the message): a listener whose
    # settings and filter-relevant routes are unchanged keeps its message, so the snapshot keeps
    # its serialized form and version (and nothing scans every route's filters again).
    listeners: dict[str, tuple[tuple, listener_pb2.Listener]] = field(default_factory=dict)
    # id(IR virtual host) -> (it, its serialized `RouteConfiguration.virtual_hosts` record).
    vhosts: dict[int, tuple[ir.VirtualHost, bytes]] = field(default_factory=dict)


def _has_filter_settings(route: ir.Route) -> bool:
    """Whether some HTTP filter is configured for this route: the filter modules (listener and
    per-route configs) read only these fields of a route; a route with none of them gets no
    per-route filter config and adds no filter to its listener."""
    return (route.security is not None or route.shaping is not None or route.transcoding is not None
            or route.cors is not None or route.grpc)


def _filter_routes(listener: ir.Listener) -> tuple[ir.Route, ...]:
    """The routes a listener's HTTP filter chain depends on."""
    return tuple(r for v in listener.virtual_hosts for r in v.routes if _has_filter_settings(r))


def _listener(listener: ir.Listener, options: TranslateOptions, memo: TranslateMemo | None) -> listener_pb2.Listener:
    if memo is None:
        return translate_listener(listener, options)
    depends = (listener.port, listener.tls, listener.settings, options, _filter_routes(listener))
    cached = memo.listeners.get(listener.name)
    if cached is None or cached[0] != depends:
        cached = memo.listeners[listener.name] = (depends, translate_listener(listener, options))
    return cached[1]


def translate(model: ir.IR, options: TranslateOptions = TranslateOptions(), memo: TranslateMemo | None = None) -> Resources:
    resources: Resources = {LISTENER: {}, ROUTE: {}, CLUSTER: {}, ENDPOINT: {}, SECRET: {}}
    for secret in model.secrets:
        resources[SECRET][secret.name] = translate_secret(secret)
    for cluster in model.clusters:
        resources[CLUSTER][cluster.name] = translate_cluster(cluster)
        if not cluster.dns:
            resources[ENDPOINT][cluster.name] = translate_endpoints(cluster)
    for listener in model.listeners:  # where spans go: the environment's collector, or a Gateway's
        traced = tracing.listener_tracing(listener.settings.tracing, options.tracing)
        if traced is not None and traced.cluster not in resources[CLUSTER]:
            resources[CLUSTER][traced.cluster] = tracing.otlp_cluster(traced)
    for listener in model.listeners:
        resources[LISTENER][listener.name] = _listener(listener, options, memo)
        resources[ROUTE][listener.name] = translate_route_config(listener, memo, options.route_stats)
    if memo is not None:
        # Forget routes gone, once they are a third of the memo (not on every edit: that would
        # pass over every route each time).
        count = sum(len(v.routes) for l in model.listeners for v in l.virtual_hosts)
        if len(memo.routes) > count + count // 2 + 16:
            alive = {id(r) for l in model.listeners for v in l.virtual_hosts for r in v.routes}
            memo.routes = {k: v for k, v in memo.routes.items() if k in alive}
        present = {id(v) for l in model.listeners for v in l.virtual_hosts}
        if len(memo.vhosts) > len(present):
            memo.vhosts = {k: v for k, v in memo.vhosts.items() if k in present}
        if len(memo.listeners) > len(model.listeners):
            names = {l.name for l in model.listeners}
            memo.listeners = {k: v for k, v in memo.listeners.items() if k in names}
    return resources


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)  # stable bytes -> stable versions
    return packed


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def _ads() -> config_source_pb2.ConfigSource:
    # "Get this resource over the same ADS stream" (aggregated discovery service).
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3)


# --- listeners -------------------------------------------------------------------------------


def translate_listener(listener: ir.Listener, options: TranslateOptions) -> listener_pb2.Listener:
    settings = listener.settings
    hcm = _pack(_connection_manager(listener, options))
    out = listener_pb2.Listener(
        name=listener.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=options.bind_address, port_value=listener.port)
        ),
        # Bytes buffered per connection before Envoy stops reading from it (edge best practice: 32 KiB).
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=settings.buffer_limit_bytes),
    )
    network_filters = []
    if settings.connection_limit is not None:
        # Closes connections over the limit (after `delay`), before any HTTP is parsed.
        limit = connection_limit_pb2.ConnectionLimit(
            stat_prefix=_stat_name(listener.name), max_connections=wrappers_pb2.UInt64Value(value=settings.connection_limit))
        if settings.connection_limit_close_delay_s:
            limit.delay.CopyFrom(_duration(settings.connection_limit_close_delay_s))
        network_filters.append(listener_components_pb2.Filter(name="envoy.filters.network.connection_limit",
                                                              typed_config=_pack(limit)))
    network_filters.append(listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager",
                                                          typed_config=hcm))
    if not listener.tls:
        out.filter_chains.add(filters=network_filters)
        return out
    # The TLS inspector reads the ClientHello's SNI so Envoy can pick the filter chain (and so
    # the certificate) for the requested host name.
    out.listener_filters.add(
        name="envoy.filters.listener.tls_inspector", typed_config=_pack(tls_inspector_pb2.TlsInspector())
    )
    for tls in listener.tls:
        chain = out.filter_chains.add(filters=network_filters)
        if tls.server_names:
            chain.filter_chain_match.server_names.extend(tls.server_names)
        chain.transport_socket.name = "envoy.transport_sockets.tls"
        chain.transport_socket.typed_config.Pack(_downstream_tls(tls.secret), deterministic=True)
    return out


def _downstream_tls(secret_name: str) -> tls_pb2.DownstreamTlsContext:
    ctx = tls_pb2.DownstreamTlsContext()
    # The certificate and key come by name over SDS (the same ADS stream): never inline in the
    # listener, and a rotated certificate is a new Secret, applied without touching the listener
    # or its connections.
    ctx.common_tls_context.tls_certificate_sds_secret_configs.add(name=secret_name, sds_config=_ads())
    # ALPN: offer HTTP/2 first, then HTTP/1.1.
    ctx.common_tls_context.alpn_protocols.extend(["h2", "http/1.1"])
    ctx.common_tls_context.tls_params.tls_minimum_protocol_version = tls_common_pb2.TlsParameters.TLSv1_2
    return ctx


def translate_secret(secret: ir.Secret | ir.CASecret | ir.GenericSecret) -> secret_pb2.Secret:
    if isinstance(secret, ir.CASecret):
        return upstream_tls.translate_ca_secret(secret)  # a trusted-CA bundle (upstream TLS)
    if isinstance(secret, ir.GenericSecret):
        out = secret_pb2.Secret(name=secret.name)
        out.generic_secret.secret.inline_bytes = secret.value  # e.g. the oauth2 filter's client secret
        return out
    out = secret_pb2.Secret(name=secret.name)
    out.tls_certificate.certificate_chain.inline_bytes = secret.cert_pem
    out.tls_certificate.private_key.inline_bytes = secret.key_pem
    return out


_ESCAPED_SLASHES = {
    "KeepUnchanged": hcm_pb2.HttpConnectionManager.KEEP_UNCHANGED,
    "RejectRequest": hcm_pb2.HttpConnectionManager.REJECT_REQUEST,
    "UnescapeAndRedirect": hcm_pb2.HttpConnectionManager.UNESCAPE_AND_REDIRECT,
    "UnescapeAndForward": hcm_pb2.HttpConnectionManager.UNESCAPE_AND_FORWARD,
}
_UNDERSCORES = {
    "Allow": protocol_pb2.HttpProtocolOptions.ALLOW,
    "RejectRequest": protocol_pb2.HttpProtocolOptions.REJECT_REQUEST,
    "DropHeader": protocol_pb2.HttpProtocolOptions.DROP_HEADER,
}


def _connection_manager(listener: ir.Listener, options: TranslateOptions) -> hcm_pb2.HttpConnectionManager:
    """The HTTP connection manager: Envoy's HTTP stack (codec, routing, access log) on a listener.

    Its defaults are a hardened edge (Envoy's "edge proxy best practices"), each overridable by a
    ClientTrafficPolicy: https://www.envoyproxy.io/docs/envoy/latest/configuration/best_practices/edge
    """
    s = listener.settings
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=_stat_name(listener.name),
        # AUTO: HTTP/1.1 and HTTP/2 (h2c prior knowledge, or h2 via ALPN) on the same port.
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=listener.name),
        # We are the edge: trust the TCP peer address, not a client-supplied X-Forwarded-For.
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        # Route on the normalized path (RFC 3986 dot segments, duplicate slashes) so that
        # "/public/../admin" can't slip past a route meant for "/admin".
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=s.merge_slashes,
        # %2F / %5C in a path: upstreams disagree on whether they are separators, so by default
        # the client is redirected to the unescaped path and every hop routes on the same one.
        path_with_escaped_slashes_action=_ESCAPED_SLASHES[s.escaped_slashes],
        # Slow clients: time to send the headers, to send the whole request, and idle streams.
        request_headers_timeout=_duration(s.request_headers_timeout_s),
        request_timeout=_duration(s.request_received_timeout_s),
        stream_idle_timeout=_duration(s.stream_idle_timeout_s),
    )
    hcm.common_http_protocol_options.idle_timeout.CopyFrom(_duration(s.idle_timeout_s))
    hcm.common_http_protocol_options.headers_with_underscores_action = _UNDERSCORES[s.headers_with_underscores]
    # HTTP/2 limits: streams per connection and flow-control windows bound what one client can
    # make Envoy buffer.
    h2 = hcm.http2_protocol_options
    h2.max_concurrent_streams.value = s.http2_max_concurrent_streams
    h2.initial_stream_window_size.value = s.http2_initial_stream_window_bytes
    h2.initial_connection_window_size.value = s.http2_initial_connection_window_bytes
    websocket.set_upgrades(hcm, listener)  # WebSocket over HTTP/1.1 and HTTP/2 (RFC 8441)
    traced = tracing.listener_tracing(s.tracing, options.tracing)
    if traced is not None:
        tracing.set_tracing(hcm, traced)  # OpenTelemetry spans, traceparent upstream
    if options.access_log_path:
        log = file_pb2.FileAccessLog(path=options.access_log_path)
        fmt = struct_pb2.Struct()
        fmt.update(ACCESS_LOG_FORMAT)
        log.log_format.json_format.CopyFrom(fmt)
        hcm.access_log.append(accesslog_pb2.AccessLog(name="envoy.access_loggers.file", typed_config=_pack(log)))
    if options.audit_log_path:
        hcm.access_log.extend(audit.audit_access_logs(options.audit_log_path))
    for module in HTTP_FILTERS:
        instances = _listener_filters(module, listener)
        for name, config in instances:
            # disabled: off unless a route's typed_per_filter_config turns it on.
            hcm.http_filters.add(name=name, typed_config=_pack(config),
                                 disabled=getattr(module, "DISABLED_BY_DEFAULT", False))
        patch = getattr(module, "patch_connection_manager", None)
        if instances and patch is not None:
            patch(listener, hcm)  # connection-manager settings the filter needs (e.g. local replies)
    return hcm


def _listener_filters(module, listener: ir.Listener) -> list[tuple[str, Message]]:  # noqa: ANN001
    """(name, config) of each instance of a registry module's filter in this listener's chain:
    one (`listener_config`), or one per distinct setting (`listener_filters`)."""
    many = getattr(module, "listener_filters", None)
    if many is not None:
        return many(listener)
    config = module.listener_config(listener)
    return [] if config is None else [(module.NAME, config)]


def _route_filters(module, route: ir.Route) -> list[tuple[str, Message]]:  # noqa: ANN001
    """(filter name, per-route config) a registry module sets on this route."""
    many = getattr(module, "route_filters", None)
    if many is not None:
        return many(route)
    route_config = getattr(module, "route_config", None)
    config = route_config(route) if route_config else None
    return [] if config is None else [(module.NAME, config)]


def _stat_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


# --- routes ----------------------------------------------------------------------------------


def translate_route_config(listener: ir.Listener, memo: TranslateMemo | None = None,
                           route_stats: bool = True) -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration(
        name=listener.name,
        # Match "host:8080" like "host": clients include the port in Host for non-default ports.
        ignore_port_in_host_matching=True,
        # Don't refuse a whole route table because one cluster is still warming.
        validate_clusters=wrappers_pb2.BoolValue(value=False),
    )
    # Assembled from serialized routes (protobuf repeated fields are concatenated records), each
    # route serialized once and reused while its IR route is the same object: at 10,000 routes
    # this is a few ms instead of translating and copying every route message again.
    data = [config.SerializeToString(deterministic=True)]
    for vhost in listener.virtual_hosts:
        # A virtual host the Gateway API translator kept (no route of its hostname changed) is
        # assembled once: an edit costs the virtual hosts it touches.
        known = memo.vhosts.get(id(vhost)) if memo is not None else None
        if known is not None and known[0] is vhost:
            data.append(known[1])
            continue
        # The name roots the virtual host's statistics: no dots (see translator/stats.py).
        parts = [rc.VirtualHost(name=stats.virtual_host_name(vhost.name), domains=vhost.domains).SerializeToString(deterministic=True)]
        for route in vhost.routes:
            cached = memo.routes.get(id(route)) if memo is not None else None
            if cached is None or cached[0] is not route:
                cached = (route, _field(_VHOST_ROUTES, translate_route(route, route_stats).SerializeToString(deterministic=True)))
                if memo is not None:
                    memo.routes[id(route)] = cached
            parts.append(cached[1])
        data.append(_field(_CONFIG_VIRTUAL_HOSTS, b"".join(parts)))
        if memo is not None:
            memo.vhosts[id(vhost)] = (vhost, data[-1])
    return route_pb2.RouteConfiguration.FromString(b"".join(data))


# Field numbers of the repeated fields assembled by hand above (route.proto).
_CONFIG_VIRTUAL_HOSTS = route_pb2.RouteConfiguration.DESCRIPTOR.fields_by_name["virtual_hosts"].number
_VHOST_ROUTES = rc.VirtualHost.DESCRIPTOR.fields_by_name["routes"].number


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field: key (number, wire type 2), varint length, payload."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string_match(value: str, regex: bool) -> string_pb2.StringMatcher:
    if regex:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=value))
    return string_pb2.StringMatcher(exact=value)


def translate_route(route: ir.Route, route_stats: bool = True) -> rc.Route:
    # stat_prefix: per-rule statistics (requests by code, latency histogram), see translator/stats.py.
    out = rc.Route(name=route.name, stat_prefix=stats.route_stat_prefix(route) if route_stats else "")
    _set_match(out.match, route.match)
    if route.grpc:
        # Only gRPC calls: content-type application/grpc[+proto] and, for browsers, gRPC-Web's
        # application/grpc-web[+proto|-text]. Not `match.grpc`, which accepts only the former:
        # Envoy picks the route before the grpc_web filter rewrites gRPC-Web to gRPC.
        out.match.headers.add(name="content-type", string_match=string_pb2.StringMatcher(prefix="application/grpc"))
    if route.security is not None and route.security.invalid:
        # The SecurityPolicy in force can't be applied (its Secret is missing, say): refuse rather
        # than serve the route unprotected, as Envoy Gateway does. The reason is in its status.
        out.direct_response.status = 500
        out.direct_response.body.inline_string = "the security policy of this route is invalid\n"
    elif route.redirect is not None:
        _set_redirect(out.redirect, route.redirect)
    else:
        _set_action(out.route, route)
    for name, value in route.request_headers.set:
        out.request_headers_to_add.append(_header(name, value, overwrite=True))
    for name, value in route.request_headers.add:
        out.request_headers_to_add.append(_header(name, value, overwrite=False))
    out.request_headers_to_remove.extend(route.request_headers.remove)
    for name, value in route.response_headers.set:
        out.response_headers_to_add.append(_header(name, value, overwrite=True))
    for name, value in route.response_headers.add:
        out.response_headers_to_add.append(_header(name, value, overwrite=False))
    out.response_headers_to_remove.extend(route.response_headers.remove)
    if _has_filter_settings(route):
        for module in HTTP_FILTERS:
            for name, config in _route_filters(module, route):
                out.typed_per_filter_config[name].Pack(config, deterministic=True)
    return out


def _header(name: str, value: str, overwrite: bool) -> base_pb2.HeaderValueOption:
    action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD if overwrite else base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
    # Gateway API values are literal; Envoy reads %...% as a formatter ("50%" would be NACKed).
    literal = value.replace("%", "%%")
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=literal), append_action=action)


def _set_match(out: rc.RouteMatch, match: ir.Match) -> None:
    path = match.path
    if path.kind == "exact":
        out.path = path.value
    elif path.kind == "prefix":
        # Gateway API prefixes match whole segments: /foo matches /foo and /foo/bar, not /foobar.
        trimmed = path.value.rstrip("/")
        if trimmed:
            out.path_separated_prefix = trimmed
        else:
            out.prefix = "/"
    elif path.kind == "regex":
        out.safe_regex.regex = path.value
    else:
        out.path_match_policy.name = "envoy.path.match.uri_template.uri_template_matcher"
        out.path_match_policy.typed_config.Pack(uri_template_match_pb2.UriTemplateMatchConfig(path_template=path.value), deterministic=True)
    if match.method:
        out.headers.add(name=":method", string_match=string_pb2.StringMatcher(exact=match.method))
    for h in match.headers:
        out.headers.add(name=h.name, string_match=_string_match(h.value, h.regex))
    for q in match.query:
        out.query_parameters.add(name=q.name, string_match=_string_match(q.value, q.regex))


_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}


def _set_redirect(out: rc.RedirectAction, redirect: ir.Redirect) -> None:
    out.response_code = _REDIRECT_CODES[redirect.status_code]
    if redirect.scheme:
        out.scheme_redirect = redirect.scheme
    if redirect.host:
        out.host_redirect = redirect.host
    if redirect.port:
        out.port_redirect = redirect.port
    if redirect.full_path is not None:
        out.path_redirect = redirect.full_path
    elif redirect.prefix is not None:
        out.prefix_rewrite = redirect.prefix


NO_BACKEND = "meshgate/no-backend"  # a cluster that never exists: Envoy answers 500 (see below)


def _set_action(out: rc.RouteAction, route: ir.Route) -> None:
    # A share whose backendRef could not be resolved goes to a cluster name that doesn't exist,
    # which Envoy answers with `cluster_not_found_response_code` (500, as Gateway API requires).
    names = [d.cluster or NO_BACKEND for d in route.destinations]
    if len(route.destinations) == 1:
        out.cluster = names[0]
    elif route.destinations:
        # Split traffic by weight; Envoy picks a cluster per request.
        for d, name in zip(route.destinations, names):
            out.weighted_clusters.clusters.add(name=name, weight=wrappers_pb2.UInt32Value(value=d.weight))
    else:
        # Every backendRef has weight 0: Gateway API says answer 500.
        out.cluster = NO_BACKEND
    if NO_BACKEND in names or not route.destinations:
        out.cluster_not_found_response_code = rc.RouteAction.INTERNAL_SERVER_ERROR
    if route.timeout_s is not None:
        out.timeout.CopyFrom(_duration(route.timeout_s))  # 0 disables Envoy's default 15 s
    if route.per_try_timeout_s is not None:
        out.retry_policy.per_try_timeout.CopyFrom(_duration(route.per_try_timeout_s))
        out.retry_policy.num_retries.value = 0
    if route.hash_policy is not None:
        _set_hash_policy(out.hash_policy.add(), route.hash_policy)
    if route.rewrite is not None:
        _set_rewrite(out, route)
    if route.grpc:
        # Honour the client's grpc-timeout header as the route timeout.
        out.max_stream_duration.grpc_timeout_header_max.SetInParent()
    backend_traffic.set_route_traffic(out, route)  # BackendTrafficPolicy: retries, gRPC deadline cap
    for mirror in route.mirrors:
        # Envoy sends a copy of the request (fire and forget; the copy's Host gets "-shadow").
        policy = out.request_mirror_policies.add(cluster=mirror.cluster)
        if mirror.per_million < 1_000_000:
            share = policy.runtime_fraction.default_value
            if mirror.per_million % 10_000 == 0:
                share.numerator, share.denominator = mirror.per_million // 10_000, percent_pb2.FractionalPercent.HUNDRED
            else:
                share.numerator, share.denominator = mirror.per_million, percent_pb2.FractionalPercent.MILLION


def _set_hash_policy(out: rc.RouteAction.HashPolicy, policy: ir.HashPolicy) -> None:
    if policy.header:
        out.header.header_name = policy.header
    elif policy.cookie:
        out.cookie.name = policy.cookie
        if policy.cookie_ttl_s is not None:
            out.cookie.ttl.CopyFrom(_duration(policy.cookie_ttl_s))
    elif policy.query_param:
        out.query_parameter.name = policy.query_param
    else:
        out.connection_properties.source_ip = True


def _set_rewrite(out: rc.RouteAction, route: ir.Route) -> None:
    rewrite = route.rewrite
    if rewrite.host:
        out.host_rewrite_literal = rewrite.host
    if rewrite.full_path is not None:
        if route.match.path.kind == "template" and "{" in rewrite.full_path:
            # Reuse the variables the uri_template matcher captured: /users/{id} -> /v2/u/{id}.
            out.path_rewrite_policy.name = "envoy.path.rewrite.uri_template.uri_template_rewriter"
            out.path_rewrite_policy.typed_config.Pack(
                uri_template_rewrite_pb2.UriTemplateRewriteConfig(path_template_rewrite=rewrite.full_path),
                deterministic=True,
            )
        else:
            out.regex_rewrite.pattern.regex = "^/.*$"
            out.regex_rewrite.substitution = rewrite.full_path
    elif rewrite.prefix is not None:
        prefix = route.match.path.value.rstrip("/")
        if rewrite.prefix == "/" and prefix:
            # "/api/x" with prefix "/api" replaced by "/" must become "/x", not "//x".
            out.regex_rewrite.pattern.regex = f"^{re.escape(prefix)}/*"
            out.regex_rewrite.substitution = "/"
        else:
            out.prefix_rewrite = rewrite.prefix


# --- clusters and endpoints ------------------------------------------------------------------

_LB = {
    "RoundRobin": cluster_pb2.Cluster.ROUND_ROBIN,
    "LeastRequest": cluster_pb2.Cluster.LEAST_REQUEST,
    "Random": cluster_pb2.Cluster.RANDOM,
    "RingHash": cluster_pb2.Cluster.RING_HASH,
    "Maglev": cluster_pb2.Cluster.MAGLEV,
}


def translate_cluster(cluster: ir.Cluster) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster(
        name=cluster.name,
        connect_timeout=_duration(cluster.connect_timeout_s),
        lb_policy=_LB[cluster.lb],
    )
    if cluster.dns:
        # Endpoints given by DNS name: Envoy resolves them (and re-resolves) itself.
        out.type = cluster_pb2.Cluster.STRICT_DNS
        out.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        out.load_assignment.CopyFrom(translate_endpoints(cluster))
    else:
        # Endpoints come from EDS, over ADS, under the cluster's own name.
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.eds_config.CopyFrom(_ads())
    if cluster.tls is not None and len(cluster.tls.alpn) > 1:
        # ALPN offers h2 and http/1.1: auto_config makes Envoy speak whichever the backend picked.
        options = http_protocol_options_pb2.HttpProtocolOptions()
        options.auto_config.http2_protocol_options.SetInParent()
        out.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Pack(options, deterministic=True)
    elif cluster.protocol in ("HTTP2", "GRPC"):
        options = http_protocol_options_pb2.HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.SetInParent()
        out.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Pack(options, deterministic=True)
    if cluster.tls is not None:
        out.transport_socket.CopyFrom(upstream_tls.transport_socket(cluster.tls))  # upstream TLS (and mTLS)
    backend_traffic.set_cluster_settings(out, cluster)  # BackendTrafficPolicy cluster variants
    if cluster.localities:
        failover.set_cluster(out, cluster)  # priority failover (Backend fallback)
    return out


def translate_endpoints(cluster: ir.Cluster) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster.name)
    if cluster.localities:  # a failover cluster: one locality per Backend, by priority
        failover.add_localities(cla, cluster, _add_endpoints)
    else:
        _add_endpoints(cla.endpoints.add(), cluster.endpoints)
    return cla


def _add_endpoints(locality: endpoint_pb2.LocalityLbEndpoints, endpoints: tuple[ir.Endpoint, ...]) -> None:
    for e in endpoints:
        locality.lb_endpoints.add(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=e.address, port_value=e.port))
            ),
            load_balancing_weight=wrappers_pb2.UInt32Value(value=e.weight),
            # DRAINING: no new requests while other endpoints are healthy (Envoy's panic mode
            # still uses it if nothing else is left).
            health_status=health_check_pb2.DRAINING if e.draining else health_check_pb2.UNKNOWN,
        )


_ = extension_pb2  # imported so its types are in the descriptor pool for Any
