"""`envoy.filters.http.fault`: fault injection (BackendTrafficPolicy `faultInjection`): Envoy
delays a share of a route's requests, or answers them itself with an HTTP or gRPC error, as a
failing backend would; aborted requests never reach the backend.
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/fault_filter

The listener's filter injects nothing; each route with faults carries them as per-route config.
Chain position: last before the router, after authentication, rate limits and the gRPC-Web and
JSON transcoders, so a fault stands in for the backend itself: a request refused for its
credentials or its rate is refused as before, and a gRPC-Web or transcoded call gets the abort as
the gRPC reply a backend would send, converted back for its client. A delayed request goes on
to the backend when the delay is over (and counts against the route's timeout).
"""

from __future__ import annotations

from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2

from meshgate import ir

NAME = "envoy.filters.http.fault"


def listener_config(listener: ir.Listener) -> fault_pb2.HTTPFault | None:
    if any(r.shaping is not None and r.shaping.fault is not None for v in listener.virtual_hosts for r in v.routes):
        return fault_pb2.HTTPFault()  # no faults here: routes bring theirs
    return None


def route_config(route: ir.Route) -> fault_pb2.HTTPFault | None:
    fault = route.shaping.fault if route.shaping is not None else None
    if fault is None:
        return None
    out = fault_pb2.HTTPFault()
    if fault.delay_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(round(fault.delay_s * 1e9)))
        out.delay.fixed_delay.CopyFrom(delay)
        out.delay.percentage.CopyFrom(_share(fault.delay_per_million))
    if fault.abort_http_status is not None:
        out.abort.http_status = fault.abort_http_status
    elif fault.abort_grpc_status is not None:
        out.abort.grpc_status = fault.abort_grpc_status  # HTTP 200, grpc-status in a trailers-only reply
    if out.HasField("abort"):
        out.abort.percentage.CopyFrom(_share(fault.abort_per_million))
    return out


def _share(per_million: int) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(numerator=per_million, denominator=percent_pb2.FractionalPercent.MILLION)
