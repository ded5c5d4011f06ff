"""Envoy's Prometheus metrics, served beyond the loopback admin port.

Envoy renders its statistics in Prometheus text format only on its admin interface
(`/stats/prometheus`), and the admin interface can also change state (`/quitquitquit`,
`/logging`, `/runtime_modify`): it must stay on loopback. So the bootstrap gets one more static
listener, `meshgate_stats`, on the address Prometheus scrapes, whose only routes forward
`GET /stats/prometheus` and `GET /ready` to the admin interface through a static cluster; every
other path is answered 404 by Envoy itself. This is the shape Envoy Gateway gives its proxies.

Envoy docs: https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--stats-prometheus
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp

STATS_LISTENER_NAME = "meshgate_stats"
# The static cluster that points at this Envoy's own admin interface.
ADMIN_CLUSTER_NAME = "meshgate_admin"
STATS_PATH = "/stats/prometheus"
DEFAULT_STATS_PORT = 19902

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def stats_resources(host: str, port: int, admin_host: str, admin_port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The static listener and the admin cluster (bootstrap JSON) of the stats endpoint."""
    if not admin_port:
        raise ValueError("the stats listener needs a fixed admin port (the admin cluster points at it)")

    def admin_route(path: str) -> dict[str, Any]:
        # `path` matches the path without its query, so `?usedonly` or `?filter=` still reach Envoy.
        return {"match": {"path": path, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
                "route": {"cluster": ADMIN_CLUSTER_NAME, "timeout": "5s"}}

    listener = {
        "name": STATS_LISTENER_NAME,
        "address": {"socket_address": {"address": host, "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": _HCM,
                "stat_prefix": STATS_LISTENER_NAME,
                # Inline routes: this listener must work before (and without) any xDS config.
                "route_config": {"name": STATS_LISTENER_NAME, "virtual_hosts": [{
                    "name": STATS_LISTENER_NAME, "domains": ["*"],
                    "routes": [admin_route(STATS_PATH), admin_route("/ready"),
                               {"match": {"prefix": "/"}, "direct_response": {"status": 404}}],
                }]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
            },
        }]}],
    }
    cluster = {
        "name": ADMIN_CLUSTER_NAME,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": ADMIN_CLUSTER_NAME, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}}}]}]},
    }
    return listener, cluster


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A port free right now, for an admin interface that must have a known port (the stats
    listener's admin cluster names it); another process could take it before Envoy binds it,
    in which case Envoy fails to start and says so."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def bound_stats_port(admin_url: str, timeout: float = 5.0) -> int | None:
    """The port the stats listener actually bound (it may be configured as 0), from the admin
    interface's `/listeners`; None if it has no such listener."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(f"{admin_url}/listeners?format=json") as resp:
            data = await resp.json(content_type=None)
    for listener in data.get("listener_statuses", []):
        if listener.get("name") == STATS_LISTENER_NAME:
            return int(listener["local_address"]["socket_address"]["port_value"])
    return None
