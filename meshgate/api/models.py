"""The resource model: typed schemas for every kind meshgate reads.

Routes use the shape of Kubernetes Gateway API v1 (https://gateway-api.sigs.k8s.io/reference/spec/)
so that existing manifests parse unchanged; field names are camelCase in YAML, snake_case in
Python. What Gateway API lacks lives in meshgate's own group `meshgate.io/v1alpha1`:

- `Backend`: upstreams outside Kubernetes (static endpoints or a Consul service), load balancing, protocol.
- `HTTPRoute` (meshgate.io/v1alpha1): the Gateway API HTTPRoute plus path templates
  (`/users/{id}`, `/static/**`) and rewrites that reuse the captured parameters.

Every model forbids unknown fields, so a typo is an error with its file and line, never ignored.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from meshgate.api.messages import clip

GATEWAY_API_V1 = "gateway.networking.k8s.io/v1"
MESHGATE_V1ALPHA1 = "meshgate.io/v1alpha1"

# Gateway API's Duration: "1h", "30s", "500ms", "1m30s" (GEP-2257).
DURATION_RE = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
# DNS-1123 subdomain-ish names, as Kubernetes requires for metadata.name.
NAME_RE = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
HOSTNAME_RE = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HEADER_NAME_RE = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Characters Gateway API allows in Exact/PathPrefix values (RFC 3986 pchar and '/', or %XX escapes).
_PATH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})*")
# Rewrite/redirect paths may also hold meshgate's {variables}.
_REPLACE_PATH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@{}]|%[0-9a-fA-F]{2})*")
_CHAR_NAMES = {"\0": "NUL", "\t": "a tab", "\n": "LF (newline)", "\r": "CR", "\x7f": "DEL", " ": "a space"}


def _char(c: str) -> str:
    """A character as a message names it: 'x', CR, NUL, U+0001."""
    if c in _CHAR_NAMES:
        return _CHAR_NAMES[c]
    return repr(c) if c.isprintable() else f"U+{ord(c):04X}"


def check_header_name(value: Any) -> Any:
    """An RFC 9110 token, and no ':' pseudo-header (Envoy manages those itself)."""
    if not isinstance(value, str) or not value:
        return value  # the type and pattern checks report these
    if value.startswith(":"):
        raise ValueError(f"{clip(value)}: pseudo-headers like :path or :authority can't be used here")
    bad = next((c for c in value if c not in _TOKEN_CHARS), None)
    if bad is not None:
        raise ValueError(f"{clip(value)} is not a valid header name: {_char(bad)} is not allowed "
                         "(letters, digits and !#$%&'*+-.^_`|~ only)")
    return value


def _modifiable_header(value: str) -> str:
    # Envoy rejects the whole route table otherwise ("host headers may not be modified").
    if value.lower() == "host":
        raise ValueError("the Host header can't be set or removed by a header modifier "
                         "(to change the Host sent upstream, use a URLRewrite filter's hostname)")
    return value


def check_header_value(value: str) -> str:
    """RFC 9110 field-value: visible characters, obs-text, spaces and tabs inside, no
    control characters (CR/LF would split the header), no leading or trailing whitespace."""
    for i, c in enumerate(value):
        if (c < " " and c != "\t") or c == "\x7f":
            raise ValueError(f"a header value can't contain control characters ({_char(c)} at position {i + 1})")
    if value != value.strip(" \t"):
        raise ValueError("a header value can't start or end with a space or tab")
    return value


def _dns_labels(value: str) -> str:
    for label in value.split("."):
        if len(label) > 63:
            raise ValueError(f"DNS label {clip(label, 20)} is longer than 63 characters")
    return value


def _no_wildcard(value: str) -> str:
    if value.startswith("*."):
        raise ValueError("a wildcard can't be used here: give the exact hostname")
    return value


def check_address(value: str) -> str:
    """An IP address, or a DNS name of RFC 1123 labels (Envoy resolves it)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    problem = f"{clip(value)} is not an IP address or a DNS name"
    if "://" in value or "/" in value:
        raise ValueError(f"{problem}: give a host, not a URL")
    host, colon, port = value.rpartition(":")
    if colon and port.isdigit() and host and ":" not in host:
        raise ValueError(f"{problem}: put the port in the port field")
    if value.startswith("[") and value.endswith("]"):
        raise ValueError(f"{problem}: write an IPv6 address without brackets")
    labels = (value[:-1] if value.endswith(".") else value).split(".")
    for label in labels:
        bad = next((c for c in label if not (c.isascii() and (c.isalnum() or c == "-"))), None)
        if bad is not None:
            raise ValueError(f"{problem}: {_char(bad)} is not allowed (letters, digits, '-' and '.')")
        if not label:
            raise ValueError(f"{problem}: empty label")
        if len(label) > 63:
            raise ValueError(f"{problem}: label {clip(label, 20)} is longer than 63 characters")
        if label.startswith("-") or label.endswith("-"):
            raise ValueError(f"{problem}: a label can't start or end with '-'")
    if labels[-1].isdigit():  # 1.2.3 or 999.1.1.1: a mistyped IP, not a name
        raise ValueError(f"{problem}: it looks like an IPv4 address but isn't a valid one")
    return value


def _check_path_chars(value: str, allowed: re.Pattern[str]) -> None:
    end = allowed.match(value).end()  # type: ignore[union-attr]
    if end == len(value):
        return
    c = value[end]
    if c == "?":
        raise ValueError("a path can't contain '?' (the query string is not part of the path)")
    if c == "#":
        raise ValueError("a path can't contain '#' (a fragment is never sent to the server)")
    if c == "%":
        raise ValueError(f"'%' at position {end + 1} must start an escape like %20")
    raise ValueError(f"a path can't contain {_char(c)} (at position {end + 1}); percent-encode it")


