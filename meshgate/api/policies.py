"""Policy kinds: settings attached to Gateways, listeners, routes, rules or Backends by `targetRefs`.

Named and shaped like Envoy Gateway's policy kinds (`gateway.envoyproxy.io/v1alpha1`), in
meshgate's group, so that an Envoy Gateway manifest works with only its `apiVersion` changed. A
field Envoy Gateway has and meshgate does not support yet is rejected with an error saying so,
never silently ignored. meshgate's own additions are marked "meshgate extension" in their
descriptions.

How a policy attaches and merges is `meshgate.gatewayapi.policies`; this module is only shapes.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from meshgate.api.models import MESHGATE_V1ALPHA1, Duration, Model, ObjectName, Resource

GATEWAY_GROUP = "gateway.networking.k8s.io"

# Kubernetes resource.Quantity as Envoy Gateway's `Size` uses it: bytes, or a binary/decimal suffix.
SIZE_RE = r"^[1-9][0-9]{0,15}([KMGT]i|[kMGT])?$"
_SIZE_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
               "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


def size_bytes(value: str | int) -> int:
    """Bytes in a Size ("32Ki" -> 32768; a plain number is bytes)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"([0-9]+)([A-Za-z]*)", value)
    assert m is not None, value  # the schema pattern was checked first
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


Size = str | int


def _check_size(value: Size) -> Size:
    if isinstance(value, bool) or (isinstance(value, int) and value <= 0):
        raise ValueError("a size must be a positive number of bytes, or a quantity like 32Ki or 1Mi")
    if isinstance(value, str) and not re.fullmatch(SIZE_RE, value):
        raise ValueError(f"{value[:40]!r} is not a size (use bytes, or a quantity like 32Ki, 1Mi)")
    return value


class PolicyTargetReference(Model):
    """What a policy applies to: a Gateway (or one of its listeners, by `sectionName`), a route
    (or one of its named rules, by `sectionName`), or a meshgate Backend. Same namespace as the
    policy."""

    group: str
    kind: str
    name: ObjectName
    section_name: ObjectName | None = None


def _reject_unsupported(data: Any, unsupported: dict[str, str], kind: str) -> Any:
    """Envoy Gateway fields meshgate does not implement yet: a clear error, not 'unknown field'."""
    if isinstance(data, dict):
        for key in data:
            if key in unsupported:
                raise ValueError(f"{kind} field {key!r} (from Envoy Gateway) is not supported by meshgate yet"
                                 + (f": {unsupported[key]}" if unsupported[key] else ""))
    return data


# ---------------------------------------------------------------------------------------------
# ClientTrafficPolicy: how a listener treats its clients (Envoy Gateway's ClientTrafficPolicy)


class PathSettings(Model):
    escaped_slashes_action: Literal["KeepUnchanged", "RejectRequest", "UnescapeAndRedirect", "UnescapeAndForward"] | None = Field(
        None, description="What to do with %2F, %5C in paths. Default UnescapeAndRedirect: the client is redirected to the "
        "unescaped path, so that every hop routes on the same path.")
    disable_merge_slashes: bool | None = Field(
        None, description="Keep `//` in paths as sent (default: merged to `/` before routing).")


class HeaderSettings(Model):
    with_underscores_action: Literal["Allow", "RejectRequest", "DropHeader"] | None = Field(
        None, description="Headers whose name has `_` (which some upstreams read as `-`, a smuggling risk). "
        "Default RejectRequest (HTTP 400).")
    enable_envoy_headers: bool | None = Field(
        None, description="Add Envoy's `x-envoy-*` headers to responses (default: off at the edge).")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {k: "" for k in (
            "xForwardedClientCert", "preserveXRequestID", "requestID", "earlyRequestHeaders",
            "lateResponseHeaders", "disableRateLimitHeaders")}, "headers")


class HTTPClientTimeout(Model):
    request_received_timeout: Duration | None = Field(
        None, description="Time to receive the whole request (headers and body) from the client. Default: no limit.")
    idle_timeout: Duration | None = Field(
        None, description="Close a client connection with no active request after this long. Default 1h.")
    stream_idle_timeout: Duration | None = Field(
        None, description="Reset a request (stream) with no bytes either way for this long. Default 5m.")
    request_headers_timeout: Duration | None = Field(
        None, description="meshgate extension. Time to receive the request headers; a client that sends "
        "them slowly is cut off with 408. Default 10s.")


