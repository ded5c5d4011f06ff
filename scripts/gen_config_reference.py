#!/usr/bin/env python3
"""Generate docs/config-reference.md from meshgate's resource models.

    .venv/bin/python scripts/gen_config_reference.py > docs/config-reference.md   (or: make docs)

Field names, types, defaults and constraints come from the models' JSON Schema
(`model_json_schema(by_alias=True)`, so names are the YAML ones) and their docstrings and
descriptions. What the schema cannot say (how Envoy applies a field, which cross-document rules
apply) is written here by hand, in the NOTES tables below, kept short. Every note names a type
and field that must exist: a renamed field makes this script fail instead of documenting a ghost.

The output is deterministic (no dates, no dict-order surprises); tests/test_docs.py checks that
docs/config-reference.md equals it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from meshgate.api import models  # noqa: E402
from meshgate.api.config import KINDS as ALL_KINDS  # noqa: E402
from meshgate.api.policies import SIZE_RE  # noqa: E402

# One section per model: ReferenceGrant is documented under v1 (v1beta1 is accepted too).
from meshgate.api.service import SERVICE_KINDS  # noqa: E402

# Kubernetes' own Service, EndpointSlice and Namespace are read as a cluster writes them
# (docs/kubernetes.md; a Namespace's labels serve allowedRoutes selectors, docs/architecture.md).
KINDS = {key: model for key, model in ALL_KINDS.items()
         if key != ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant") and key not in SERVICE_KINDS
         and key != ("v1", "Namespace")}
from meshgate.api.schema import model_schema  # noqa: E402
from meshgate.runner import SAMPLE_UPSTREAM_ANNOTATION  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Hand-written knowledge (short). Keys are JSON Schema definition names (the model class names).

# Named string formats: pattern -> (name, what it is, examples).
FORMATS: dict[str, tuple[str, str, str]] = {
    models.DURATION_RE: ("Duration", "Gateway API duration: up to 4 number+unit parts, units `h`, `m`, `s`, `ms`",
                         "`10s`, `500ms`, `1m30s`"),
    models.NAME_RE: ("Name", "Kubernetes object name (DNS-1123 subdomain): lowercase letters, digits, `-` and `.`; "
                     "starts and ends with a letter or digit; at most 253 characters", "`edge`, `shop-api`"),
    models.HOSTNAME_RE: ("Hostname", "DNS name, lowercase, optionally starting with `*.` (any one or more leading "
                         "labels); at most 253 characters", "`api.example.com`, `*.example.com`"),
    SIZE_RE: ("Size", "bytes as a number, or a quantity with a suffix (`Ki`, `Mi`, `Gi`: powers of 1024; "
                       "`k`, `M`, `G`: powers of 1000)", "`32768`, `32Ki`, `1Mi`"),
    models.HEADER_NAME_RE: ("HeaderName", "HTTP header name (RFC 7230 token); at most 256 characters",
                            "`x-request-id`, `Authorization`"),
}

KIND_NOTES: dict[tuple[str, str], str] = {
    (models.GATEWAY_API_V1, "Gateway"): (
        "Each listener is a port Envoy opens. Listeners of every Gateway that use the same port become "
        "**one** Envoy listener (named `NAMESPACE/GATEWAY/PORT` after the first Gateway using the port): "
        "they must agree on `protocol`, and each (port, hostname) pair may be used once.\n\n"
        "**TLS** (`protocol: HTTPS`) takes the certificate and key from either\n\n"
        f"- `tls.options` `{models.CERT_FILE_OPTION}` and `{models.KEY_FILE_OPTION}`: PEM files, paths relative "
        "to the YAML file holding the Gateway; Envoy reads the files itself; or\n"
        "- `tls.certificateRefs`: a [`v1` Secret](#kind-v1-secret) of type `kubernetes.io/tls` (only the first "
        "reference is used; one in another namespace needs a [ReferenceGrant](#kind-gateway-networking-k8s-io-v1-referencegrant)).\n\n"
        "meshgate checks the pair before Envoy sees it: a PEM X.509 certificate, an unencrypted PEM key, and "
        "a key that belongs to the certificate. Several HTTPS listeners on one port serve their certificates "
        "by SNI (the listener `hostname`); the one without a hostname is the default."
    ),
    (models.GATEWAY_API_V1, "HTTPRoute"): (
        "Rules attach to Gateway listeners through `parentRefs`; see [Routing semantics](#routing-semantics) "
        "for hostnames, path matching and precedence. The example includes the Gateway and Backend it refers to."
    ),
    (models.GATEWAY_API_V1, "GRPCRoute"): (
        "A gRPC call is an HTTP/2 POST to `/SERVICE/METHOD`. A method match becomes a path match: service and "
        "method → exact `/pkg.Service/Method`; service only → prefix `/pkg.Service/`; method only or "
        "`RegularExpression` → a regex on the path; no method → every call. Routes only match requests with "
        "`content-type: application/grpc`, and the client's `grpc-timeout` header is honoured. Backends must "
        "have `protocol: GRPC` or `HTTP2`. gRPC routes share [precedence](#routing-semantics) with HTTP routes "
        "on the same port and host."
    ),
    (models.MESHGATE_V1ALPHA1, "HTTPRoute"): (
        "The same fields as the Gateway API HTTPRoute, plus the `Template` path match type and URL rewrites "
        "that reuse the template's variables. See [Path templates](#path-templates)."
    ),
    (models.MESHGATE_V1ALPHA1, "Backend"): (
        "Endpoints given as IP addresses are sent to Envoy over EDS. If any endpoint is a DNS name, Envoy "
        "resolves the names itself (a `STRICT_DNS` cluster, IPv4 preferred) and re-resolves them.\n\n"
        f"**Sample upstreams.** With the annotation `{SAMPLE_UPSTREAM_ANNOTATION}: echo`, `meshgate run` starts "
        "an echo server (gRPC echo for `protocol: GRPC`) on each endpoint whose address is loopback "
        "(`127.0.0.0/8`, `::1`, `localhost`); it answers every request with a JSON description of it. "
        "`meshgate run --no-sample-upstreams` turns this off; other commands ignore the annotation. "
        f"`{SAMPLE_UPSTREAM_ANNOTATION}: greeter` starts the gRPC Greeter instead (a real protobuf API, for "
        "gRPC-Web and gRPC-JSON transcoding: see [gRPC](grpc.md))."
    ),
    (models.MESHGATE_V1ALPHA1, "GRPCJSONTranscoder"): (
        "**meshgate extension** (Envoy Gateway has no such kind). A route rule names it in an `ExtensionRef` "
        "filter (`group: meshgate.io`, `kind: GRPCJSONTranscoder`); that rule's JSON requests become gRPC calls "
        "to its gRPC backend, by the `google.api.http` options in the descriptor set (Envoy's "
        "`grpc_json_transcoder`). The descriptor set is checked when the config loads: it must parse, hold "
        "every import (`protoc --include_imports`) and each listed service; a `file` is read by meshgate "
        "(at most 1 MiB) and sent to Envoy inline. A rule whose transcoder is missing or invalid answers "
        "HTTP 500. See [gRPC-JSON transcoding](grpc.md#grpc-json-transcoding)."
    ),
    (models.MESHGATE_V1ALPHA1, "EnvoyProxy"): (
        "Envoy Gateway's `EnvoyProxy`, for what meshgate has of it: `spec.telemetry.tracing`. A Gateway names it "
        "in `spec.infrastructure.parametersRef` (`group: meshgate.io`, `kind: EnvoyProxy`, same namespace); that "
        "Gateway's listeners then trace to this collector, at this rate, with these tags, instead of the "
        "`OTEL_EXPORTER_OTLP_*` environment's settings. A parametersRef to a missing EnvoyProxy leaves the Gateway "
        "`Accepted=False` (`InvalidParameters`), its listeners served without it. Envoy Gateway's deployment "
        "fields (`provider`, `bootstrap`, ...) are refused: meshgate configures Envoys, it does not deploy them. "
        "See [observability](observability.md#a-gateways-own-tracer-envoyproxy)."
    ),
    ("v1", "Secret"): (
        "Holds a certificate for an HTTPS listener that names it in `tls.certificateRefs`. The keys are "
        "`tls.crt` and `tls.key`, in `data` (base64) or `stringData` (plain text, wins over `data`). The "
        "placeholder below validates on its own; a Gateway that uses it needs a real certificate and key."
    ),
    ("v1", "ConfigMap"): (
        "Text values other objects name, as in Envoy Gateway: a Backend's `tls.caCertificateRefs` entry with "
        "`kind: ConfigMap` reads key `ca.crt`; a SecurityPolicy JWT provider's `localJWKS` of `type: ValueRef` "
        "reads key `jwks`; a BackendTrafficPolicy `responseOverride` body of `type: ValueRef` reads key "
        "`response.body` (for these two, without that key the first key, alphabetically). The ConfigMap is in "
        "the referring object's namespace. A change to it takes effect on the next reload (in Kubernetes: "
        "when the API server reports it). `binaryData` (base64) is read too. See [Kubernetes](kubernetes.md#configmaps)."
    ),
    (models.GATEWAY_API_V1, "ReferenceGrant"): (
        "Also accepted as `apiVersion: gateway.networking.k8s.io/v1beta1`. Deleting a grant takes effect on "
        "the next reload: the references it admitted become unresolved (their share of requests gets HTTP 500).\n\n"
        "Namespaces are tenancy boundaries: a route's `backendRefs` to a Backend in another namespace, or a "
        "Gateway's `certificateRefs` to a Secret in another namespace, is refused unless a ReferenceGrant "
        "**in the target's namespace** lists the referring object in `from` (its API group, kind and "
        "namespace) and the target in `to` (`group: meshgate.io, kind: Backend`, or `group: \"\", kind: "
        "Secret`; without `name`, every object of that kind)."
    ),
}

TYPE_NOTES: dict[str, str] = {
    "HTTPPathMatch": "`Exact`: the whole path. `PathPrefix`: whole segments, see [Routing semantics]"
                     "(#routing-semantics). `RegularExpression`: RE2 syntax (Envoy's engine), must match the "
                     "whole path without the query string.",
    "MeshgatePathMatch": "`Template` adds [path templates](#path-templates); the other types are as in "
                         "[HTTPPathMatch](#type-httppathmatch).",
    "MeshgateRouteRule": "HTTPRouteRule whose matches may use `Template` paths; a `URLRewrite` with "
                         "`ReplaceFullPath` may reuse the captured variables (see [Path templates](#path-templates)).",
    "MeshgateRouteMatch": "HTTPRouteMatch whose `path` may be a `Template`.",
    "MeshgateHTTPRouteSpec": "HTTPRouteSpec with [MeshgateRouteRule](#type-meshgaterouterule) rules.",
    "HTTPRouteMatch": "Every condition of a match must hold; a rule applies when any of its matches does.",
    "GRPCRouteMatch": "Every condition of a match must hold; a rule applies when any of its matches does.",
    "HTTPRouteFilter": "Set `type` and the one field named after it. Each type at most once per rule; "
                       "`RequestRedirect` can't be combined with `URLRewrite` or with `backendRefs`.",
    "ReplacePath": "Set `type` and the one value field it names.",
}

FIELD_NOTES: dict[tuple[str, str], str] = {
    ("ObjectMeta", "name"): "Unique per API group, kind and namespace.",
    ("ObjectMeta", "namespace"): "The tenancy boundary: references across namespaces need a "
                                 "[ReferenceGrant](#kind-gateway-networking-k8s-io-v1-referencegrant).",
    ("ObjectMeta", "annotations"): f"`{SAMPLE_UPSTREAM_ANNOTATION}: echo` on a Backend: see "
                                   "[Backend](#kind-meshgate-io-v1alpha1-backend).",
    ("GatewaySpec", "gatewayClassName"): "Accepted for compatibility; not used.",
    ("GatewaySpec", "listeners"): "Listener names must be unique within the Gateway.",
    ("Listener", "name"): "What a route's `parentRefs[].sectionName` refers to.",
    ("Listener", "hostname"): "Only requests for this host (and, for HTTPS, this SNI name); absent: any host. "
                              "Intersected with route hostnames.",
    ("Listener", "port"): "Bound on the `--bind` address (`meshgate run`: 127.0.0.1; `meshgate xds` and "
                          "`translate`: 0.0.0.0).",
    ("Listener", "protocol"): "`HTTP`: HTTP/1.1 and cleartext HTTP/2 on one port. `HTTPS`: TLS 1.2 or later, "
                              "ALPN `h2` and `http/1.1`; needs `tls` (and `HTTP` forbids it).",
    ("Listener", "allowedRoutes"): "Which namespaces' routes may attach.",
    ("RouteNamespaces", "from"): "`Same`: routes in the Gateway's namespace only; `All`: any namespace.",
    ("GatewayTLSConfig", "mode"): "Envoy terminates TLS.",
    ("GatewayTLSConfig", "certificateRefs"): "Secrets of type `kubernetes.io/tls`; only the first is used. "
                                             "Needed unless `options` name files.",
    ("GatewayTLSConfig", "options"): "Both keys or neither; paths are relative to the YAML file.",
    ("SecretObjectReference", "namespace"): "Default: the Gateway's namespace.",
    ("ParentReference", "name"): "Name of the Gateway.",
    ("ParentReference", "namespace"): "Default: the route's namespace.",
    ("ParentReference", "sectionName"): "Attach only to the listener with this name.",
    ("ParentReference", "port"): "Attach only to listeners on this port.",
    ("BackendRef", "group"): "Must be `meshgate.io` (file mode).",
    ("BackendRef", "kind"): "Must be `Backend` (file mode).",
    ("BackendRef", "name"): "Name of the Backend.",
    ("BackendRef", "namespace"): "Default: the route's namespace; another namespace needs a ReferenceGrant.",
    ("BackendRef", "port"): "Not used: the Backend's endpoints carry their ports.",
    ("BackendRef", "weight"): "Share of the rule's requests, relative to the other backendRefs; 0 sends none. "
                              "If every weight is 0, Envoy answers 500.",
    ("HTTPHeaderFilter", "set"): "Set the header, replacing any value it had.",
    ("HTTPHeaderFilter", "add"): "Add a value, keeping existing ones.",
    ("HTTPHeaderFilter", "remove"): "Header names to remove.",
    ("HTTPHeaderMatch", "type"): "`RegularExpression`: RE2, must match the whole value.",
    ("HTTPHeaderMatch", "name"): "Case-insensitive.",
    ("GRPCHeaderMatch", "type"): "`RegularExpression`: RE2, must match the whole value.",
    ("GRPCHeaderMatch", "name"): "Case-insensitive.",
    ("HTTPQueryParamMatch", "type"): "`RegularExpression`: RE2, must match the whole value.",
    ("HTTPQueryParamMatch", "name"): "Case-sensitive.",
    ("HTTPRouteTimeouts", "request"): "Envoy's route timeout: from the end of the request until the whole "
                                      "response has arrived. Unset: Envoy's default, 15s; `0s` disables it.",
    ("HTTPRouteTimeouts", "backendRequest"): "Timeout of each attempt to the backend (Envoy's per-try timeout). "
                                             "No retries are configured.",
    ("ReplacePath", "replaceFullPath"): "With `ReplaceFullPath`: the new path. In a meshgate HTTPRoute it may "
                                        "use `{variables}` of `Template` matches.",
    ("ReplacePath", "replacePrefixMatch"): "With `ReplacePrefixMatch`: replaces the matched prefix (`/api` → `/` "
                                           "turns `/api/x` into `/x`). Every match of the rule must be a "
                                           "`PathPrefix`.",
    ("HTTPURLRewriteFilter", "hostname"): "Host header sent to the backend.",
    ("HTTPRequestRedirectFilter", "scheme"): "Unset parts of the redirect keep the request's values.",
    ("HTTPRouteMatch", "path"): "Default: every path.",
    ("HTTPRouteMatch", "headers"): "All must match.",
    ("HTTPRouteMatch", "queryParams"): "All must match.",
    ("HTTPRouteRule", "matches"): "Default: one match for every request.",
    ("HTTPRouteRule", "backendRefs"): "Required unless the rule has a `RequestRedirect` filter.",
    ("HTTPRouteSpec", "hostnames"): "Absent: the listeners' hostnames. See [Routing semantics](#routing-semantics).",
    ("HTTPRouteSpec", "parentRefs"): "The Gateways (and listeners) the routes attach to.",
    ("GRPCMethodMatch", "type"): "`Exact`: `service` like `pkg.Service`, `method` like `GetUser`. "
                                 "`RegularExpression`: RE2 for each that is set.",
    ("GRPCMethodMatch", "service"): "Set `service`, `method` or both.",
    ("GRPCRouteMatch", "method"): "Absent: every call.",
    ("GRPCRouteRule", "matches"): "Default: one match for every call.",
    ("GRPCRouteMatch", "headers"): "All must match.",
    ("GRPCRouteRule", "backendRefs"): "Backends with `protocol: GRPC` or `HTTP2`.",
    ("GRPCRouteSpec", "hostnames"): "Absent: the listeners' hostnames. See [Routing semantics](#routing-semantics).",
    ("BackendSpec", "connectTimeout"): "Time allowed to open a connection to an endpoint.",
    ("LoadBalancer", "type"): "`RingHash` and `Maglev` hash requests onto endpoints (consistent hashing) and "
                              "need `hashKey`; the others must not have one.",
    ("LoadBalancer", "hashKey"): "Applies to the routes of rules that send to this Backend.",
    ("HashKey", "header"): "Hash on this request header.",
    ("HashKey", "cookie"): "Hash on this cookie.",
    ("HashKey", "queryParam"): "Hash on this query parameter.",
    ("HashKey", "sourceIP"): "Hash on the client's IP address.",
    ("CookieHashKey", "ttl"): "If set, Envoy sets the cookie when the request has none.",
    ("ReferenceGrantFrom", "group"): "API group of the referring object: `gateway.networking.k8s.io` for "
                                     "Gateways and Gateway API routes, `meshgate.io` for meshgate HTTPRoutes.",
    ("ReferenceGrantFrom", "kind"): "`HTTPRoute`, `GRPCRoute` or `Gateway`.",
    ("ReferenceGrantFrom", "namespace"): "Namespace of the referring objects.",
    ("ReferenceGrantTo", "group"): "`meshgate.io` for Backends, `\"\"` for Secrets.",
    ("ReferenceGrantTo", "kind"): "`Backend` or `Secret`.",
    ("ReferenceGrantTo", "name"): "Absent: every object of that kind in the grant's namespace.",
    ("Secret", "type"): "Only TLS Secrets are read.",
    ("Secret", "data"): "Base64 values under `tls.crt` and `tls.key`.",
    ("Secret", "stringData"): "Plain-text values under `tls.crt` and `tls.key`.",
}

EXAMPLES: dict[tuple[str, str], str] = {
    (models.GATEWAY_API_V1, "Gateway"): """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: edge