def check_match_path(value: str) -> None:
    """An Exact or PathPrefix value, by Gateway API's rules: an absolute, normalized path.
    Envoy normalizes request paths before matching, so `//` or `/../` would never match."""
    if not value.startswith("/"):
        raise ValueError("value must start with '/'")
    _check_path_chars(value, _PATH_CHARS)
    for part in ("//", "/./", "/../"):
        if part in value:
            raise ValueError(f"value can't contain {part!r}")
    if "%2f" in value.lower():
        raise ValueError("value can't contain an escaped '/' (%2F)")
    if value.endswith(("/.", "/..")):
        raise ValueError("value can't end with '/.' or '/..'")


def check_replace_path(value: str) -> None:
    """A rewrite or redirect path: absolute, printable, without query or fragment."""
    if not value.startswith("/"):
        raise ValueError("a replacement path must start with '/'")
    _check_path_chars(value, _REPLACE_PATH_CHARS)


def duration_seconds(value: str) -> float:
    """Seconds in a Gateway API duration string ("1m30s" -> 90.0)."""
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(int(n) * unit[u] for n, u in _DURATION_PART.findall(value))


Duration = Annotated[str, Field(pattern=DURATION_RE, examples=["10s", "500ms", "1m30s"])]
Hostname = Annotated[str, Field(pattern=HOSTNAME_RE, max_length=253), AfterValidator(_dns_labels)]
# Gateway API's PreciseHostname (URLRewrite, RequestRedirect): a Hostname without wildcard.
PreciseHostname = Annotated[Hostname, AfterValidator(_no_wildcard)]
ObjectName = Annotated[str, Field(pattern=NAME_RE, max_length=253)]
HeaderName = Annotated[str, Field(pattern=HEADER_NAME_RE, max_length=256), BeforeValidator(check_header_name)]
# A header a modifier sets, adds or removes.
ModifiableHeaderName = Annotated[HeaderName, AfterValidator(_modifiable_header)]
HeaderValue = Annotated[str, Field(max_length=4096), AfterValidator(check_header_value)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Model(BaseModel):
    """Base of every schema: camelCase aliases, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=True
    )


class ObjectMeta(Model):
    """Kubernetes object metadata. Fields a cluster adds (uid, resourceVersion...) are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel, frozen=True)
    name: ObjectName
    namespace: ObjectName = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: str | None = Field(
        None, description="Set by Kubernetes; orders conflicting objects (the oldest wins, then by name).")


class Resource(Model):
    """A top-level document: apiVersion, kind, metadata, spec (status from a cluster is ignored)."""

    api_version: str
    kind: str
    metadata: ObjectMeta
    status: Any = Field(default=None, exclude=True, json_schema_extra={"description": "ignored"})

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def ref(self) -> str:
        """How errors and logs name this object: Kind namespace/name."""
        return f"{self.kind} {self.metadata.namespace}/{self.metadata.name}"


# ---------------------------------------------------------------------------------------------
# Gateway


class SecretObjectReference(Model):
    group: str = ""
    kind: Literal["Secret"] = "Secret"
    name: ObjectName
    namespace: ObjectName | None = None


# tls.options keys with which a listener names certificate and key files directly (file mode).
CERT_FILE_OPTION = "meshgate.io/certificate-file"
KEY_FILE_OPTION = "meshgate.io/private-key-file"


