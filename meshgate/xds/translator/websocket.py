"""WebSocket on every HTTP listener, as in Envoy Gateway: HTTP/1.1 `Upgrade: websocket` and
HTTP/2 extended CONNECT (RFC 8441, `:protocol: websocket`), on the same port as plain HTTP.

Envoy forwards an upgraded connection as one long HTTP stream through the route's cluster;
an HTTP/2 (extended CONNECT) client is bridged to an HTTP/1.1 upstream upgrade, so upstreams
need nothing new. The stream's idle limit is the listener's `stream_idle_timeout`
(ClientTrafficPolicy `timeout.http.streamIdleTimeout`).
https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/upgrades
"""

from __future__ import annotations

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import duration_pb2

from meshgate import ir


def set_upgrades(hcm: hcm_pb2.HttpConnectionManager, listener: ir.Listener) -> None:
    # Requests with `Upgrade: websocket` are proxied as upgrades (else Envoy strips the header).
    hcm.upgrade_configs.add(upgrade_type="websocket")
    # RFC 8441: lets HTTP/2 clients open a WebSocket with an extended CONNECT on one stream.
    hcm.http2_protocol_options.allow_connect = True
    # With Envoy's default delayed_close_timeout (1 s), when the upstream ends an upgraded
    # connection Envoy half-closes towards the client and waits up to 1 s for it before
    # closing: the close frames arrive, but the client's socket is closed by a timer instead of
    # the close handshake, which strict clients report as an unclean close (code 1006) when
    # they closed first. 0 closes as soon as the write buffer is flushed.
    hcm.delayed_close_timeout.CopyFrom(duration_pb2.Duration(seconds=0))