spec:
  listeners:
    - name: http
      protocol: HTTP
      port: 8080
""",
    (models.GATEWAY_API_V1, "HTTPRoute"): """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shop
spec:
  parentRefs:
    - name: edge
  hostnames: [shop.example.com]
  rules:
    - matches:
        - path: {type: PathPrefix, value: /cart}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-served-by, value: meshgate}]
      backendRefs:
        - {group: meshgate.io, kind: Backend, name: cart}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: cart}
spec:
  endpoints: [{address: 127.0.0.1, port: 9001}]
""",
    (models.GATEWAY_API_V1, "GRPCRoute"): """\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: users
spec:
  parentRefs:
    - name: edge
  rules:
    - matches:
        - method: {service: users.v1.Users, method: GetUser}
      backendRefs:
        - {group: meshgate.io, kind: Backend, name: users-grpc}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: users-grpc}
spec:
  protocol: GRPC
  endpoints: [{address: 127.0.0.1, port: 50051}]
""",
    (models.MESHGATE_V1ALPHA1, "HTTPRoute"): """\
apiVersion: meshgate.io/v1alpha1
kind: HTTPRoute
metadata:
  name: users
spec:
  parentRefs:
    - name: edge
  rules:
    - matches:
        - path: {type: Template, value: "/users/{id}/orders/{order}"}
      filters:
        - type: URLRewrite
          urlRewrite:
            path: {type: ReplaceFullPath, replaceFullPath: "/v2/orders/{order}/owner/{id}"}
      backendRefs:
        - {group: meshgate.io, kind: Backend, name: users}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: users}