class GatewayTLSConfig(Model):
    mode: Literal["Terminate"] = "Terminate"
    certificate_refs: list[SecretObjectReference] = Field(default_factory=list, max_length=64)
    options: dict[str, str] = Field(
        default_factory=dict,
        description=f"Implementation options. `{CERT_FILE_OPTION}` and `{KEY_FILE_OPTION}` name PEM "
        "files (relative to the config file) instead of a Secret.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> GatewayTLSConfig:
        has_files = CERT_FILE_OPTION in self.options or KEY_FILE_OPTION in self.options
        if has_files and not (CERT_FILE_OPTION in self.options and KEY_FILE_OPTION in self.options):
            raise ValueError(f"options need both {CERT_FILE_OPTION} and {KEY_FILE_OPTION}")
        if not has_files and not self.certificate_refs:
            raise ValueError(
                f"a TLS listener needs certificateRefs or options {CERT_FILE_OPTION} + {KEY_FILE_OPTION}"
            )
        return self


LABEL_KEY_RE = r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LabelKey = Annotated[str, Field(pattern=LABEL_KEY_RE)]


class LabelSelectorRequirement(Model):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _values(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(Model):
    """Kubernetes label selector: every matchLabels pair and every expression must hold."""

    match_labels: dict[LabelKey, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for e in self.match_expressions:
            present = e.key in labels
            if e.operator == "In" and not (present and labels[e.key] in e.values):
                return False
            if e.operator == "NotIn" and present and labels[e.key] in e.values:
                return False
            if e.operator == "Exists" and not present:
                return False
            if e.operator == "DoesNotExist" and present:
                return False
        return True


class RouteNamespaces(Model):
    from_: Literal["Same", "All", "Selector"] = Field("Same", alias="from")
    selector: LabelSelector | None = Field(
        None, description="With from: Selector, the namespaces whose labels match (Namespace objects; every "
        "namespace also has the label kubernetes.io/metadata.name=<its name>).")

    @model_validator(mode="after")
    def _selector(self) -> RouteNamespaces:
        if (self.from_ == "Selector") != (self.selector is not None):
            raise ValueError("from: Selector needs selector, and selector needs from: Selector")
        return self


class AllowedRoutes(Model):
    namespaces: RouteNamespaces = Field(default_factory=RouteNamespaces)


class Listener(Model):
    name: ObjectName
    hostname: Hostname | None = None
    port: Port
    protocol: Literal["HTTP", "HTTPS"]
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes = Field(default_factory=AllowedRoutes)

    @model_validator(mode="after")
    def _tls_matches_protocol(self) -> Listener:
        if self.protocol == "HTTPS" and self.tls is None:
            raise ValueError("protocol HTTPS needs tls")
        if self.protocol == "HTTP" and self.tls is not None:
            raise ValueError("tls is only allowed with protocol HTTPS")
        return self


class ParametersReference(Model):
    """Gateway API `LocalParametersReference`: an object of this namespace with settings for
    the Gateway (for meshgate: an EnvoyProxy)."""

    group: Literal["meshgate.io"] = Field(description="meshgate.io (Envoy Gateway's gateway.envoyproxy.io: change the group)")
    kind: Literal["EnvoyProxy"]
    name: ObjectName


class GatewayInfrastructure(Model):
    """Gateway API `GatewayInfrastructure`: for meshgate, only `parametersRef`."""

    parameters_ref: ParametersReference | None = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("labels", "annotations"):
                if key in data:
                    raise ValueError(f"infrastructure.{key} is not supported: meshgate does not create the "
                                     "Envoys' Kubernetes objects (meshgate bootstrap configures Envoys you run)")
        return data


class GatewaySpec(Model):
    gateway_class_name: str = "meshgate"
    listeners: list[Listener] = Field(min_length=1, max_length=64)
    infrastructure: GatewayInfrastructure | None = Field(
        None, description="`parametersRef` names an EnvoyProxy of this namespace (tracing settings)")

    @field_validator("listeners")
    @classmethod
    def _unique_names(cls, v: list[Listener]) -> list[Listener]:
        seen: set[str] = set()
        for listener in v:
            if listener.name in seen:
                raise ValueError(f"duplicate listener name {listener.name!r}")
            seen.add(listener.name)
        return v


class Gateway(Resource):
    """gateway.networking.k8s.io/v1 Gateway: the ports Envoy listens on."""

    api_version: Literal["gateway.networking.k8s.io/v1"]
    kind: Literal["Gateway"]
    spec: GatewaySpec


# ---------------------------------------------------------------------------------------------
# Routes (shared parts)


class ParentReference(Model):
    group: str = "gateway.networking.k8s.io"
    kind: Literal["Gateway"] = "Gateway"
    namespace: ObjectName | None = None
    name: ObjectName
    section_name: ObjectName | None = None
    port: Port | None = None


class BackendRef(Model):
    """Where a rule sends traffic. In file mode the target is a meshgate.io Backend."""

    group: str = ""
    kind: str = "Service"
    name: ObjectName
    namespace: ObjectName | None = None
    port: Port | None = None
    weight: int = Field(1, ge=0, le=1_000_000)


class HTTPHeader(Model):
    name: ModifiableHeaderName
    value: HeaderValue


class HTTPHeaderFilter(Model):
    set: list[HTTPHeader] = Field(default_factory=list, max_length=16)
    add: list[HTTPHeader] = Field(default_factory=list, max_length=16)
    remove: list[ModifiableHeaderName] = Field(default_factory=list, max_length=16)

    @field_validator("set", "add")
    @classmethod
    def _unique_names(cls, headers: list[HTTPHeader]) -> list[HTTPHeader]:
        # Gateway API keys these lists by name (case-insensitive); a repeat is a mistake.
        seen: set[str] = set()
        for header in headers:
            if header.name.lower() in seen:
                raise ValueError(f"header {clip(header.name)} appears twice (names are case-insensitive)")
            seen.add(header.name.lower())
        return headers


class _ValueMatch(Model):
    """A match on a named value (header, query parameter): exact, or an RE2 regular expression."""

    type: Literal["Exact", "RegularExpression"] = "Exact"

    @field_validator("value", check_fields=False)
    @classmethod
    def _regex(cls, value: str, info) -> str:
        if info.data.get("type") == "RegularExpression":
            _check_regex(value)
        return value


class HTTPHeaderMatch(_ValueMatch):
    name: HeaderName
    value: str = Field(max_length=4096)

    @field_validator("value")
    @classmethod
    def _header_value(cls, value: str, info) -> str:
        # A request can't carry such a value (Envoy trims whitespace), so the match could never hit.
        if info.data.get("type") == "Exact":
            check_header_value(value)
        return value


class HTTPQueryParamMatch(_ValueMatch):
    name: str = Field(min_length=1, max_length=256)
    value: str = Field(max_length=1024)


class HTTPRouteTimeouts(Model):
    request: Duration | None = None
    backend_request: Duration | None = None


class ReplacePath(Model):
    """HTTPPathModifier: replace the whole path or the matched prefix."""

    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None

    @model_validator(mode="after")
    def _value_for_type(self) -> ReplacePath:
        want = "replace_full_path" if self.type == "ReplaceFullPath" else "replace_prefix_match"
        other = "replace_prefix_match" if want == "replace_full_path" else "replace_full_path"
        if getattr(self, want) is None:
            raise ValueError(f"type {self.type} needs {to_camel(want)}")
        if getattr(self, other) is not None:
            raise ValueError(f"{to_camel(other)} is not allowed with type {self.type}")
        return self

    @field_validator("replace_full_path", "replace_prefix_match")
    @classmethod
    def _replacement(cls, value: str | None) -> str | None:
        if value is not None:
            check_replace_path(value)
        return value


class HTTPURLRewriteFilter(Model):
    hostname: PreciseHostname | None = None
    path: ReplacePath | None = None


class HTTPRequestRedirectFilter(Model):
    scheme: Literal["http", "https"] | None = None
    hostname: PreciseHostname | None = None
    path: ReplacePath | None = None
    port: Port | None = None
    status_code: Literal[301, 302, 303, 307, 308] = 302


Method = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


class Fraction(Model):
    numerator: int = Field(ge=0)
    denominator: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _at_most_one(self) -> Fraction:
        if self.numerator > self.denominator:
            raise ValueError("numerator must not be greater than denominator")
        return self


class HTTPRequestMirrorFilter(Model):
    """Send a copy of each request (or of a share of them) to another backend; its response is
    ignored. Envoy's route `request_mirror_policies`: the copy's Host gets a `-shadow` suffix."""

    backend_ref: BackendRef
    percent: int | None = Field(None, ge=0, le=100)
    fraction: Fraction | None = None

    @model_validator(mode="after")
    def _one_share(self) -> HTTPRequestMirrorFilter:
        if self.percent is not None and self.fraction is not None:
            raise ValueError("only one of percent and fraction may be set")
        if "weight" in self.backend_ref.model_fields_set:
            raise ValueError("a mirror's backendRef has no weight")
        return self

    def per_million(self) -> int:
        """The mirrored share, in requests per million (Envoy's finest fraction)."""
        if self.fraction is not None:
            return round(self.fraction.numerator * 1_000_000 / self.fraction.denominator)
        return (100 if self.percent is None else self.percent) * 10_000


# An origin as browsers send it: scheme://host[:port]; `*` alone, or as the leftmost part of the host.
CORS_ORIGIN_RE = r"^(\*|https?://(\*|(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)(:[0-9]{1,5})?)$"


class HTTPCORSFilter(Model):
    """Cross-origin resource sharing, answered by Envoy's `cors` filter: preflight requests
    (OPTIONS with Origin and Access-Control-Request-Method) never reach the upstream, and
    responses to allowed origins get the Access-Control-* headers."""

    allow_origins: list[Annotated[str, Field(pattern=CORS_ORIGIN_RE, max_length=253)]] = Field(
        default_factory=list, max_length=64,
        description="Origins (`https://app.example`, `https://*.example.com`, or `*`) whose pages may read responses.")
    allow_credentials: bool | None = Field(None, description="Let those pages send cookies and credentials.")
    allow_methods: list[Method | Literal["*"]] = Field(default_factory=list, max_length=9)
    allow_headers: list[HeaderName | Literal["*"]] = Field(default_factory=list, max_length=64)
    expose_headers: list[HeaderName | Literal["*"]] = Field(default_factory=list, max_length=64)
    max_age: int = Field(5, ge=1, le=86400, description="Seconds a browser may cache a preflight answer (default 5).")

    @model_validator(mode="after")
    def _wildcards(self) -> HTTPCORSFilter:
        for name in ("allow_origins", "allow_methods", "allow_headers", "expose_headers"):
            values = getattr(self, name)
            if "*" in values and len(values) > 1:
                raise ValueError(f"{to_camel(name)} can't contain '*' alongside other values")
            if self.allow_credentials and "*" in values and name != "allow_origins":
                # Gateway API asks the gateway to echo the request's method/headers instead of
                # '*' then; Envoy's cors filter sends the configured value as is.
                raise ValueError(f"{to_camel(name)}: '*' with allowCredentials is not supported by meshgate "
                                 "(browsers ignore '*' with credentials): list the values")
        return self


class LocalObjectReference(Model):
    """Gateway API LocalObjectReference: an object of this kind in the route's namespace."""

    group: str
    kind: str
    name: ObjectName


class HTTPRouteFilter(Model):
    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier", "URLRewrite", "RequestRedirect",
                  "RequestMirror", "CORS", "ExtensionRef"]
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    cors: HTTPCORSFilter | None = None
    extension_ref: LocalObjectReference | None = Field(
        None, description="a meshgate filter object: `group: meshgate.io`, `kind: GRPCJSONTranscoder`")

    @model_validator(mode="after")
    def _config_for_type(self) -> HTTPRouteFilter:
        want = {"URLRewrite": "urlRewrite", "CORS": "cors"}.get(self.type) or self.type[0].lower() + self.type[1:]
        fields = {
            "requestHeaderModifier": self.request_header_modifier,
            "responseHeaderModifier": self.response_header_modifier,
            "urlRewrite": self.url_rewrite,
            "requestRedirect": self.request_redirect,
            "requestMirror": self.request_mirror,
            "cors": self.cors,
            "extensionRef": self.extension_ref,
        }
        if fields[want] is None:
            raise ValueError(f"filter type {self.type} needs field {want}")
        extra = [k for k, v in fields.items() if v is not None and k != want]
        if extra:
            raise ValueError(f"field {extra[0]} does not belong to filter type {self.type}")
        return self


def _check_filters(filters: list[HTTPRouteFilter], backend_refs: list[BackendRef]) -> None:
    kinds = [f.type for f in filters]
    # RequestMirror may repeat (one copy per mirror); the others configure one thing each.
    for kind in ("RequestHeaderModifier", "ResponseHeaderModifier", "URLRewrite", "RequestRedirect", "CORS", "ExtensionRef"):
        if kinds.count(kind) > 1:
            raise ValueError(f"filter {kind} may appear only once per rule")
    if "RequestRedirect" in kinds and "URLRewrite" in kinds:
        raise ValueError("RequestRedirect and URLRewrite can't be combined in one rule")
    if "RequestRedirect" in kinds and backend_refs:
        raise ValueError("a rule with RequestRedirect can't have backendRefs")


# ---------------------------------------------------------------------------------------------
# HTTPRoute (Gateway API) and its meshgate extension


class HTTPPathMatch(Model):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = Field("/", max_length=1024)

    @model_validator(mode="after")
    def _valid_value(self) -> HTTPPathMatch:
        if self.type in ("Exact", "PathPrefix"):
            check_match_path(self.value)
        if self.type == "RegularExpression":
            _check_regex(self.value)
        return self


# Envoy refuses regexes whose compiled RE2 program is larger than this (runtime key
# re2.max_program_size.error_level), to bound the CPU a match can cost per request.
RE2_MAX_PROGRAM_SIZE = 100


def _check_regex(value: str) -> None:
    """Compile with RE2, the engine Envoy uses, so that what passes here Envoy accepts too
    (RE2 has no lookaround or backreferences, unlike Python's `re`)."""
    import re2

    options = re2.Options()
    options.log_errors = False
    try:
        program_size = re2.compile(value, options).programsize
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"invalid regular expression (RE2): {detail}") from None
    if program_size > RE2_MAX_PROGRAM_SIZE:
        raise ValueError(
            f"regular expression too complex for Envoy (RE2 program size {program_size}, limit {RE2_MAX_PROGRAM_SIZE})"
        )


TEMPLATE_VAR_RE = re.compile(r"^\{([A-Za-z][A-Za-z0-9_]*)(?:=(\*\*?))?\}$")


def template_variables(template: str) -> list[str]:
    """Names of the {variables} in a path template, in order."""
    return [m.group(1) for seg in template.split("/") if (m := TEMPLATE_VAR_RE.match(seg))]


def check_path_template(template: str) -> None:
    """Validate a path template the way Envoy's uri_template matcher will.

    Segments are literals, `*` (one segment), `**` (the rest, last only), `{name}`, `{name=*}`
    or `{name=**}`; at most 5 variables.
    """
    if not template.startswith("/"):
        raise ValueError("a path template must start with '/'")
    segments = template[1:].split("/")
    names: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        m = TEMPLATE_VAR_RE.match(seg)
        if m:
            if m.group(1) in names:
                raise ValueError(f"variable {{{m.group(1)}}} appears twice")
            names.append(m.group(1))
            if m.group(2) == "**" and not last:
                raise ValueError("'**' may only be the last segment")
        elif seg == "**":
            if not last:
                raise ValueError("'**' may only be the last segment")
        elif seg == "*":
            pass
        elif seg == "" and not last:
            raise ValueError("empty path segment")
        elif re.search(r"[{}*]", seg):
            raise ValueError(f"bad segment {seg!r}: use a whole segment '{{name}}', '*' or '**'")
        elif not re.fullmatch(r"[A-Za-z0-9\-._~%!$&'()+,;:=@]*", seg):
            raise ValueError(f"bad character in segment {seg!r}")
    if len(names) > 5:
        raise ValueError("at most 5 variables per template")


class MeshgatePathMatch(Model):
    """Like HTTPPathMatch, plus `Template`: `/users/{id}/orders/{order}`, `/static/**`."""

    type: Literal["Exact", "PathPrefix", "RegularExpression", "Template"] = "PathPrefix"
    value: str = Field("/", max_length=1024)

    @model_validator(mode="after")
    def _valid_value(self) -> MeshgatePathMatch:
        if self.type == "Template":
            check_path_template(self.value)
        else:
            HTTPPathMatch(type=self.type, value=self.value)  # same rules as Gateway API
        return self




class HTTPRouteMatch(Model):
    path: HTTPPathMatch = Field(default_factory=HTTPPathMatch)
    headers: list[HTTPHeaderMatch] = Field(default_factory=list, max_length=16)
    query_params: list[HTTPQueryParamMatch] = Field(default_factory=list, max_length=16)
    method: Method | None = None


class MeshgateRouteMatch(HTTPRouteMatch):
    path: MeshgatePathMatch = Field(default_factory=MeshgatePathMatch)  # type: ignore[assignment]


class HTTPRouteRule(Model):
    name: ObjectName | None = None
    matches: list[HTTPRouteMatch] = Field(default_factory=lambda: [HTTPRouteMatch()], max_length=64)
    filters: list[HTTPRouteFilter] = Field(default_factory=list, max_length=16)
    backend_refs: list[BackendRef] = Field(default_factory=list, max_length=16)
    timeouts: HTTPRouteTimeouts | None = None

    @model_validator(mode="after")
    def _filters(self) -> HTTPRouteRule:
        _check_filters(self.filters, self.backend_refs)
        if not self.backend_refs and not any(f.type == "RequestRedirect" for f in self.filters):
            raise ValueError("a rule needs backendRefs or a RequestRedirect filter")
        for f in self.filters:
            path = (f.url_rewrite and f.url_rewrite.path) or (f.request_redirect and f.request_redirect.path)
            if path and path.type == "ReplacePrefixMatch":
                if any(m.path.type != "PathPrefix" for m in self.matches):
                    raise ValueError("ReplacePrefixMatch needs every match of the rule to be a PathPrefix")
        return self


class MeshgateRouteRule(HTTPRouteRule):
    matches: list[MeshgateRouteMatch] = Field(default_factory=lambda: [MeshgateRouteMatch()], max_length=64)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _template_rewrite(self) -> MeshgateRouteRule:
        for f in self.filters:
            path = f.url_rewrite.path if f.url_rewrite else None
            if not (path and path.type == "ReplaceFullPath" and "{" in (path.replace_full_path or "")):
                continue
            # A rewrite that reuses {variables} works only when every match captured them.
            wanted = set(re.findall(r"\{([A-Za-z][A-Za-z0-9_]*)\}", path.replace_full_path or ""))
            for m in self.matches:
                if m.path.type != "Template":
                    raise ValueError("a rewrite with {variables} needs every match to be a Template")
                missing = wanted - set(template_variables(m.path.value))
                if missing:
                    raise ValueError(
                        f"rewrite uses {{{sorted(missing)[0]}}} which template {m.path.value!r} does not capture"
                    )
        return self


class CommonRouteSpec(Model):
    """What every route kind shares (Gateway API's CommonRouteSpec): where it attaches and for
    which host names. HTTPRoute and GRPCRoute add their own `rules`."""

    parent_refs: list[ParentReference] = Field(min_length=1, max_length=32)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)


