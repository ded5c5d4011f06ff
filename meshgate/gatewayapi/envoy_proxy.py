"""Gateway `spec.infrastructure.parametersRef` → the EnvoyProxy's settings on that Gateway's
listeners (`ir.ClientSettings.tracing`).

Gateway API: a parametersRef that can't be resolved leaves the Gateway `Accepted=False` with
reason `InvalidParameters`. meshgate still serves its listeners (without the missing settings:
tracing falls back to the environment's), so a typo in a tracing reference never takes traffic
down; the condition and `meshgate validate` say what is wrong. Several Gateways on one port share
an Envoy listener: the first (oldest) Gateway's EnvoyProxy decides, as for ClientTrafficPolicy.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from meshgate import ir
from meshgate.api.envoy_proxy import EnvoyProxy
from meshgate.gatewayapi.status import Condition, object_key

WHERE = ("spec", "infrastructure", "parametersRef")


def tracing_of(proxy: EnvoyProxy) -> ir.Tracing | None:
    telemetry = proxy.spec.telemetry
    tracing = telemetry.tracing if telemetry is not None else None
    if tracing is None:
        return None
    tags = []
    for name, tag in sorted(tracing.custom_tags.items()):
        if tag.type == "Literal":
            tags.append((name, "Literal", tag.literal.value, None))
        elif tag.type == "Environment":
            tags.append((name, "Environment", tag.environment.name, tag.environment.default_value))
        else:
            tags.append((name, "RequestHeader", tag.request_header.name, tag.request_header.default_value))
    provider = tracing.provider
    return ir.Tracing(host=provider.host, port=provider.port, sampling_percent=tracing.sampling_percent(),
                      service_name=provider.service_name, custom_tags=tuple(tags))


def apply(t: Any, programmed: list, settings: dict) -> dict:  # noqa: ANN401 - the _Translator
    """`settings` ((Gateway key, listener name) -> ClientSettings) with each Gateway's EnvoyProxy
    tracing; Gateways whose parametersRef can't be resolved get `InvalidParameters`."""
    proxies = {(r.metadata.namespace, r.metadata.name): r for r, _ in t.non_route if isinstance(r, EnvoyProxy)}
    tracing_by_gateway: dict[Any, ir.Tracing | None] = {}
    for gateway in t.gateways:
        infrastructure = gateway.spec.infrastructure
        ref = infrastructure.parameters_ref if infrastructure is not None else None
        if ref is None:
            continue
        proxy = proxies.get((gateway.metadata.namespace, ref.name))
        if proxy is None:
            t.status.condition(gateway, Condition(
                "Accepted", "False", "InvalidParameters",
                f"EnvoyProxy {gateway.metadata.namespace}/{ref.name} not found: the Gateway's listeners are served "
                "without its settings (tracing as the environment says)"), WHERE)
            continue
        tracing_by_gateway[object_key(gateway)] = tracing_of(proxy)
    if not tracing_by_gateway:
        return settings
    out = dict(settings)
    for gateway, listener in programmed:
        key = (object_key(gateway), listener.name)
        tracing = tracing_by_gateway.get(key[0])
        if tracing is not None and key in out:
            out[key] = replace(out[key], tracing=tracing)
    return out