spec:
  endpoints: [{address: 127.0.0.1, port: 9003}]
""",
    (models.MESHGATE_V1ALPHA1, "EnvoyProxy"): """\
apiVersion: meshgate.io/v1alpha1
kind: EnvoyProxy
metadata: {name: traced}
spec:
  telemetry:
    tracing:
      samplingRate: 10
      provider: {type: OpenTelemetry, host: otel-collector.observability, port: 4317}
      customTags:
        env: {type: Literal, literal: {value: production}}
        tenant: {type: RequestHeader, requestHeader: {name: x-tenant, defaultValue: none}}
""",
    (models.MESHGATE_V1ALPHA1, "GRPCJSONTranscoder"): """\
apiVersion: meshgate.io/v1alpha1
kind: GRPCJSONTranscoder
metadata: {name: demo-rest}
spec:
  # Usually `file: api.pb`, from: protoc --include_imports --descriptor_set_out=api.pb api.proto
  descriptorSet:
    inline: CkAKCmRlbW8ucHJvdG8SBGRlbW8iAwoBTTIfCgREZW1vEhcKA0dldBIHLmRlbW8uTRoHLmRlbW8uTWIGcHJvdG8z
  services: [demo.Demo]
  printOptions: {alwaysPrintPrimitiveFields: true}