class HTTPRouteSpec(CommonRouteSpec):
    rules: list[HTTPRouteRule] = Field(min_length=1, max_length=64)


class MeshgateHTTPRouteSpec(HTTPRouteSpec):
    rules: list[MeshgateRouteRule] = Field(min_length=1, max_length=64)  # type: ignore[assignment]


class HTTPRoute(Resource):
    """gateway.networking.k8s.io/v1 HTTPRoute: HTTP routing rules attached to Gateway listeners."""

    api_version: Literal["gateway.networking.k8s.io/v1"]
    kind: Literal["HTTPRoute"]
    spec: HTTPRouteSpec


class MeshgateHTTPRoute(Resource):
    """meshgate.io/v1alpha1 HTTPRoute: HTTPRoute plus path templates and template rewrites."""

    api_version: Literal["meshgate.io/v1alpha1"]
    kind: Literal["HTTPRoute"]
    spec: MeshgateHTTPRouteSpec


# ---------------------------------------------------------------------------------------------
# GRPCRoute


class GRPCMethodMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: str | None = Field(None, max_length=1024)
    method: str | None = Field(None, max_length=1024)

    @model_validator(mode="after")
    def _one_of(self) -> GRPCMethodMatch:
        if self.service is None and self.method is None:
            raise ValueError("a method match needs service, method or both")
        if self.type == "Exact":
            if self.service is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", self.service):
                raise ValueError("service must be a fully qualified name like pkg.Service")
            if self.method is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.method):
                raise ValueError("method must be a name like GetUser")
        else:
            for v in (self.service, self.method):
                if v is not None:
                    _check_regex(v)
        return self