class ClientTimeout(Model):
    http: HTTPClientTimeout | None = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"tcp": "meshgate has no TCP listeners yet"}, "timeout")


class ConnectionLimit(Model):
    value: int = Field(ge=1, le=10_000_000, description="Maximum concurrent connections on the listener.")
    close_delay: Duration | None = Field(None, description="Wait this long before closing a connection over the limit.")


class ClientConnection(Model):
    connection_limit: ConnectionLimit | None = None
    buffer_limit: Size | None = Field(
        None, description="Per-connection buffer (bytes or a quantity like 32Ki). Default 32Ki.")

    _size = field_validator("buffer_limit")(classmethod(lambda cls, v: v if v is None else _check_size(v)))

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"socketBufferLimit": "", "maxAcceptPerSocketEvent": ""}, "connection")


class HTTP2Settings(Model):
    max_concurrent_streams: int | None = Field(None, ge=1, le=2_147_483_647, description="Default 100.")
    initial_stream_window_size: Size | None = Field(None, description="Default 64Ki.")
    initial_connection_window_size: Size | None = Field(None, description="Default 1Mi.")

    _sizes = field_validator("initial_stream_window_size", "initial_connection_window_size")(
        classmethod(lambda cls, v: v if v is None else _check_size(v)))

    @model_validator(mode="after")
    def _window_range(self) -> HTTP2Settings:
        # Envoy's HTTP/2 codec accepts windows from 64 KiB - 1 to 2 GiB - 1 (RFC 9113 limits).
        for name in ("initial_stream_window_size", "initial_connection_window_size"):
            value = getattr(self, name)
            if value is not None and not 65535 <= size_bytes(value) <= 2_147_483_647:
                raise ValueError(f"{name.split('_')[1]} window size must be between 65535 bytes and 2Gi - 1")
        return self

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {"onInvalidMessage": ""}, "http2")


class HealthCheckSettings(Model):
    path: str = Field(min_length=1, max_length=1024, pattern=r"^/[^\s?#]*$",
                      description="Envoy answers 200 on this path itself while it is not draining.")


class ClientTrafficPolicySpec(Model):
    target_refs: list[PolicyTargetReference] = Field(min_length=1, max_length=16)
    path: PathSettings | None = None
    headers: HeaderSettings | None = None
    timeout: ClientTimeout | None = None
    connection: ClientConnection | None = None
    http2: HTTP2Settings | None = None
    health_check: HealthCheckSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {
            "targetRef": "use targetRefs (a list)",
            "targetSelectors": "name targets with targetRefs",
            **{k: "" for k in ("tcpKeepalive", "enableProxyProtocol", "proxyProtocol", "clientIPDetection", "tls",
                                "http1", "http3", "grpc", "scheme")},
        }, "ClientTrafficPolicy")

    @field_validator("target_refs")
    @classmethod
    def _gateways_only(cls, refs: list[PolicyTargetReference]) -> list[PolicyTargetReference]:
        for ref in refs:
            if (ref.group, ref.kind) != (GATEWAY_GROUP, "Gateway"):
                raise ValueError(f"a ClientTrafficPolicy targets a Gateway (group {GATEWAY_GROUP}, kind Gateway), "
                                 f"not {ref.kind}")
        return refs


class ClientTrafficPolicy(Resource):
    """meshgate.io/v1alpha1 ClientTrafficPolicy: how a Gateway's listeners treat clients (path
    normalization, header rules, timeouts, connection limits, HTTP/2 limits, health check)."""

    api_version: Literal["meshgate.io/v1alpha1"]
    kind: Literal["ClientTrafficPolicy"]
    spec: ClientTrafficPolicySpec


from meshgate.api.backend_traffic_policy import BackendTrafficPolicy  # noqa: E402 - it uses the shapes above
from meshgate.api.security_policy import SecurityPolicy  # noqa: E402 - likewise

POLICY_KINDS: dict[tuple[str, str], type[Resource]] = {
    (MESHGATE_V1ALPHA1, "ClientTrafficPolicy"): ClientTrafficPolicy,
    (MESHGATE_V1ALPHA1, "BackendTrafficPolicy"): BackendTrafficPolicy,
    (MESHGATE_V1ALPHA1, "SecurityPolicy"): SecurityPolicy,
}