""",
    (models.MESHGATE_V1ALPHA1, "Backend"): f"""\
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata:
  name: echo
  annotations:
    {SAMPLE_UPSTREAM_ANNOTATION}: echo
spec:
  endpoints:
    - address: 127.0.0.1
      port: 9101
    - address: 127.0.0.1
      port: 9102
      weight: 2
  loadBalancer:
    type: LeastRequest
  connectTimeout: 2s
""",
    ("v1", "ConfigMap"): """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: error-pages
data:
  response.body: |
    {"error": "the service is unavailable, try again in a minute"}
""",
    ("v1", "Secret"): """\
apiVersion: v1
kind: Secret
metadata:
  name: shop-cert
type: kubernetes.io/tls
stringData:
  tls.crt: |
    -----BEGIN CERTIFICATE-----
    (PEM certificate chain)
    -----END CERTIFICATE-----
  tls.key: |
    -----BEGIN PRIVATE KEY-----
    (PEM private key)
    -----END PRIVATE KEY-----
""",
    (models.MESHGATE_V1ALPHA1, "BackendTrafficPolicy"): """\
# Every route of the Gateway gets a request timeout and retries; the `api` route adds a circuit
# breaker and health checks (cluster settings: its own Envoy cluster, see Policy attachment) and
# a local rate limit per user (docs/traffic.md#rate-limits).
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: edge-defaults}
spec:
  targetRefs:
    - {group: gateway.networking.k8s.io, kind: Gateway, name: edge}
  timeout:
    http: {requestTimeout: 2s}
  retry:
    numRetries: 2
    retryOn: {triggers: [connect-failure, retriable-status-codes], httpStatusCodes: [503]}
    perRetry: {timeout: 500ms, backOff: {baseInterval: 50ms, maxInterval: 500ms}}