class GRPCHeaderMatch(HTTPHeaderMatch):
    pass


class GRPCRouteMatch(Model):
    method: GRPCMethodMatch | None = None
    headers: list[GRPCHeaderMatch] = Field(default_factory=list, max_length=16)


class GRPCRouteFilter(Model):
    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier"]
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None

    @model_validator(mode="after")
    def _config_for_type(self) -> GRPCRouteFilter:
        HTTPRouteFilter(**{k: v for k, v in self if v is not None})
        return self


class GRPCRouteRule(Model):
    name: ObjectName | None = None
    matches: list[GRPCRouteMatch] = Field(default_factory=lambda: [GRPCRouteMatch()], max_length=64)
    filters: list[GRPCRouteFilter] = Field(default_factory=list, max_length=16)
    backend_refs: list[BackendRef] = Field(min_length=1, max_length=16)


class GRPCRouteSpec(CommonRouteSpec):
    rules: list[GRPCRouteRule] = Field(min_length=1, max_length=64)


class GRPCRoute(Resource):
    """gateway.networking.k8s.io/v1 GRPCRoute: routing of gRPC calls by service and method."""

    api_version: Literal["gateway.networking.k8s.io/v1"]
    kind: Literal["GRPCRoute"]
    spec: GRPCRouteSpec


