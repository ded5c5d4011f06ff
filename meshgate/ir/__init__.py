"""The intermediate representation: a flat, Envoy-agnostic picture of what the gateway does.

Types only. `meshgate.gatewayapi` builds an `IR` from the resource model (resolving every policy
per listener and per route), and `meshgate.xds.translator` walks it to produce Envoy resources.
Nothing here knows where a setting came from (which object, which policy) or how Envoy spells it:
that is the point of the IR, as in Envoy Gateway's `internal/ir`.

IR objects are never changed after they are built (the translators' memos rely on it). They are
plain slotted dataclasses, not frozen ones: at 10,000 routes a frozen dataclass's slower
constructor is a measurable part of a reload.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshgate.ir.shaping import Shaping  # noqa: F401  (re-exported: route traffic shaping types)


@dataclass(slots=True)
class HeaderMatch:
    name: str
    value: str
    regex: bool = False


@dataclass(slots=True)
class PathMatch:
    kind: str  # "exact" | "prefix" | "regex" | "template"
    value: str


@dataclass(slots=True)
class Match:
    path: PathMatch
    method: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[HeaderMatch, ...] = ()


@dataclass(slots=True, unsafe_hash=True)  # hashable: it is a shared default value
class HeaderMods:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(slots=True)
class Rewrite:
    host: str | None = None
    full_path: str | None = None  # literal, or a template using {variables} when the match is a template
    prefix: str | None = None


@dataclass(slots=True)
class Redirect:
    scheme: str | None
    host: str | None
    port: int | None
    full_path: str | None
    prefix: str | None
    status_code: int


@dataclass(slots=True)
class HashPolicy:
    header: str | None = None
    cookie: str | None = None
    cookie_ttl_s: float | None = None
    query_param: str | None = None
    source_ip: bool = False


@dataclass(slots=True)
class Destination:
    """A weighted share of a rule's traffic. `cluster` None: the backendRef could not be resolved,
    and this share is answered with HTTP 500 (Gateway API's rule for invalid backendRefs)."""

    cluster: str | None
    weight: int
    # Set when `cluster` is a failover cluster (a rule with a `fallback` Backend): what it is made of.
    failover: tuple[FailoverMember, ...] = ()


@dataclass(slots=True, frozen=True)
class FailoverMember:
    """One Backend of a failover cluster: its own cluster's endpoints, at an Envoy priority."""

    cluster: str  # the Backend's own cluster
    weight: int  # its backendRef weight: the locality's weight within its priority
    priority: int  # 0: primary; 1: fallback (used when priority 0 is not healthy enough)


@dataclass(slots=True)
class Mirror:
    """A copy of a share of the route's requests, sent to `cluster`; its response is dropped."""

    cluster: str
    per_million: int  # share of requests mirrored, per million


@dataclass(slots=True)
class CorsPolicy:
    """Cross-origin resource sharing for a route, answered by the proxy itself."""

    origins: tuple[tuple[str, str], ...]  # (kind, value): ("exact", "https://a.example") | ("regex", ...)
    credentials: bool = False
    methods: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    expose: tuple[str, ...] = ()
    max_age_s: int = 5


@dataclass(slots=True, unsafe_hash=True)
class RetryPolicy:
    """When and how often a route's request is tried again (BackendTrafficPolicy `retry`)."""

    num_retries: int
    triggers: tuple[str, ...]  # connect-failure, 5xx, ... (HTTP), cancelled, unavailable, ... (gRPC)
    status_codes: tuple[int, ...] = ()  # with trigger retriable-status-codes
    backoff_base_s: float | None = None
    backoff_max_s: float | None = None
    methods: tuple[str, ...] = ()  # only requests with these methods are retried; empty: any


@dataclass(slots=True, unsafe_hash=True)
class JwtProvider:
    """Where a JWT is read from and how it is verified (SecurityPolicy `jwt.providers[]`)."""

    name: str  # unique on the listener (derived from the settings)
    label: str  # the provider's own name: its verified claims are kept under it for authorization
    issuer: str | None
    audiences: tuple[str, ...]
    jwks_inline: str | None  # the key set itself, or
    jwks_uri: str | None  # where the proxy fetches it, through
    jwks_cluster: str | None  # this cluster (in IR.clusters)
    jwks_cache_s: float
    headers: tuple[tuple[str, str], ...]  # (header name, value prefix); all three empty: the default places
    cookies: tuple[str, ...]
    params: tuple[str, ...]
    claim_to_headers: tuple[tuple[str, str], ...]  # (header, claim)
    recompute_route: bool = False


@dataclass(slots=True, unsafe_hash=True)
class JwtRequirement:
    """A token verified by one of `providers`; with `optional`, a request without one passes too."""

    name: str  # unique on the listener (derived from the settings)
    providers: tuple[JwtProvider, ...]
    optional: bool = False


@dataclass(slots=True, unsafe_hash=True)
class AuthzPrincipal:
    """Who a rule is about; every part given must match (an empty part matches anyone)."""

    cidrs: tuple[str, ...] = ()  # the client address is in one of them
    jwt_provider: str | None = None  # claims and scopes come from this provider's verified token
    claims: tuple[tuple[str, bool, tuple[str, ...]], ...] = ()  # (dotted name, is an array, accepted values)
    scopes: tuple[str, ...] = ()  # all present in the token's space-separated `scope`
    headers: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, accepted values)