---
apiVersion: meshgate.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: api}
spec:
  targetRefs:
    - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}
  circuitBreaker: {maxConnections: 100, maxPendingRequests: 50, maxParallelRequests: 100}
  healthCheck:
    active: {type: HTTP, http: {path: /healthz}, interval: 2s, unhealthyThreshold: 2}
    passive: {consecutive5XxErrors: 5, baseEjectionTime: 30s, maxEjectionPercent: 50}
  rateLimit:
    type: Local
    local:
      rules:
        - clientSelectors: [{headers: [{name: x-user, type: Distinct}]}]
          limit: {requests: 60, unit: Minute}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: api}
spec:
  endpoints: [{address: 10.0.0.1, port: 8080}, {address: 10.0.0.2, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: api}]
""",
    (models.MESHGATE_V1ALPHA1, "ClientTrafficPolicy"): """\
# The Gateway's listeners keep meshgate's hardened defaults but for what the policies change;
# the `public` listener gets its own policy on top (field by field: see Policy attachment).
apiVersion: meshgate.io/v1alpha1
kind: ClientTrafficPolicy
metadata:
  name: edge-clients
spec:
  targetRefs:
    - {group: gateway.networking.k8s.io, kind: Gateway, name: edge}
  timeout:
    http: {idleTimeout: 15m, requestHeadersTimeout: 5s}
  healthCheck: {path: /healthz}
---
apiVersion: meshgate.io/v1alpha1
kind: ClientTrafficPolicy
metadata:
  name: public-clients
spec:
  targetRefs:
    - {group: gateway.networking.k8s.io, kind: Gateway, name: edge, sectionName: public}
  path: {escapedSlashesAction: RejectRequest}
  headers: {withUnderscoresAction: DropHeader}
  connection:
    connectionLimit: {value: 10000, closeDelay: 1s}
    bufferLimit: 64Ki
  http2: {maxConcurrentStreams: 200, initialStreamWindowSize: 128Ki}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners:
    - {name: public, protocol: HTTP, port: 8080}
    - {name: internal, protocol: HTTP, port: 9080}
""",
    (models.MESHGATE_V1ALPHA1, "SecurityPolicy"): """\
# Route `api` needs a token of auth.example.com; its /admin rule only admins with a scope.
apiVersion: meshgate.io/v1alpha1
kind: SecurityPolicy
metadata: {name: api-jwt}
spec:
  targetRefs:
    - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}
  jwt:
    providers:
      - name: company
        issuer: https://auth.example.com
        audiences: [api]
        remoteJWKS: {uri: "https://auth.example.com/.well-known/jwks.json"}
        claimToHeaders: [{header: x-user, claim: sub}]