# ---------------------------------------------------------------------------------------------
# Backend


class BackendEndpoint(Model):
    address: str = Field(
        min_length=1, max_length=253, description="IP address or DNS name (a name makes Envoy resolve it)"
    )
    port: Port
    weight: int = Field(1, ge=1, le=128, description="relative share of this endpoint within the Backend")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)


class CookieHashKey(Model):
    name: str = Field(min_length=1)
    ttl: Duration | None = None


class HashKey(Model):
    """What RingHash / Maglev hash on; the first one set is used."""

    header: HeaderName | None = None
    cookie: CookieHashKey | None = None
    query_param: str | None = None
    source_ip: bool | None = Field(None, alias="sourceIP")

    @model_validator(mode="after")
    def _exactly_one(self) -> HashKey:
        set_ = [k for k in ("header", "cookie", "query_param", "source_ip") if getattr(self, k)]
        if len(set_) != 1:
            raise ValueError("set exactly one of header, cookie, queryParam, sourceIP")
        return self


class LoadBalancer(Model):
    type: Literal["RoundRobin", "LeastRequest", "Random", "RingHash", "Maglev"] = "RoundRobin"
    hash_key: HashKey | None = None

    @model_validator(mode="after")
    def _hash_key(self) -> LoadBalancer:
        hashing = self.type in ("RingHash", "Maglev")
        if hashing and self.hash_key is None:
            raise ValueError(f"type {self.type} needs hashKey")
        if not hashing and self.hash_key is not None:
            raise ValueError("hashKey is only used by RingHash and Maglev")
        return self


# Backend spec.tls options that name PEM files (relative to the config file) instead of Secrets.
CA_FILE_OPTION = "meshgate.io/ca-certificate-file"
CLIENT_CERT_FILE_OPTION = "meshgate.io/client-certificate-file"
CLIENT_KEY_FILE_OPTION = "meshgate.io/client-private-key-file"
BACKEND_TLS_FILE_OPTIONS = (CA_FILE_OPTION, CLIENT_CERT_FILE_OPTION, CLIENT_KEY_FILE_OPTION)


class CACertificateRef(Model):
    """Gateway API's LocalObjectReference to the CA bundle: a Secret or a ConfigMap with key `ca.crt`."""

    group: Literal[""] = ""
    kind: str = "Secret"
    name: ObjectName

    @field_validator("kind")
    @classmethod
    def _secret_or_config_map(cls, value: str) -> str:
        if value not in ("Secret", "ConfigMap"):
            raise ValueError(f"kind {clip(value)} can't hold a CA bundle: use a Secret or a ConfigMap with key ca.crt")
        return value