@dataclass(slots=True, unsafe_hash=True)
class AuthzRule:
    name: str
    allow: bool
    principal: AuthzPrincipal
    methods: tuple[str, ...] = ()  # empty: any method


@dataclass(slots=True, unsafe_hash=True)
class Authorization:
    """Rules in order, the first match decides; `default_allow` when none matches."""

    rules: tuple[AuthzRule, ...]
    default_allow: bool = False


@dataclass(slots=True, unsafe_hash=True)
class ApiKeyAuth:
    """API keys: a request must carry one of `credentials` in one of `sources`."""

    credentials: tuple[tuple[str, str], ...]  # (client id, key)
    sources: tuple[tuple[str, str], ...]  # (header | query | cookie, name), tried in order
    forward_client_id_header: str | None = None
    sanitize: bool = False  # remove the key before the request goes upstream


@dataclass(slots=True, unsafe_hash=True)
class BasicAuth:
    htpasswd: str  # "user:{SHA}base64(sha1(password))" lines


@dataclass(slots=True, unsafe_hash=True)
class OIDC:
    """OpenID Connect login by the proxy (authorization code flow)."""

    name: str  # unique on the listener (derived from the settings)
    client_id: str
    client_secret: str  # name of a `GenericSecret` in IR.secrets
    hmac_secret: str  # likewise: the key that signs the session cookies
    authorization_endpoint: str
    token_endpoint: str
    token_cluster: str  # the cluster (in IR.clusters) that reaches the token endpoint
    redirect_uri: str
    redirect_path: str  # the callback path the proxy answers itself
    logout_path: str
    scopes: tuple[str, ...]
    resources: tuple[str, ...] = ()
    forward_access_token: bool = False
    refresh_token: bool = False
    default_token_ttl_s: float | None = None
    default_refresh_token_ttl_s: float | None = None
    cookie_domain: str | None = None
    deny_redirect: tuple[tuple[str, str, str], ...] = ()  # (header, Exact|Prefix|Suffix|RegularExpression, value)
    pass_through_auth_header: bool = False


@dataclass(slots=True, unsafe_hash=True)
class RequestSignature:
    """HMAC request signatures (SecurityPolicy `requestSignature`, meshgate extension), verified
    by the edge companion through Envoy's ext_authz. `keys` go to the companion's config only
    (meshgate.edge.config), never into an Envoy resource."""

    policy: str  # the companion's name for it, sent by Envoy as an ext_authz context extension
    keys: tuple[tuple[str, bytes], ...]  # (key id, key)
    headers: tuple[str, ...] = ()  # signed headers, lower case, in order
    max_skew_s: int = 300
    max_body_bytes: int = 65536  # 0: the body is not signed
    timeout_s: float = 0.5
    failure_mode_allow: bool = False
    scheme: str = "Meshgate"  # or "RFC9421" (HTTP Message Signatures)
    components: tuple[str, ...] = ()  # RFC9421: derived components a signature must cover
    algorithms: tuple[tuple[str, str], ...] = ()  # RFC9421: (key id, "ed25519") for public keys; others HMAC
    nonce_store: str = "Memory"  # or "Redis": nonces shared by every companion