---
apiVersion: meshgate.io/v1alpha1
kind: SecurityPolicy
metadata: {name: admins}
spec:
  targetRefs:
    - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: api, sectionName: admin}
  jwt:
    providers:
      - name: company
        issuer: https://auth.example.com
        audiences: [api]
        localJWKS: {type: Inline, inline: '{"keys": [{"kty": "RSA", "key_ops": ["verify"], "n": "z1BtHienZw4d3UMGXR5Qgh-1Y5N_9wVgyij6oT7WPK1vjVR6zecSMNzak2IFqW2RSGJGrsK8e_cl9-qTsBiDF6Hoq-U9GvzDMp8rv3OVStaJbTD5ILuO1HfwAPQPBe7dSti8dpehG-LQ9-ypKfnZm4BueyWK1SxFLVt9ZPLXbh4qYT05FVLD8CJoCkopTJnuOstbdhE6POW2cL3xK77yscH-aLj_cpStyIFI15Arhb70GrZceXAArotJmz7ilrcMCaVBl_umC04hoA3AjsllNMtD58hXhg_AfZjCImr4afpvilFsSHZe5sF9iXWuV0ALnjCjogOTAZdJNK8ZGdbRaw", "e": "AQAB", "kid": "example", "alg": "RS256", "use": "sig"}]}'}
  authorization:
    defaultAction: Deny
    rules:
      - name: admins
        action: Allow
        principal:
          clientCIDRs: [10.0.0.0/8]
          jwt:
            provider: company
            claims: [{name: roles, valueType: StringArray, values: [admin]}]
            scopes: [admin.write]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: api}
spec:
  endpoints: [{address: 10.0.0.1, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: api}]
    - name: admin
      matches: [{path: {type: PathPrefix, value: /admin}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: api}]
""",
    (models.GATEWAY_API_V1, "ReferenceGrant"): """\
# A route in namespace "shop" sends to the Backend "payments" in namespace "payments".
apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata:
  name: shop-routes
  namespace: payments