class ConfigMapReference(Model):
    """A `valueRef` (Gateway API LocalObjectReference): a ConfigMap in the referring object's namespace."""

    group: Literal["", "v1"] = ""
    kind: str = "ConfigMap"
    name: ObjectName

    @field_validator("kind")
    @classmethod
    def _config_map_only(cls, value: str) -> str:
        if value != "ConfigMap":
            raise ValueError(f"kind {clip(value)}: only a ConfigMap can be a valueRef")
        return value


class BackendTLSSettings(Model):
    """TLS from Envoy to the endpoints: Envoy Gateway's Backend `spec.tls` (v1.5 shape).
    Verification is on unless `insecureSkipVerify`; the certificate must then be for `sni`."""

    ca_certificate_refs: list[CACertificateRef] = Field(default_factory=list, max_length=8)
    well_known_ca_certificates: Literal["System"] | None = Field(
        None, alias="wellKnownCACertificates", description="`System`: trust the CAs of the control plane's OS bundle.")
    insecure_skip_verify: bool = Field(False, description="Don't verify the backend's certificate (tests only).")
    sni: PreciseHostname | None = Field(
        None, description="Server name sent in the TLS handshake and required in the backend's certificate; "
        "defaults to the endpoints' DNS name when they all share one.")
    client_certificate_ref: SecretObjectReference | None = Field(
        None, description="A kubernetes.io/tls Secret: the client certificate Envoy presents (mTLS).")
    alpn_protocols: list[Literal["h2", "http/1.1"]] = Field(
        default_factory=list, max_length=2,
        description="ALPN offered to the backend. Default: from `protocol` (h2 for HTTP2/GRPC, http/1.1 for HTTP1); "
        "both (with protocol HTTP1) lets the backend choose, and Envoy speaks what it chose.")
    options: dict[str, str] = Field(
        default_factory=dict,
        description=f"meshgate extension: `{CA_FILE_OPTION}`, `{CLIENT_CERT_FILE_OPTION}` and `{CLIENT_KEY_FILE_OPTION}` "
        "name PEM files (relative to the config file) instead of Secrets.")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("minVersion", "maxVersion", "ciphers", "ecdhCurves", "signatureAlgorithms"):
                if key in data:
                    raise ValueError(f"Backend tls field {key!r} (from Envoy Gateway) is not supported by meshgate yet")
        return data

    @model_validator(mode="after")
    def _one_trust_source(self) -> BackendTLSSettings:
        unknown = sorted(set(self.options) - set(BACKEND_TLS_FILE_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option {clip(unknown[0])} (known: {', '.join(BACKEND_TLS_FILE_OPTIONS)})")
        sources = [name for name, on in (("caCertificateRefs", self.ca_certificate_refs),
                                         ("wellKnownCACertificates", self.well_known_ca_certificates),
                                         (CA_FILE_OPTION, CA_FILE_OPTION in self.options)) if on]
        if self.insecure_skip_verify and sources:
            raise ValueError(f"insecureSkipVerify can't be combined with {sources[0]}")
        if len(sources) > 1:
            raise ValueError(f"give one source of trusted CAs, not both {sources[0]} and {sources[1]}")
        if not sources and not self.insecure_skip_verify:
            raise ValueError(f"say whom to trust: caCertificateRefs, wellKnownCACertificates or options {CA_FILE_OPTION} "
                             "(or insecureSkipVerify: true, for tests)")
        has_cert, has_key = CLIENT_CERT_FILE_OPTION in self.options, CLIENT_KEY_FILE_OPTION in self.options
        if has_cert != has_key:
            raise ValueError(f"options need both {CLIENT_CERT_FILE_OPTION} and {CLIENT_KEY_FILE_OPTION}")
        if has_cert and self.client_certificate_ref:
            raise ValueError("give the client certificate as clientCertificateRef or as files, not both")
        if len(set(self.alpn_protocols)) != len(self.alpn_protocols):
            raise ValueError("alpnProtocols has a duplicate")
        return self


class ConsulService(Model):
    """meshgate extension: the Backend's endpoints are the instances of a Consul service, followed
    with Consul blocking queries and sent to Envoy as EDS alone (docs/consul.md)."""

    service: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                         description="the Consul service name")
    datacenter: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                   description="the Consul datacenter (default: the agent's own)")
    tags: list[str] = Field(default_factory=list, max_length=16,
                            description="only instances that carry every one of these tags")
    only_passing: bool = Field(True, description="true: only instances whose health checks all pass; false: "
                               "instances with a warning too (critical ones never serve)")
    address: str | None = Field(None, description="the Consul agent's HTTP API, http(s)://HOST:PORT (default: "
                                "--consul-address, else $CONSUL_HTTP_ADDR, else http://127.0.0.1:8500)")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            check_consul_address(value)
        return value


def check_consul_address(value: str) -> str:
    """A Consul agent's HTTP API address: `http(s)://HOST:PORT`, or `HOST:PORT` (http), as
    $CONSUL_HTTP_ADDR is written."""
    from urllib.parse import urlsplit

    url = urlsplit(value if "://" in value else f"http://{value}")
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme not in ("http", "https") or not url.hostname or port is None or url.path not in ("", "/") \
            or url.query:
        raise ValueError(f"{clip(value)} is not a Consul address: write http://HOST:PORT (e.g. http://127.0.0.1:8500)")
    return value


