"""Envoy's overload manager, as meshgate's bootstraps configure it.

The overload manager watches resources (heap size, total downstream connections) and, as they
near their limits, takes actions: shrink the heap, stop accepting new requests (503) rather than
be killed for running out of memory, stop accepting connections past a global maximum. Settings
follow Envoy's "Configuring Envoy as an edge proxy" best practices:
https://www.envoyproxy.io/docs/envoy/latest/configuration/operations/overload_manager/overload_manager
"""

from __future__ import annotations

from typing import Any

HEAP = "envoy.resource_monitors.fixed_heap"
CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"

DEFAULT_MAX_HEAP_BYTES = 1 << 30  # 1 GiB; size it to the container's memory limit
DEFAULT_MAX_CONNECTIONS = 50_000


def overload_manager(max_heap_bytes: int = DEFAULT_MAX_HEAP_BYTES,
                     max_connections: int = DEFAULT_MAX_CONNECTIONS) -> dict[str, Any]:
    """The bootstrap's `overload_manager` section (a JSON-able dict)."""
    def when(monitor: str, threshold: float) -> list[dict[str, Any]]:
        return [{"name": monitor, "threshold": {"value": threshold}}]

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {"name": HEAP, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                "max_heap_size_bytes": str(max_heap_bytes)}},
            # Counts connections across all listeners; past the maximum new ones are refused.
            {"name": CONNECTIONS, "typed_config": {
                "@type": "type.googleapis.com/"
                         "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": str(max_connections)}},
        ],
        "actions": [
            # At 95% of the heap, return freed memory to the system; at 98%, answer new requests
            # with 503 instead of taking them on.
            {"name": "envoy.overload_actions.shrink_heap", "triggers": when(HEAP, 0.95)},
            {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": when(HEAP, 0.98)},
        ],
    }