spec:
  from:
    - {group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}
  to:
    - {group: meshgate.io, kind: Backend, name: payments}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: checkout, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /pay}}]
      backendRefs: [{group: meshgate.io, kind: Backend, name: payments, namespace: payments}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: meshgate.io/v1alpha1
kind: Backend
metadata: {name: payments, namespace: payments}
spec:
  endpoints: [{address: 127.0.0.1, port: 9004}]
""",
}

INTRO = """\
<!-- Generated by scripts/gen_config_reference.py from meshgate/api/models.py: do not edit by hand, run `make docs`. -->

# Configuration reference

meshgate reads Kubernetes-style YAML documents: `apiVersion`, `kind`, `metadata`, `spec`. The same
documents work as files (`meshgate validate`, `translate`, `run`, `xds`) and, later, as objects in a
cluster. Field names are the YAML (camelCase) names. Every object rejects unknown fields, so a typo
is an error with its file and line, never silently ignored. `meshgate schema [KIND]` prints the JSON
Schema this page is generated from.
"""

FILES_SECTION = """\
## Files, variables and overlays

- **Which files.** Each path is a file or a folder. Folders are searched recursively for `*.yaml` and
  `*.yml` files, read in sorted order; names starting with `.` are skipped. A file may hold several
  documents separated by `---`; empty documents are ignored.
- **Environment variables.** Values (never keys) may use `${NAME}` (an error if `NAME` is not set),
  `${NAME:-default}` (`default` when `NAME` is unset or empty) and `$${` for a literal `${`. A value may
  hold several references. An unquoted value is typed after substitution (with `PORT=8080`,
  `port: ${PORT}` is the number 8080); a quoted or block (`|`, `>`) value stays a string. Inside a flow
  mapping or list (`{...}`, `[...]`) the value must be quoted: `{port: "${PORT:-8080}"}`.
- **Overlays.** `NAME.ENV.yaml` beside `NAME.yaml` is the overlay of that file for environment `ENV`
  (for example `gateway.prod.yaml`). With `--env ENV` its documents are merged over the base documents
  with the same `apiVersion`, `kind`, `metadata.namespace` and `metadata.name`: mappings merge key by
  key at any depth, a list or a single value replaces the base value, a key set to null (`key: null`,
  `key: ~`, `key:`) is removed, and an overlay document that matches none is added. This is JSON Merge
  Patch (RFC 7386) per document. Overlays are never read on their own, get the same `${VAR}`
  substitution, and a problem in a field set by an overlay is reported at the overlay's line.
- **YAML.** Anchors, aliases and merge keys (`<<: *defaults`) work as in YAML 1.1; mapping keys are
  always strings.
- **Errors** are printed one per line as `FILE:LINE: field.path: problem`, all of them in one pass.
"""

ROUTING_SECTION = """\
## Routing semantics

These apply to HTTPRoute (both API groups) and GRPCRoute.

- **Attaching.** `parentRefs` name Gateways (namespace defaults to the route's); `sectionName` and
  `port` narrow the attachment to some listeners. A listener admits routes from its own namespace
  only, unless `allowedRoutes.namespaces.from: All`.
- **Hostnames.** A route serves the intersection of its `hostnames` with each listener's `hostname`:
  a route without hostnames takes the listener's (any host if the listener has none); a listener
  without one takes the route's; otherwise a route hostname is kept when it equals the listener's or
  a listener wildcard covers it (`*.example.com` covers `a.example.com`), and a route wildcard that
  covers the listener's hostname yields the listener's. A route none of whose hostnames a Gateway
  serves is an error. Envoy ignores the port in the `Host` header when matching.
- **Paths.** Envoy matches the normalized path (`.`/`..` segments resolved, duplicate slashes merged).
  `Exact` is the whole path. `PathPrefix` matches **whole segments**: `/api` matches `/api`, `/api/`
  and `/api/v1`, not `/apis`; a trailing `/` in the value is ignored and `/` matches everything.
  `RegularExpression` is RE2 and must match the whole path (without the query string). `Template` is
  in the meshgate HTTPRoute only: see [Path templates](#path-templates).
- **Precedence.** All rules attached to the same port and hostname form one ordered list, and the
  first that matches wins. meshgate orders it: path type `Exact`, then `Template`, then
  `RegularExpression`, then `PathPrefix`; within a type the longer value first (for templates, the
  literal characters); then a match with a `method`; then more header matches; then more query
  parameter matches; then the route's namespace and name; then rule order and match order.
- **Conflicts.** Two matches that are identical (same path, method, headers and query parameters) on
  the same port and hostname are an error: the second could never be used.
- **Backends.** In file mode `backendRefs` must say `group: meshgate.io, kind: Backend` (Gateway API's
  default, a `Service`, is refused). A Backend in another namespace needs a
  [ReferenceGrant](#kind-gateway-networking-k8s-io-v1-referencegrant) in that namespace. Several
  backendRefs split the rule's requests by `weight`.
- **No match:** Envoy answers 404.

### Path templates

A `Template` path (meshgate `HTTPRoute`, `meshgate.io/v1alpha1`) is a sequence of whole segments,
matched by Envoy's `uri_template` matcher:

| segment | matches |
|---|---|
| `users` | that literal segment |
| `*` | exactly one segment |
| `**` | the rest of the path; last segment only |
| `{name}` or `{name=*}` | one segment, captured as `name` |
| `{name=**}` | the rest of the path, captured as `name`; last segment only |

Variable names start with a letter (then letters, digits, `_`), appear once, at most 5 per template.
A segment can't mix a literal and a variable (`v{n}` is an error). A `URLRewrite` filter with
`ReplaceFullPath` may reuse the variables: `/users/{id}/orders/{order}` rewritten to
`/v2/orders/{order}/owner/{id}` sends `/users/42/orders/7` upstream as `/v2/orders/7/owner/42`. Every
match of such a rule must be a `Template` that captures every variable the rewrite uses.
"""


# ---------------------------------------------------------------------------------------------
# Rendering


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def kind_anchor(api_version: str, kind: str) -> str:
    return "kind-" + slug(f"{api_version} {kind}")


def type_anchor(name: str) -> str:
    return "type-" + slug(name)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    return f"``{text}``" if "`" in text else f"`{text}`"


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema without its `| None` branch (pydantic writes Optional[X] as anyOf[X, null])."""
    if "anyOf" in schema:
        branches = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(branches) == 1:
            return branches[0]
    return schema


def type_text(schema: dict[str, Any]) -> str:
    schema = non_null(schema)
    if "$ref" in schema:
        name = ref_name(schema["$ref"])
        return f"[{name}](#{type_anchor(name)})"
    if "anyOf" in schema:
        return " or ".join(type_text(s) for s in schema["anyOf"] if s.get("type") != "null")
    kind = schema.get("type")
    if kind == "array":
        return f"list of {type_text(schema['items'])}"
    if kind == "object":
        values = schema.get("additionalProperties")
        return f"map of string to {type_text(values)}" if isinstance(values, dict) else "object"
    if kind == "string" and schema.get("pattern") in FORMATS:
        name = FORMATS[schema["pattern"]][0]
        return f"[{name}](#formats)"
    if kind in ("string", "integer", "boolean", "number"):
        return kind
    if kind is None and not ({"$ref", "anyOf", "enum", "const"} & set(schema)):
        return "any"
    raise ValueError(f"no rendering for schema {schema!r}")


def constraints(schema: dict[str, Any]) -> list[str]:
    schema = non_null(schema)
    out: list[str] = []
    if "const" in schema:
        out.append(f"must be {code(str(schema['const']))}")
    elif "enum" in schema:
        out.append("one of " + ", ".join(code(str(v)) for v in schema["enum"]))
    named = schema.get("pattern") in FORMATS
    if "pattern" in schema and not named:
        out.append(f"pattern {code(schema['pattern'])}")
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None and hi is not None:
        out.append(f"{lo}–{hi}")
    elif lo is not None:
        out.append(f"≥ {lo}")
    elif hi is not None:
        out.append(f"≤ {hi}")
    if not named:
        lo, hi = schema.get("minLength"), schema.get("maxLength")
        if lo is not None and hi is not None:
            out.append(f"{lo}–{hi} characters")
        elif hi is not None:
            out.append(f"at most {hi} characters")
        elif lo is not None:
            out.append(f"at least {lo} character{'s' if lo != 1 else ''}")
    lo, hi = schema.get("minItems"), schema.get("maxItems")
    if lo is not None and hi is not None:
        out.append(f"{lo}–{hi} items")
    elif hi is not None:
        out.append(f"at most {hi} items")
    elif lo is not None:
        out.append(f"at least {lo} item{'s' if lo != 1 else ''}")
    if schema.get("type") == "array":
        out.extend(f"each: {c}" for c in constraints(schema["items"]) if not c.startswith("each"))
    return out


def prune(value: Any) -> Any:
    """A default without its empty parts, so `[HTTPRouteMatch()]` reads as the path it matches."""
    if isinstance(value, dict):
        pruned = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


def flow(value: Any) -> str:
    """YAML flow style, the way a user would write the value."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return str(value)


def required_text(name: str, schema: dict[str, Any], required: set[str]) -> str:
    if name in required:
        return "required"
    if "default" not in schema or schema["default"] is None:
        return "optional"
    return "default " + code(flow(prune(schema["default"])))


def note_owners(type_name: str) -> list[str]:
    """`type_name` and the names of the model classes it inherits from, nearest first."""
    model = getattr(models, type_name, None)
    if not (isinstance(model, type) and issubclass(model, models.Model)):
        return [type_name]
    return [c.__name__ for c in model.__mro__ if issubclass(c, models.Model) and c is not models.Model]


def sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].upper() + text[1:] + "."


def field_rows(type_name: str, schema: dict[str, Any], used_notes: set[tuple[str, str]]) -> list[str]:
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    # `status` comes from the Resource base class; it reads better last.
    names = [n for n in props if n != "status"] + [n for n in props if n == "status"]
    rows = ["| Field | Type | Required / default | Description |", "|---|---|---|---|"]
    for name in names:
        prop = props[name]
        parts = []
        description = prop.get("description") or non_null(prop).get("description")
        if description:
            parts.append(sentence(description))
        # A note on a field of a base class (HTTPRouteRule) also applies to its subclasses
        # (MeshgateRouteRule).
        for owner in note_owners(type_name):
            if (owner, name) in FIELD_NOTES:
                used_notes.add((owner, name))
                parts.append(FIELD_NOTES[(owner, name)])
                break
        rest = constraints(prop)
        if rest:
            parts.append(("Constraints: " + "; ".join(rest) + "."))
        rows.append("| " + " | ".join(cell(c) for c in (
            code(name), type_text(prop), required_text(name, prop, required), " ".join(parts))) + " |")
    return rows


def walk_refs(schema: dict[str, Any], defs: dict[str, Any], seen: list[str]) -> None:
    """Definition names reachable from `schema`, depth first, parents before children."""
    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                name = ref_name(node["$ref"])
                if name not in seen:
                    seen.append(name)
                    visit(defs[name])
            for key, value in node.items():
                if key != "$defs":
                    visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(schema.get("properties", {}))


def render() -> str:
    schemas = {key: model_schema(model) for key, model in KINDS.items()}
    defs: dict[str, Any] = {}
    for schema in schemas.values():
        for name, definition in schema.get("$defs", {}).items():
            if name in defs and defs[name] != definition:
                raise ValueError(f"two different schemas named {name}")
            defs[name] = definition
    for key in KINDS:
        if key not in EXAMPLES:
            raise ValueError(f"no example for {key}: add one to EXAMPLES")

    used_notes: set[tuple[str, str]] = set()
    out: list[str] = [INTRO]

    out.append("## Kinds\n")
    out.append("| apiVersion | kind | what it is |")
    out.append("|---|---|---|")
    for (api_version, kind), model in KINDS.items():
        summary = (model.__doc__ or "").strip().split("\n")[0]
        summary = summary.split(": ", 1)[1] if ": " in summary else summary
        out.append(f"| `{api_version}` | [{kind}](#{kind_anchor(api_version, kind)}) | {cell(summary)} |")
    out.append("")

    out.append(FILES_SECTION)

    out.append("## Formats\n")
    out.append("String fields with one of these formats are checked against its pattern.\n")
    out.append("| format | what it is | examples | pattern |")
    out.append("|---|---|---|---|")
    for pattern, (name, what, examples) in FORMATS.items():
        out.append(f"| {name} | {cell(what)} | {examples} | {cell(code(pattern))} |")
    out.append("")

    # metadata is the same in every kind: documented once, here.
    documented = ["ObjectMeta"]
    out.append("## Metadata\n")
    out.append(f'<a id="{type_anchor("ObjectMeta")}"></a>\n')
    out.append(f"The `metadata` of every kind. {defs['ObjectMeta'].get('description', '').strip()}\n")
    out.extend(field_rows("ObjectMeta", defs["ObjectMeta"], used_notes))
    out.append("")

    out.append(ROUTING_SECTION)

    for (api_version, kind), schema in schemas.items():
        out.append(f'<a id="{kind_anchor(api_version, kind)}"></a>\n')
        out.append(f"## {kind} ({api_version})\n")
        out.append(f"`apiVersion: {api_version}`, `kind: {kind}`\n")
        doc = (KINDS[(api_version, kind)].__doc__ or "").strip()
        if doc:
            out.append(doc + "\n")
        if (api_version, kind) in KIND_NOTES:
            out.append(KIND_NOTES[(api_version, kind)] + "\n")
        out.append("```yaml\n" + EXAMPLES[(api_version, kind)] + "```\n")
        out.append("Top-level fields:\n")
        out.extend(field_rows(schema["title"], schema, used_notes))
        out.append("")
        reachable: list[str] = []
        walk_refs(schema, defs, reachable)
        for name in reachable:
            if name in documented:
                continue
            documented.append(name)
            definition = defs[name]
            out.append(f'<a id="{type_anchor(name)}"></a>\n')
            out.append(f"### {name}\n")
            description = definition.get("description", "").strip()
            if description:
                out.append(description + "\n")
            if name in TYPE_NOTES:
                out.append(TYPE_NOTES[name] + "\n")
            out.extend(field_rows(name, definition, used_notes))
            out.append("")

    unused = sorted(set(FIELD_NOTES) - used_notes)
    if unused:
        raise ValueError(f"FIELD_NOTES for fields that don't exist (renamed?): {unused}")
    unknown_types = sorted(set(TYPE_NOTES) - set(documented))
    if unknown_types:
        raise ValueError(f"TYPE_NOTES for types that don't exist (renamed?): {unknown_types}")

    text = "\n".join(out).rstrip("\n") + "\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text)) | {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    broken = sorted(set(re.findall(r"\]\(#([^)]+)\)", text)) - anchors)
    if broken:
        raise ValueError(f"links to missing anchors: {broken}")
    return text


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