class BackendSpec(Model):
    endpoints: list[BackendEndpoint] = Field(
        default_factory=list, max_length=1024, description="static endpoints (or `consul`; one of the two)")
    protocol: Literal["HTTP1", "HTTP2", "GRPC"] = Field(
        "HTTP1", description="how Envoy talks to the endpoints: HTTP/1.1, HTTP/2 (h2c with prior knowledge, or h2 "
        "over `tls`), or gRPC (HTTP/2)"
    )
    load_balancer: LoadBalancer = Field(default_factory=LoadBalancer)
    connect_timeout: Duration = "5s"
    tls: BackendTLSSettings | None = Field(None, description="TLS to the endpoints (upstream TLS); plaintext when unset.")
    fallback: bool | None = Field(
        None, description="A fallback Backend (Envoy Gateway's `fallback`): among a rule's backendRefs, it gets traffic "
        "only when the other (primary) Backends are not healthy enough (Envoy priority 1, overprovisioning factor "
        "1.4: from under 72% healthy primaries). Give the rule active or passive health checks "
        "(BackendTrafficPolicy `healthCheck`) so that failures are detected. See docs/traffic.md#failover.")

    consul: ConsulService | None = Field(
        None, description="meshgate extension: the endpoints are a Consul service's instances (instead of `endpoints`)")

    @field_validator("consul")
    @classmethod
    def _not_both(cls, value: ConsulService | None, info: Any) -> ConsulService | None:
        if value is not None and info.data.get("endpoints"):
            raise ValueError("give endpoints or consul, not both: a Consul service's instances are the endpoints")
        return value

    @model_validator(mode="after")
    def _some_endpoints(self) -> BackendSpec:
        if not self.endpoints and self.consul is None:
            raise ValueError("give endpoints (at least one) or consul (a Consul service)")
        return self

    @model_validator(mode="after")
    def _alpn_fits_protocol(self) -> BackendSpec:
        alpn = set(self.tls.alpn_protocols) if self.tls else set()
        if self.protocol in ("HTTP2", "GRPC") and alpn and alpn != {"h2"}:
            raise ValueError(f"protocol {self.protocol} needs HTTP/2: tls.alpnProtocols must be [h2] (or unset)")
        if self.protocol == "HTTP1" and alpn == {"h2"}:
            raise ValueError("tls.alpnProtocols [h2] with protocol HTTP1: set protocol HTTP2 (or offer both to negotiate)")
        return self


class Backend(Resource):
    """meshgate.io/v1alpha1 Backend: a set of upstream endpoints and how to balance over them."""

    api_version: Literal["meshgate.io/v1alpha1"]
    kind: Literal["Backend"]
    spec: BackendSpec


# ---------------------------------------------------------------------------------------------
# Secret (core v1), for TLS certificates given inline


class Secret(Resource):
    """v1 Secret: `tls.crt` and `tls.key` (type kubernetes.io/tls), or a CA bundle `ca.crt` for
    Backend TLS (type Opaque), as data (base64) or stringData."""

    api_version: Literal["v1"]
    kind: Literal["Secret"]
    type: Literal["kubernetes.io/tls", "Opaque"] = "kubernetes.io/tls"
    data: dict[str, str] = Field(default_factory=dict)
    string_data: dict[str, str] = Field(default_factory=dict)


class ConfigMap(Resource):
    """v1 ConfigMap: text values (`data`) that policies and Backends name (a CA bundle `ca.crt`, a
    JWKS, an error page's body), in the manner of Envoy Gateway. `binaryData` (base64) is read too."""

    api_version: Literal["v1"]
    kind: Literal["ConfigMap"]
    data: dict[str, str] = Field(default_factory=dict, description="Key to text value.")
    binary_data: dict[str, str] = Field(default_factory=dict, description="Key to base64 value (read as UTF-8 text).")
    immutable: bool | None = Field(None, description="Accepted (a cluster's flag); meshgate reads a ConfigMap either way.")

    def value(self, key: str) -> str | None:
        """The value of `key` (from data, else binaryData decoded as UTF-8), or None."""
        if key in self.data:
            return self.data[key]
        if key in self.binary_data:
            try:
                return base64.b64decode(self.binary_data[key], validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return None
        return None

    def keys(self) -> list[str]:
        return sorted({*self.data, *self.binary_data})


# ---------------------------------------------------------------------------------------------
# ReferenceGrant: lets objects of one namespace reference objects of another (tenancy boundary)


class ReferenceGrantFrom(Model):
    group: str
    kind: str
    namespace: ObjectName


class ReferenceGrantTo(Model):
    group: str
    kind: str
    name: ObjectName | None = None


class ReferenceGrantSpec(Model):
    from_: list[ReferenceGrantFrom] = Field(alias="from", min_length=1, max_length=16)
    to: list[ReferenceGrantTo] = Field(min_length=1, max_length=16)


class ReferenceGrant(Resource):
    """gateway.networking.k8s.io/v1 (or v1beta1) ReferenceGrant: admits references into its namespace."""

    api_version: Literal["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"]
    kind: Literal["ReferenceGrant"]
    spec: ReferenceGrantSpec


class Namespace(Resource):
    """v1 Namespace: only its labels matter (Gateway listeners' allowedRoutes selectors)."""

    api_version: Literal["v1"]
    kind: Literal["Namespace"]
    spec: dict[str, Any] = Field(default_factory=dict, exclude=True)


ANY_KIND = Union[Gateway, HTTPRoute, MeshgateHTTPRoute, GRPCRoute, Backend, Secret, ReferenceGrant]

# (apiVersion, kind) -> model; the loader dispatches on these two fields.
KINDS: dict[tuple[str, str], type[Resource]] = {
    (GATEWAY_API_V1, "Gateway"): Gateway,
    (GATEWAY_API_V1, "HTTPRoute"): HTTPRoute,
    (GATEWAY_API_V1, "GRPCRoute"): GRPCRoute,
    (MESHGATE_V1ALPHA1, "HTTPRoute"): MeshgateHTTPRoute,
    (MESHGATE_V1ALPHA1, "Backend"): Backend,
    ("v1", "Secret"): Secret,
    ("v1", "ConfigMap"): ConfigMap,
    ("v1", "Namespace"): Namespace,
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"): ReferenceGrant,
    (GATEWAY_API_V1, "ReferenceGrant"): ReferenceGrant,
}
