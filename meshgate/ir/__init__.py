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
    hash_policy: HashPolicy | None = None
    grpc: bool = False


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
class TLSServerName:
    """One certificate on an HTTPS port, served to clients asking for these SNI names."""

    server_names: tuple[str, ...]  # empty: the default certificate
    secret: str  # name of a `Secret` in `IR.secrets`


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


@dataclass(slots=True)
class Cluster:
    name: str
    endpoints: tuple[Endpoint, ...]
    lb: str  # RoundRobin | LeastRequest | Random | RingHash | Maglev
    protocol: str  # HTTP1 | HTTP2 | GRPC
    connect_timeout_s: float
    dns: bool  # endpoints are names Envoy resolves itself (no EDS)


@dataclass(slots=True)
class IR:
    listeners: tuple[Listener, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    secrets: tuple[Secret, ...] = ()