@dataclass(slots=True, unsafe_hash=True)
class Security:
    """Who may call a route (SecurityPolicy, resolved)."""

    jwt: JwtRequirement | None = None
    oidc: OIDC | None = None
    api_key: ApiKeyAuth | None = None
    basic: BasicAuth | None = None
    authorization: Authorization | None = None
    signature: RequestSignature | None = None  # verified per request by the edge companion
    # Set when the policy in force can't be applied (a Secret it names is missing, say): the
    # route answers 500 rather than serve unprotected.
    invalid: str | None = None


@dataclass(slots=True, unsafe_hash=True)
class GrpcJsonTranscoding:
    """A gRPC service served as REST/JSON (GRPCJSONTranscoder, resolved: the descriptor set's bytes)."""

    name: str  # "<namespace>/<name>" of the GRPCJSONTranscoder
    descriptor_set: bytes
    services: tuple[str, ...]
    add_whitespace: bool = False
    always_print_primitive_fields: bool = False
    always_print_enums_as_ints: bool = False
    preserve_proto_field_names: bool = False
    ignore_unknown_query_parameters: bool = False
    convert_grpc_status: bool = True


@dataclass(slots=True)
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
    max_stream_duration_s: float | None = None  # streams (a WebSocket's whole life) are reset after it
    hash_policy: HashPolicy | None = None
    grpc: bool = False
    retry: RetryPolicy | None = None
    mirrors: tuple[Mirror, ...] = ()
    cors: CorsPolicy | None = None
    security: Security | None = None
    transcoding: GrpcJsonTranscoding | None = None  # JSON requests become gRPC calls (grpc_json_transcoder)
    shaping: Shaping | None = None  # rate limits (BackendTrafficPolicy), see meshgate.ir.shaping


