"""meshgate.io/v1alpha1 EnvoyProxy: settings of the Envoys serving a Gateway, named by the
Gateway's `spec.infrastructure.parametersRef` (as in Envoy Gateway, whose `EnvoyProxy` kind this
follows field for field where meshgate has the feature).

Today: `spec.telemetry.tracing`, the OpenTelemetry tracer for that Gateway's listeners (where
spans go, the sampling rate, custom span tags). It overrides the `OTEL_EXPORTER_OTLP_*`
environment variables for that Gateway; Gateways without one keep the environment's settings.

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
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import Field, model_validator

from meshgate.api.models import MESHGATE_V1ALPHA1, Model, Resource
from meshgate.api.policies import _reject_unsupported

__all__ = ["ENVOY_PROXY_KINDS", "EnvoyProxy"]

# A span tag's name: what Envoy accepts and a tracing backend can show (no spaces, no control characters).
_TAG_NAME = r"^[A-Za-z0-9_.:/-]{1,128}$"
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


class LiteralTag(Model):
    value: str = Field(max_length=1024, description="the value of the tag on every span")


class EnvironmentTag(Model):
    name: str = Field(min_length=1, max_length=256, description="the environment variable of the Envoy process")
    default_value: str | None = Field(None, max_length=1024, description="when the variable is not set")


class RequestHeaderTag(Model):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
                      description="the request header whose value the tag takes")
    default_value: str | None = Field(None, max_length=1024, description="when the request has no such header")


class CustomTag(Model):
    """One span tag (Envoy Gateway's `CustomTag`)."""

    type: Literal["Literal", "Environment", "RequestHeader"] = "Literal"
    literal: LiteralTag | None = None
    environment: EnvironmentTag | None = None
    request_header: RequestHeaderTag | None = None

    @model_validator(mode="after")
    def _matches_type(self) -> CustomTag:
        wanted = {"Literal": "literal", "Environment": "environment", "RequestHeader": "requestHeader"}[self.type]
        given = [name for name, value in (("literal", self.literal), ("environment", self.environment),
                                          ("requestHeader", self.request_header)) if value is not None]
        if given != [wanted]:
            raise ValueError(f"type {self.type} needs `{wanted}` (and nothing else); got {', '.join(given) or 'none'}")
        return self


class TracingProvider(Model):
    """Where Envoy sends spans: an OpenTelemetry collector's OTLP/gRPC port."""

    type: Literal["OpenTelemetry"] = Field("OpenTelemetry", description="only OpenTelemetry (OTLP over gRPC)")
    host: str = Field(description="the collector's host name (resolved by Envoy, re-resolved as DNS changes) or IP "
                                  "address, e.g. otel-collector.observability.svc")
    port: int = Field(4317, ge=1, le=65535, description="its OTLP/gRPC port")
    service_name: str | None = Field(
        None, min_length=1, max_length=256,
        description="the spans' `service.name` (meshgate extension; default: OTEL_SERVICE_NAME, else `meshgate`)")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {
            "backendRefs": "name the collector by `host` and `port` (a Service's DNS name works in a cluster)",
            "resourceAttributes": "", "sampler": "use samplingRate", "zipkin": "", "datadog": ""}, "tracing.provider")

    @model_validator(mode="after")
    def _host(self) -> TracingProvider:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            if not _HOST_NAME.match(self.host):
                raise ValueError(f"host {self.host!r} is not a host name or an IP address") from None
        return self


class ProxyTracing(Model):
    """The OpenTelemetry tracer of a Gateway's listeners (Envoy Gateway's `ProxyTracing`)."""

    sampling_rate: int | None = Field(None, ge=0, le=100, description="percent of requests traced (default 100)")
    sampling_fraction: dict[str, int] | None = Field(
        None, description="the share traced as {numerator, denominator} (e.g. 1/1000), instead of samplingRate")
    custom_tags: dict[str, CustomTag] = Field(default_factory=dict, max_length=32,
                                              description="span tags added to every span, by tag name")
    provider: TracingProvider

    @model_validator(mode="after")
    def _sampling(self) -> ProxyTracing:
        if self.sampling_rate is not None and self.sampling_fraction is not None:
            raise ValueError("set samplingRate or samplingFraction, not both")
        if self.sampling_fraction is not None:
            unknown = set(self.sampling_fraction) - {"numerator", "denominator"}
            numerator = self.sampling_fraction.get("numerator")
            denominator = self.sampling_fraction.get("denominator", 100)
            if unknown or numerator is None or not 0 <= numerator <= denominator or denominator < 1:
                raise ValueError("samplingFraction needs numerator and denominator, 0 <= numerator <= denominator")
        for name in self.custom_tags:
            if not re.match(_TAG_NAME, name):
                raise ValueError(f"custom tag name {name!r}: letters, digits and _ . : / - only, at most 128")
        return self

    def sampling_percent(self) -> float:
        if self.sampling_fraction is not None:
            return round(100 * self.sampling_fraction["numerator"] / self.sampling_fraction.get("denominator", 100), 6)
        return float(100 if self.sampling_rate is None else self.sampling_rate)


class ProxyTelemetry(Model):
    tracing: ProxyTracing | None = Field(None, description="the OpenTelemetry tracer (spans over OTLP/gRPC)")

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {
            "accessLog": "meshgate's access log is set with --access-log (JSON, redacted)",
            "metrics": "Envoy's metrics are on the stats listener (--stats-address) and OTLP by OTEL_EXPORTER_OTLP_*"},
            "telemetry")


class EnvoyProxySpec(Model):
    telemetry: ProxyTelemetry | None = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _reject_unsupported(data, {k: "meshgate does not deploy Envoys: run `meshgate bootstrap` for yours"
                                          for k in ("provider", "logging", "bootstrap", "concurrency", "shutdown",
                                                    "extraArgs", "mergeGateways", "ipFamily", "routingType",
                                                    "filterOrder", "backendTLS", "preserveRouteOrder",
                                                    "luaValidation")}, "EnvoyProxy")


class EnvoyProxy(Resource):
    """meshgate.io/v1alpha1 EnvoyProxy (Envoy Gateway's kind of the same name): settings of the
    Envoys of the Gateways naming it in `spec.infrastructure.parametersRef`."""

    api_version: Literal["meshgate.io/v1alpha1"]
    kind: Literal["EnvoyProxy"]
    spec: EnvoyProxySpec


ENVOY_PROXY_KINDS: dict[tuple[str, str], type[Resource]] = {(MESHGATE_V1ALPHA1, "EnvoyProxy"): EnvoyProxy}