@dataclass(slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclass(slots=True)
class Secret:
    """A TLS certificate and key, delivered to Envoy by name (SDS), never inline in a listener."""

    name: str
    cert_pem: bytes
    key_pem: bytes


@dataclass(slots=True)
class CASecret:
    """Trusted CA certificates (PEM bundle) for verifying a backend, delivered by name (SDS)."""

    name: str
    ca_pem: bytes
    ca_file: str | None = None  # instead of ca_pem: a bundle the proxy reads itself (the system's CAs)


@dataclass(slots=True)
class GenericSecret:
    """A secret value (an OAuth client secret, a cookie-signing key), delivered by name (SDS)."""

    name: str
    value: bytes


@dataclass(slots=True)
class TLSServerName:
    """One certificate on an HTTPS port, served to clients asking for these SNI names."""

    server_names: tuple[str, ...]  # empty: the default certificate
    secret: str  # name of a `Secret` in `IR.secrets`


@dataclass(slots=True, unsafe_hash=True)
class Tracing:
    """A Gateway's own tracer (its EnvoyProxy's `telemetry.tracing`): where spans go, how many."""

    host: str  # the OTLP/gRPC collector
    port: int
    sampling_percent: float
    service_name: str | None = None  # None: the environment's (OTEL_SERVICE_NAME) or `meshgate`
    # (tag, kind, value or variable/header name, default): kind Literal | Environment | RequestHeader
    custom_tags: tuple[tuple[str, str, str, str | None], ...] = ()


@dataclass(slots=True, unsafe_hash=True)  # hashable: it is a shared default value
class ClientSettings:
    """How a listener treats its clients (ClientTrafficPolicy, resolved; every value set).

    The defaults are a hardened edge, following Envoy's "Configuring Envoy as an edge proxy" best
    practices; a ClientTrafficPolicy overrides them field by field.
    """

    # -- path handling: route on what the upstream will see
    merge_slashes: bool = True
    escaped_slashes: str = "UnescapeAndRedirect"  # KeepUnchanged | RejectRequest | UnescapeAndRedirect | UnescapeAndForward
    # -- headers
    headers_with_underscores: str = "RejectRequest"  # Allow | RejectRequest | DropHeader
    enable_envoy_headers: bool = False  # x-envoy-* response headers (upstream timing, overloaded...)
    # -- timeouts (seconds; 0 disables)
    request_headers_timeout_s: float = 10.0
    request_received_timeout_s: float = 0.0
    idle_timeout_s: float = 3600.0
    stream_idle_timeout_s: float = 300.0
    # -- connections
    connection_limit: int | None = None  # max concurrent connections on this listener
    connection_limit_close_delay_s: float = 0.0
    buffer_limit_bytes: int = 32768  # per-connection read/write buffer
    # -- HTTP/2
    http2_max_concurrent_streams: int = 100
    http2_initial_stream_window_bytes: int = 65536
    http2_initial_connection_window_bytes: int = 1048576
    # -- health check answered by Envoy itself (path), None: none
    health_check_path: str | None = None
    # -- the Gateway's EnvoyProxy tracing; None: the environment's (OTEL_EXPORTER_OTLP_*), if any
    tracing: Tracing | None = None


@dataclass(slots=True)
class Listener:
    name: str
    port: int
    tls: tuple[TLSServerName, ...]  # empty: plain HTTP
    virtual_hosts: tuple[VirtualHost, ...]
    settings: ClientSettings = ClientSettings()


@dataclass(slots=True)
class Endpoint:
    address: str
    port: int
    weight: int
    # A Kubernetes endpoint that is terminating but still serving: Envoy sends it no new requests
    # while others are healthy (health status DRAINING), so in-flight requests can finish.
    draining: bool = False


@dataclass(slots=True)
class UpstreamTLS:
    """TLS from Envoy to a cluster's endpoints (Backend `spec.tls`, resolved)."""

    sni: str | None  # server name sent in the ClientHello
    verify_name: str | None  # DNS name the backend's certificate must carry (None: chain only)
    ca_secret: str | None  # name of a `CASecret` in `IR.secrets`; None: no verification
    client_secret: str | None  # name of a `Secret` (client certificate) in `IR.secrets`
    alpn: tuple[str, ...]  # offered in order; two protocols: Envoy speaks what the backend picks


@dataclass(slots=True, unsafe_hash=True)
class CircuitBreakers:
    """Limits on what Envoy sends to a cluster at once; over them, requests fail fast with 503."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 1024
    retry_budget_percent: float | None = None  # set: retries limited to this share of active requests
    retry_budget_min_concurrency: int | None = None


@dataclass(slots=True, unsafe_hash=True)
class ActiveHealthCheck:
    kind: str  # HTTP | TCP | GRPC
    interval_s: float
    timeout_s: float
    healthy_threshold: int
    unhealthy_threshold: int
    http_path: str | None = None
    http_host: str | None = None
    http_method: str | None = None
    expected_statuses: tuple[int, ...] = ()  # empty: 200 only
    grpc_service: str | None = None


@dataclass(slots=True, unsafe_hash=True)
class OutlierDetection:
    """Passive health checking: endpoints answering errors are ejected for a while."""

    consecutive_5xx: int
    consecutive_gateway_errors: int
    consecutive_local_origin_failures: int
    split_external_local_origin_errors: bool
    interval_s: float
    base_ejection_time_s: float
    max_ejection_percent: int


@dataclass(slots=True, unsafe_hash=True)
class ClusterSettings:
    """Per-cluster settings from a BackendTrafficPolicy (None: the Backend's, or the default)."""

    connect_timeout_s: float | None = None
    idle_timeout_s: float | None = None
    max_connection_duration_s: float | None = None
    max_requests_per_connection: int | None = None
    circuit_breakers: CircuitBreakers | None = None
    health_check: ActiveHealthCheck | None = None
    outlier: OutlierDetection | None = None
    lb: str | None = None  # RoundRobin | LeastRequest | Random | Maglev
    slow_start_window_s: float | None = None
    panic_threshold_percent: int | None = None


@dataclass(slots=True)
class Cluster:
    name: str
    endpoints: tuple[Endpoint, ...]
    lb: str  # RoundRobin | LeastRequest | Random | RingHash | Maglev
    protocol: str  # HTTP1 | HTTP2 | GRPC
    connect_timeout_s: float
    dns: bool  # endpoints are names Envoy resolves itself (no EDS)
    settings: ClusterSettings | None = None  # a variant of a Backend's cluster (BackendTrafficPolicy)
    backend: str | None = None  # variants: the name of the Backend's own cluster, whose endpoints they share
    tls: UpstreamTLS | None = None  # None: plaintext
    # Failover clusters: endpoints by Backend, each a locality at a priority (`endpoints` unused).
    localities: tuple[Locality, ...] = ()


@dataclass(slots=True)
class Locality:
    name: str  # the Backend's cluster
    priority: int
    weight: int
    endpoints: tuple[Endpoint, ...]


@dataclass(slots=True)
class IR:
    listeners: tuple[Listener, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    secrets: tuple[Secret | CASecret | GenericSecret, ...] = ()
